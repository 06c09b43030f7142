"""The local socket output on its own (no agent): a slow or dead client never blocks the producer,
every decision reaches a client that reads, a stale socket is replaced, anything else is not."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from edge_agent.agent import Decision
from edge_agent.local_output import LocalSocketOutput
from lineside_common.errors import LocalOutputError
from tests.mqtt import wait_until


def _decision(i: int) -> Decision:
    return Decision(i, time.time(), "box", 0, 0.9, (120.0, 80.0), 0.2, True, f"b00t-{i}", "shapes@2.0.0")


def test_a_client_that_never_reads_is_dropped_and_never_blocks(tmp_path: Path) -> None:
    path = tmp_path / "run" / "d.sock"
    out = LocalSocketOutput(path, client_buffer_bytes=128 * 1024, queue_size=100_000)
    out.start()
    try:
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(str(path))
        reader = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        reader.connect(str(path))
        reader.settimeout(5)
        wait_until(lambda: out.clients == 2, 5, what="two clients")
        got: list[dict[str, object]] = []
        buf = b""
        n = 10_000
        offer_s = 0.0
        for start in range(0, n, 50):
            # Batches of 50, each read before the next: a client that keeps up, a camera's pace.
            t0 = time.perf_counter()
            for i in range(start, start + 50):
                out.offer(_decision(i))
            offer_s = max(offer_s, time.perf_counter() - t0)
            while len(got) < start + 50:
                chunk = reader.recv(1 << 16)
                assert chunk, "the reading client was disconnected"
                buf += chunk
                *lines, buf = buf.split(b"\n")
                got += [json.loads(x) for x in lines]
        assert [d["frame_id"] for d in got] == list(range(n)), "the reading client missed decisions"
        assert got[0]["model"] == "shapes@2.0.0" and got[0]["id"] == "b00t-0"
        wait_until(lambda: out.clients_dropped == 1, 5, what="the stuck client dropped")
        assert offer_s < 1.0, f"offer() took {offer_s:.3f}s for 50 decisions"  # catches a hang, not a speed
        assert out.queue.dropped == 0
    finally:
        out.stop()
    assert not path.exists()


def test_stale_socket_is_replaced_but_a_regular_file_is_not(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(str(path))
    old.close()  # what a killed agent leaves behind
    out = LocalSocketOutput(path)
    out.start()
    out.stop()
    path.write_text("not a socket")
    with pytest.raises(LocalOutputError) as exc:
        LocalSocketOutput(path).start()
    assert exc.value.reason == "socket_path" and path.read_text() == "not a socket"
