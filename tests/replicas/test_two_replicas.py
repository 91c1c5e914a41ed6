"""Two real ``reconcile serve`` processes on one database, each with its own data dir.

What a second replica must get right, end to end over real sockets: a webhook to one
and an agent (the agent's own client) on the other; the leader killed (SIGKILL) in the
middle of issuing commands, the other taking over, no command lost or issued twice; a
delivery replayed to the other replica answered as the duplicate it is.
"""

from __future__ import annotations

import collections
import pathlib
import signal
import tarfile
import threading
import time
from collections.abc import Callable

import httpx

from agent.client import Polled
from reconciler.server.store import CommandRow, Store
from tests.replicas.conftest import LEASE_TTL, SharedDatabase, agent_on, start_replica
from tests.server.conftest import EXAMPLES, Remote
from tests.server.serve_helpers import ADMIN_HEADERS, Serve, signed_push


def readyz(replica: Serve) -> dict[str, object]:
    answer = httpx.get(replica.url + "/readyz", timeout=10)
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    assert predicate(), f"timed out waiting for {what}"


def fleet(agent: str, names: list[str], round_: int) -> dict[str, str]:
    """``names`` image deployments on ``agent``, at round ``round_`` (a var: a new spec
    for every one of them each round), and the example Dockerfile app (it has a bundle)."""
    files = {
        "reconcile.yaml": f"namespace: srv\nagents:\n  host1: {agent}\n",
        "deployments/site/deployment.yaml": (EXAMPLES / "deployments/site/deployment.yaml")
        .read_text()
        .replace("agent: local", "agent: host1")
        + f'vars:\n  ROUND: "{round_}"\n',
        "deployments/site/Dockerfile": (EXAMPLES / "deployments/site/Dockerfile").read_text(),
        "deployments/site/index.html": (EXAMPLES / "deployments/site/index.html").read_text(),
    }
    for name in names:
        files[f"deployments/{name}.yaml"] = (
            f"name: {name}\nagent: host1\nimage: busybox:1.36\ntarget_port: 80\n"
            f'vars:\n  ROUND: "{round_}"\n'
        )
    return files


def test_a_webhook_to_one_replica_reaches_an_agent_polling_the_other_with_its_bundle(
    pair: tuple[Serve, Serve], remote: Remote, shared_db: SharedDatabase
) -> None:
    a, b = pair
    assert readyz(a)["leader"] is True  # started first: it took the lease
    assert readyz(b)["leader"] is False
    assert readyz(a)["replica"] != readyz(b)["replica"]
    metrics = httpx.get(b.url + "/metrics", timeout=10).text
    assert "reconcile_leader 0.0" in metrics
    assert "reconcile_leader 1.0" in httpx.get(a.url + "/metrics", timeout=10).text

    client = agent_on(b, shared_db)
    agent = client.credentials.agent_id if client.credentials else ""
    sha = remote.commit(fleet(agent, ["api"], 1), "site and api")

    # The agent long-polls the follower before the push exists; the push goes to the
    # follower too, which forwards it to the leader; the leader's commands must wake
    # the follower's poll (no wake-up: it would sit out its whole wait).
    polled: list[Polled] = []
    waited: list[float] = []

    def poll() -> None:
        began = time.monotonic()
        polled.append(client.commands(wait=60))
        waited.append(time.monotonic() - began)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.5)  # let the poll register (a command found at once proves nothing)
    pushed = time.monotonic()
    answer = signed_push(b.url, "delivery-1", body=None)
    assert answer.status_code == 202, answer.text
    poller.join(90)
    assert polled and {c.action.deployment for c in polled[0].commands} == {"api", "site"}
    assert waited[0] < 55, "the poll sat out its wait: the leader's commands did not wake it"
    print(f"push to follower -> command on the follower's poll: {time.monotonic() - pushed:.2f} s")
    assert all(c.revision == sha for c in polled[0].commands)

    # The bundle, from the follower, which never built it (its data dir has no bundle).
    site = next(c for c in polled[0].commands if c.action.deployment == "site")
    assert site.has_bundle
    target = b.data_dir.parent / "site.tar"
    size = client.download_bundle(site.id, target)
    assert size == target.stat().st_size > 0
    with tarfile.open(target) as tar:
        names = tar.getnames()
    assert "deployments/site/Dockerfile" in names and "deployments/site/index.html" in names
    assert list(b.data_dir.rglob("*.tar")) == []
    # the leader answers for it the same, byte for byte
    assert client.credentials is not None
    same = httpx.get(
        f"{a.url}/v1/agent/commands/{site.id}/bundle",
        headers={"X-Agent-Id": agent, "X-Agent-Secret": client.credentials.secret},
        timeout=30,
    )
    assert same.status_code == 200 and same.content == target.read_bytes()
    assert int(same.headers["content-length"]) == size

    # The status API of either replica shows the leader's rendered deployments.
    for replica in (a, b):
        views = httpx.get(replica.url + "/v1/deployments", headers=ADMIN_HEADERS, timeout=10)
        assert sorted(v["name"] for v in views.json()["deployments"]) == ["api", "site"]
        assert views.json()["revision"] == sha
    client.close()


def test_a_delivery_replayed_to_the_other_replica_is_a_no_op(
    pair: tuple[Serve, Serve], shared_db: SharedDatabase
) -> None:
    a, b = pair
    for first, second, delivery in ((a, b, "replay-1"), (b, a, "replay-2")):
        assert signed_push(first.url, delivery).status_code == 202
        again = signed_push(second.url, delivery)
        assert again.status_code == 200, again.text
        assert "duplicate" in again.text
    store = shared_db.open_store()
    try:
        results = collections.Counter(
            (e.fields["delivery"], e.fields["result"])
            for e in store.events(limit=1000)
            if e.kind == "webhook"
        )
    finally:
        store.close()
    for delivery in ("replay-1", "replay-2"):
        assert results[(delivery, "accepted")] == 1
        assert results[(delivery, "duplicate")] == 1


def commands_of(store: Store) -> list[CommandRow]:
    return store.commands(limit=10_000)


def test_the_leader_killed_mid_reconcile_the_other_finishes_and_nothing_is_issued_twice(
    remote: Remote, shared_db: SharedDatabase, tmp_path: pathlib.Path
) -> None:
    names = [f"app{i:02d}" for i in range(40)]
    a = start_replica(remote, shared_db, tmp_path / "a")
    b = start_replica(remote, shared_db, tmp_path / "b")
    reader = shared_db.open_store()  # opened (and migrated) before any hold
    try:
        assert readyz(a)["leader"] is True
        client = agent_on(b, shared_db)
        agent = client.credentials.agent_id if client.credentials else ""
        total = len(names) + 1
        caught = -1
        sha = ""
        # Each round changes every spec, and the test holds the database still while the
        # leader's run of it is under way: in odd rounds once it has issued a first
        # command, in even ones as soon as the run has started (a leader that issues
        # all of a run's commands in one transaction is caught there).  If the run
        # had already ended, the next round; else the leader is killed mid-run.
        for round_ in range(1, 9):
            marker = max((e.id for e in reader.newest_events(1)), default=0)
            sha = remote.commit(fleet(agent, names, round_), f"round {round_}")
            delivery = f"kill-{round_}"
            assert signed_push(a.url, delivery).status_code == 202

            def issued(sha: str = sha) -> int:
                return sum(1 for c in commands_of(reader) if c.payload.get("revision") == sha)

            def run_event(kind: str, marker: int = marker, delivery: str = delivery) -> bool:
                return any(
                    e.kind == kind and f"(delivery {delivery})" in str(e.fields.get("reason"))
                    for e in reader.events(after=marker, limit=10_000)
                )

            if round_ % 2:
                wait_for(
                    lambda: issued() >= 1 or run_event("reconcile.finished"),
                    what="the round's first command",
                )
            else:
                wait_for(lambda: run_event("reconcile.started"), what="the round's run")
            with shared_db.hold_commands():
                if not run_event("reconcile.finished"):
                    caught = issued()
                    a.proc.send_signal(signal.SIGKILL)
                    a.proc.wait(10)
            if caught >= 0:
                break
        assert caught >= 0, "the leader's run was never caught under way"
        killed = time.monotonic()

        # The follower takes over (its lease try after the dead one's runs out) and
        # finishes the round: every deployment has its command at this round's spec.
        def finished() -> bool:
            return sum(1 for c in commands_of(reader) if c.payload.get("revision") == sha) >= total

        wait_for(finished, timeout=90, what="the new leader to finish the round")
        print(
            f"round {round_}: leader SIGKILLed after {caught}/{total} commands; the other "
            f"finished the round {time.monotonic() - killed:.1f} s later (lease {LEASE_TTL} s)"
        )
        # The lease of a leader killed after its run committed may not have run out yet.
        wait_for(lambda: readyz(b)["leader"] is True, timeout=30, what="the other to lead")
        assert b.proc.poll() is None

        rows = commands_of(reader)
        # Never twice: one command per (deployment, spec, kind), over every round.
        twice = [
            k
            for k, n in collections.Counter(
                (c.deployment, c.spec_hash, c.kind) for c in rows
            ).items()
            if n > 1
        ]
        assert twice == []
        current = [c for c in rows if c.payload.get("revision") == sha]
        assert len(current) == total
        assert all(c.state == "pending" for c in current)
        # Never lost: the agent, polling the survivor, gets every one of them.
        polled = client.commands(wait=0)
        assert sorted(c.id for c in polled.commands) == sorted(c.id for c in current)
        # and the survivor serves the bundle the dead leader or it built
        site = next(c for c in polled.commands if c.action.deployment == "site")
        assert client.download_bundle(site.id, tmp_path / "site.tar") > 0
        client.close()
    finally:
        a.kill()
        b.stop()
        reader.close()
