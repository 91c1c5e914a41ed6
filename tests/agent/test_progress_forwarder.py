"""The agent's progress forwarder: pure logic over a recording ``post`` (no HTTP here;
the real endpoint and a real agent are in ``tests/e2e/test_observability_docker.py``)."""

from __future__ import annotations

import threading

from agent.client import ProtocolError, Unavailable
from agent.executor import StepEvent
from agent.progress import MAX_BATCH, ProgressForwarder
from reconciler.model.agentapi import ProgressStep


class Recorder:
    def __init__(self) -> None:
        self.posts: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()

    def __call__(self, command_id: str, steps: list[ProgressStep]) -> None:
        with self.lock:
            self.posts.append((command_id, [s.step for s in steps]))

    def steps(self, command_id: str) -> list[str]:
        return [s for c, batch in self.posts if c == command_id for s in batch]


def test_steps_are_posted_in_order_in_batches_of_at_most_max_batch() -> None:
    gate = threading.Event()
    recorder = Recorder()

    def post(command_id: str, steps: list[ProgressStep]) -> None:
        gate.wait(30)  # hold the first post, so the rest piles up and is batched
        recorder(command_id, steps)

    fwd = ProgressForwarder(post)
    names = [f"s{i}" for i in range(MAX_BATCH + 20)]
    for name in names:
        fwd("cmd_a", StepEvent("web", name, "detail"))
    gate.set()
    fwd.close(timeout=30)
    assert recorder.steps("cmd_a") == names
    assert all(len(batch) <= MAX_BATCH for _, batch in recorder.posts)
    assert len(recorder.posts) < len(names)  # batched, not one post per step
    assert (fwd.sent, fwd.dropped) == (len(names), 0)


def test_a_full_queue_drops_steps_instead_of_blocking_the_executor() -> None:
    entered, gate = threading.Event(), threading.Event()
    recorder = Recorder()

    def post(command_id: str, steps: list[ProgressStep]) -> None:
        entered.set()
        gate.wait(30)  # a control plane that does not answer
        recorder(command_id, steps)

    fwd = ProgressForwarder(post, max_pending=3)
    fwd("cmd_a", StepEvent("web", "first"))
    assert entered.wait(30)  # the poster is stuck in its post
    producer = threading.Thread(
        target=lambda: [fwd("cmd_a", StepEvent("web", f"s{i}")) for i in range(50)]
    )
    producer.start()
    producer.join(30)
    assert not producer.is_alive()  # the executor's thread was never held up
    assert fwd.dropped == 47  # three fit in the queue
    gate.set()
    fwd.close(timeout=30)
    assert recorder.steps("cmd_a") == ["first", "s0", "s1", "s2"]
    assert (fwd.sent, fwd.dropped) == (4, 47)


def test_a_failing_post_drops_that_batch_and_the_thread_goes_on() -> None:
    recorder = Recorder()
    failures = [
        ProtocolError("HTTP 404: no such endpoint (an older server)", 404),
        Unavailable("x"),
    ]

    def post(command_id: str, steps: list[ProgressStep]) -> None:
        if failures:
            raise failures.pop(0)
        recorder(command_id, steps)

    fwd = ProgressForwarder(post)
    done = threading.Event()
    for name in ("a", "b", "c"):
        fwd("cmd_a", StepEvent("web", name))
        # one post per step here: wait until the poster took it
        while fwd.sent + fwd.dropped < ["a", "b", "c"].index(name) + 1:
            done.wait(0.01)
    fwd.close(timeout=30)
    assert recorder.steps("cmd_a") == ["c"]
    assert (fwd.sent, fwd.dropped) == (1, 2)


def test_steps_from_many_threads_all_arrive_each_command_in_its_order() -> None:
    recorder = Recorder()
    fwd = ProgressForwarder(recorder, max_pending=10_000)

    def run(n: int) -> None:
        for i in range(50):
            fwd(f"cmd_{n}", StepEvent(f"app{n}", f"s{i}"))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    fwd.close(timeout=30)
    for n in range(8):
        assert recorder.steps(f"cmd_{n}") == [f"s{i}" for i in range(50)]
    assert (fwd.sent, fwd.dropped) == (400, 0)
