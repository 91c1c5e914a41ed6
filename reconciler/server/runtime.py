"""The server process's garbage collector, tuned for a thousand agents' connections.

A control plane holds a few objects per agent for a long time (two kept-alive connections,
a pending long poll: about 250,000 objects the collector tracks at 1,000 agents) and makes
many short-lived ones per request.  With CPython's defaults (a young collection every 700
net allocations) the requests' survivors are promoted fast, and a full collection came every
few seconds, each holding the GIL -- the event loop with it -- for 150-300 ms of CPU on the
2-core test machine: that pause *was* the heartbeat p99 (`benchmarks/fleet.py`, 1,000 agents
with deployments: p99 475-845 ms, full collections found with ``gc.callbacks``).

So, once the server is built, as Instagram's servers do (and the ``gc.freeze`` docs suggest):

- ``gc.freeze()`` moves everything made at start-up (modules, classes, the app, the
  catalog: ~95,000 objects) out of every later collection;
- the young generation's threshold goes from 700 to ``young_threshold`` (20,000), so
  request garbage dies young, and full collections came 3 times in the same 3 minutes
  instead of 30 (p99 112 ms with 1,000 agents running 1,000 deployments).

Cycles still get collected, only less often; memory stays bounded by the same rule.
``gc_young_threshold: 0`` in ``server.yaml`` leaves CPython's defaults alone.
"""

from __future__ import annotations

import gc

__all__ = ["DEFAULT_YOUNG_THRESHOLD", "tune_gc"]

DEFAULT_YOUNG_THRESHOLD = 20_000


def tune_gc(young_threshold: int = DEFAULT_YOUNG_THRESHOLD) -> bool:
    """Freeze what exists now and raise the young threshold; False (nothing done) for 0."""
    if young_threshold <= 0:
        return False
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
    return True
