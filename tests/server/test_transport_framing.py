"""What moving the guarded protocol onto httptools could break: requests that share a
read (pipelining), chunked bodies, a blank line split across reads, an app that answers
before the body is in, ``Connection: close``, bytes the parser refuses.

llhttp parses everything it is fed, so the guard feeds it in pieces cut at the end of each
head and body (``reconciler.server.transport``).  The first tests run a real ``reconcile
serve``; the next ones uvicorn with the guarded protocol and a small echo app in this
process, on a real socket; the split-point tests feed the same protocol class byte
streams cut at every position (a pure test of the cutting: a socket cannot be made to
deliver a given split)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import pathlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.config import Config
from uvicorn.server import ServerState

from reconciler.server.transport import TransportLimits, guarded_protocol, uvicorn_options
from tests.server.conftest import Remote
from tests.server.serve_helpers import WEBHOOK_SECRET, Serve, read_until_closed

LIMITS = TransportLimits(max_head_bytes=1024, head_timeout=30, body_timeout=30, keep_alive=1)


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``METHOD PATH LENGTH SHA256[:12]`` of the body it read; ``/early`` answers without
    reading the body at all."""
    assert scope["type"] == "http"
    body = b""
    if scope["path"] != "/early":
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
    digest = hashlib.sha256(body).hexdigest()[:12]
    text = f"{scope['method']} {scope['path']} {len(body)} {digest}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(text))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": text})


def expect(method: str, path: str, body: bytes = b"") -> bytes:
    return f"{method} {path} {len(body)} {hashlib.sha256(body).hexdigest()[:12]}".encode()


def parse_responses(raw: bytes) -> list[tuple[int, bytes]]:
    """Status and body of each response in ``raw`` (all carry a Content-Length)."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, raw
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in lines
            if line.lower().startswith(b"content-length:")
        )
        assert len(rest) >= length, raw  # not all of it yet
        out.append((status, rest[:length]))
        raw = rest[length:]
    return out


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    raw = b""
    while True:
        with contextlib.suppress(AssertionError, StopIteration):
            got = parse_responses(raw)
            if len(got) >= count:
                return got
        chunk = sock.recv(65536)
        assert chunk, f"closed after {raw!r}"
        raw += chunk


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


#: Four requests in one stream: a Content-Length body, a chunked body whose data holds
#: blank lines (where a head would end), a GET, an empty POST.
BODY_A = b"a=1\r\n\r\nb=2"
CHUNKS = (b"{\r\n\r\n", b"x" * 300, b"\r\n\r\n}")
STREAM = (
    b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY_A), BODY_A)
    + b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    + chunked(*CHUNKS)
    + b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
    + b"POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
)
ANSWERS = [
    (200, expect("POST", "/a", BODY_A)),
    (200, expect("POST", "/b", b"".join(CHUNKS))),
    (200, expect("GET", "/c")),
    (200, expect("POST", "/d")),
]


# ------------------------------------------------------------- reconcile serve


@pytest.fixture
def serve(remote: Remote, tmp_path: pathlib.Path) -> Iterator[Serve]:
    s = Serve(remote.url, tmp_path / "data", {"body_timeout": 1})
    yield s
    s.kill()


def test_serve_accepts_a_chunked_webhook_and_times_out_a_half_sent_one(serve: Serve) -> None:
    body = json.dumps({"ref": "refs/heads/main", "after": "c" * 40}).encode()
    sig = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "chunked-delivery",
        "X-Hub-Signature-256": sig,
        "Content-Type": "application/json",
    }
    pieces = iter([body[:10], body[10:30], body[30:]])  # no length: httpx sends it chunked
    r = httpx.post(serve.url + "/hooks/github", content=pieces, headers=headers, timeout=30)
    assert r.status_code == 202, r.text
    assert r.json()["result"] == "accepted"

    with socket.create_connection(("127.0.0.1", serve.port), timeout=30) as sock:
        sock.sendall(
            b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
            b"X-Hub-Signature-256: %s\r\nTransfer-Encoding: chunked\r\n\r\n%s"
            % (sig.encode(), chunked(body[:10])[: -len(b"0\r\n\r\n")])  # no last chunk
        )
        answer = read_until_closed(sock)  # returns only because the server closes
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"request body not received in 1 s" in answer


def test_serve_answers_a_pipelined_pair_and_refuses_garbage_with_400(serve: Serve) -> None:
    bootstrap = json.dumps({"token": "nope", "hostname": "h"}).encode()
    with socket.create_connection(("127.0.0.1", serve.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/agent/bootstrap HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" % (len(bootstrap), bootstrap)
        )
        [(refused, why), (ok, health)] = read_responses(sock, 2)
        sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")  # e.g. TLS on the plain port
        bad = read_until_closed(sock)
    assert refused == 401
    assert json.loads(why) == {"error": "bootstrap token unknown, already used or expired"}
    assert (ok, json.loads(health)) == (200, {"status": "ok"})
    assert parse_responses(bad) == [(400, b"Invalid HTTP request received.")]
    assert httpx.get(serve.url + "/healthz", timeout=10).status_code == 200


def test_serve_keeps_reading_paused_behind_a_long_poll_so_a_flood_costs_no_memory(
    serve: Serve,
) -> None:
    """Bytes pipelined behind a request in flight wait, with reading paused, until it is
    answered; then they are the next request's head, counted like any other."""
    agent = serve.register_agent()
    before = serve.rss_kib()
    poll = (
        b"GET /v1/agent/commands?wait=3 HTTP/1.1\r\nHost: x\r\nX-Agent-Id: %s\r\n"
        b"X-Agent-Secret: %s\r\n\r\n"
        % (agent["X-Agent-Id"].encode(), agent["X-Agent-Secret"].encode())
    )
    sent = [0]

    def flood(sock: socket.socket) -> None:
        chunk = b"a" * (1024 * 1024)
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(200):
                sock.sendall(chunk)
                sent[0] += len(chunk)

    with socket.create_connection(("127.0.0.1", serve.port), timeout=30) as sock:
        sock.sendall(poll)
        sender = threading.Thread(target=flood, args=(sock,))
        sender.start()
        raw = read_until_closed(sock)
        sender.join(60)
        assert not sender.is_alive()
    [(polled, commands), (refused, why)] = parse_responses(raw)
    assert (polled, json.loads(commands)["commands"]) == (200, [])
    assert (refused, why) == (431, b"request line and headers over 65536 bytes\n")
    after = serve.rss_kib()
    print(f"\nRSS before {before} KiB, after {sent[0] >> 20} MiB behind a long poll {after} KiB")
    assert sent[0] < 200 * 1024 * 1024  # the server stopped reading: the sender was held up
    assert after - before < 16 * 1024, (before, after)


# ------------------------------------------------------------------ a real socket


class Server:
    def __init__(self, limits: TransportLimits) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        options = uvicorn_options(limits)
        self.protocol = options["http"]
        config = uvicorn.Config(echo, lifespan="off", log_config=None, **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]})
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server(LIMITS)
    yield s
    s.stop()


def test_pipelined_requests_in_one_write_are_each_answered_in_order(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(STREAM)
        assert read_responses(sock, len(ANSWERS)) == ANSWERS
        # The connection is still good for the next request.
        sock.sendall(b"GET /e HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_responses(sock, 1) == [(200, expect("GET", "/e"))]


def test_connection_close_answers_once_and_ignores_what_follows(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(
            b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        raw = read_until_closed(sock)
    assert parse_responses(raw) == [(200, expect("GET", "/a"))]


def test_a_pipelined_head_over_the_limit_is_refused_after_the_first_answer(
    server: Server,
) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nX-Big: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"b" * 64 * 1024)
        raw = read_until_closed(sock)
    [first, refused] = parse_responses(raw)
    assert first == (200, expect("GET", "/a"))
    assert refused == (431, b"request line and headers over 1024 bytes\n")
    assert server.protocol.gate.refused == 1


def test_an_answer_before_the_body_keeps_the_connection_and_its_keep_alive(
    server: Server,
) -> None:
    """``/early`` answers before reading; the body still arrives and is skipped, the next
    request is served, and the idle connection is then closed by the keep-alive timeout
    (uvicorn alone loses that timer to the body's bytes and keeps it open for ever)."""
    body = b"z" * 5000
    head = b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    with server.connect() as sock:
        sock.sendall(head)
        assert read_responses(sock, 1) == [(200, expect("POST", "/early"))]
        sock.sendall(body + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_responses(sock, 1) == [(200, expect("GET", "/next"))]
        sock.sendall(head)
        assert read_responses(sock, 1) == [(200, expect("POST", "/early"))]
        sock.sendall(body)  # and nothing after it
        assert read_until_closed(sock) == b""  # keep_alive=1: closed, no answer


def test_bytes_the_parser_refuses_are_answered_400_and_closed(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
        raw = read_until_closed(sock)
    [first, bad] = parse_responses(raw)
    assert first == (200, expect("GET", "/a"))
    assert bad == (400, b"Invalid HTTP request received.")


# ------------------------------------------------------------ every split point


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = b""
        self.closed = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 1), "peername": ("127.0.0.1", 2)}.get(name, default)


def _feed_in_pieces(pieces: list[bytes], limits: TransportLimits = LIMITS) -> bytes:
    async def run() -> bytes:
        config = Config(echo, lifespan="off", log_config=None, timeout_keep_alive=30)
        config.load()
        proto = guarded_protocol(limits)(config, ServerState(), {}, asyncio.get_running_loop())
        transport = _Transport()
        proto.connection_made(transport)
        for piece in pieces:
            # A client keeps sending; the server reads when it is reading.
            for _ in range(100):
                if transport.reading or transport.closed:
                    break
                await asyncio.sleep(0)
            if transport.closed:
                break
            proto.data_received(piece)
        for _ in range(100):
            await asyncio.sleep(0)
        proto.connection_lost(None)
        return transport.out

    return asyncio.run(run())


def test_the_stream_cut_at_every_point_gets_the_same_answers() -> None:
    for cut in range(1, len(STREAM)):
        out = _feed_in_pieces([STREAM[:cut], STREAM[cut:]])
        assert parse_responses(out) == ANSWERS, cut


def test_the_stream_one_byte_at_a_time_gets_the_same_answers() -> None:
    out = _feed_in_pieces([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert parse_responses(out) == ANSWERS


def test_a_head_is_refused_at_the_limit_wherever_the_reads_split_it() -> None:
    """1024 bytes before the blank line pass, 1025 do not, however the bytes arrive."""
    for size, status in ((1024, 200), (1025, 431)):
        line = b"GET /a HTTP/1.1\r\nX: "
        head = line + b"h" * (size - len(line)) + b"\r\n\r\n"
        assert len(head) == size + 4
        for cut in (1, size - 1, size, size + 1, size + 2, size + 3):
            [(got, _body)] = parse_responses(_feed_in_pieces([head[:cut], head[cut:]]))
            assert got == status, (size, cut)
