"""When the next heartbeat is due: a fixed grid per agent, not "an interval after the last".

An agent that waits one interval after each answer inherits the server's delays: when a
rollout keeps a control plane busy for a few seconds, every agent's answer comes out of the
same backlog, so every agent's next heartbeat lands in the same second, and the fleet's
heartbeats stay bunched long after the rollout is over (at 1,000 agents the steady-state p50
went from 7 ms to 540 ms: the server was idle between bursts of a thousand).  Nomad has the
server hand out jittered heartbeat TTLs for the same reason.

Here each agent keeps a grid with its own random phase: the heartbeats are due at
``anchor + k * interval`` whatever the answers' delays, and a missed slot (a report that
took longer than the interval) is skipped, not queued.  The phases a fleet starts with stay
spread however slow the server was.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

__all__ = ["Cadence"]


class Cadence:
    """The heartbeat grid of one agent (monotonic seconds)."""

    def __init__(
        self,
        interval: float,
        now: float,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"the heartbeat interval must be positive, not {interval!r}")
        self.interval = interval
        # The phase: where in each interval this agent reports.  Random, so a fleet that
        # starts together (a power cut, a restored server) does not report together.
        self.anchor = now + uniform(0.0, interval)

    def next_due(self, now: float) -> float:
        """The first slot of the grid after ``now``."""
        if now < self.anchor:
            return self.anchor
        due = self.anchor + (math.floor((now - self.anchor) / self.interval) + 1) * self.interval
        return due if due > now else due + self.interval  # a rounding exactly on a slot

    def delay(self, now: float) -> float:
        """Seconds from ``now`` to the next slot (0 < delay <= interval)."""
        return self.next_due(now) - now

    def set_interval(self, interval: float, now: float) -> None:
        """The server asked for another interval: the grid keeps this agent's phase (the
        last slot before ``now`` stays a slot) and takes the new step from there."""
        if not interval > 0 or interval == self.interval:
            return
        if now >= self.anchor:
            self.anchor += math.floor((now - self.anchor) / self.interval) * self.interval
        else:  # the first slot, drawn within the old interval, comes within the new one
            self.anchor = now + math.fmod(self.anchor - now, interval)
        self.interval = interval
