"""Decisions for a program on the same box: a Unix socket that streams newline-delimited JSON.

No second broker on the robot, nothing on the network: a controller program connects to the
socket (``/run/lineside/decisions.sock`` under systemd's ``RuntimeDirectory=``) and reads one JSON
object per decision::

    {"id": "3f9a12c0-42", "frame_id": 41, "ts": 1764513600.123, "label": "box_small",
     "confidence": 0.9812, "dimensions_mm": [120.0, 80.0], "model": "shapes@2.0.0",
     "latency_ms": 0.21}

It keeps flowing whatever the plant network does. A client may also write lines to the socket:
a line state (``{"state": "Idle", "changeover": true}``), taken when ``[line] source = "local"``.

Threads: the inference thread calls :meth:`LocalSocketOutput.offer` (a deque append, drop-oldest
counted, and a one-byte wake-up); everything else — JSON, sockets, clients — runs on this output's
own thread. A client that falls ``client_buffer_bytes`` behind is disconnected (counted): a slow or
dead client never blocks serving and never makes the agent buffer without bound.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import selectors
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lineside_common.errors import LocalOutputError

log = logging.getLogger(__name__)

MAX_CLIENT_LINE_BYTES = 4096


def decision_record(d: Any) -> dict[str, Any]:
    """The JSON object of one decision (shared by every local output)."""
    return {
        "id": d.decision_id,
        "frame_id": d.frame_id,
        "ts": round(d.timestamp, 3),
        "label": d.label if d.finite else None,
        "confidence": round(d.confidence, 4) if d.finite else 0.0,
        "dimensions_mm": None if d.dimensions_mm is None else [round(x, 1) for x in d.dimensions_mm],
        "model": d.model,
        "latency_ms": round(d.latency_ms, 3),
    }


class DecisionQueue:
    """The single crossing from the inference thread: bounded, drops the oldest, counts drops."""

    def __init__(self, maxlen: int) -> None:
        self._q: collections.deque[Any] = collections.deque(maxlen=maxlen)
        self.dropped = 0

    def put(self, item: Any) -> None:
        q = self._q
        if len(q) == q.maxlen:
            self.dropped += 1  # one producer (inference): the check and the append cannot interleave
        q.append(item)

    def drain(self) -> list[Any]:
        out = []
        q = self._q
        while q:
            out.append(q.popleft())
        return out


class _Client:
    __slots__ = ("inbuf", "outbuf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.outbuf = bytearray()
        self.inbuf = bytearray()


def _prepare_path(path: Path) -> None:
    """Make the parent directory; remove a stale socket; refuse to replace anything else."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    except OSError as exc:
        raise LocalOutputError(
            f"local_output.socket_path: cannot create {path.parent}: {exc.strerror}", reason="socket_path"
        ) from exc
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise LocalOutputError(
            f"local_output.socket_path: cannot use {path}: {exc.strerror}", reason="socket_path"
        ) from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise LocalOutputError(
            f"local_output.socket_path: {path} exists and is not a socket; not replacing it",
            reason="socket_path",
        )
    path.unlink()  # a socket left by a previous run


class LocalSocketOutput:
    """Streams every decision to every connected client of a Unix socket; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        mode: int = 0o660,
        max_clients: int = 16,
        client_buffer_bytes: int = 1_048_576,
        queue_size: int = 4096,
        on_line: Callable[[bytes], None] | None = None,
    ) -> None:
        self.path = path
        self.mode = mode
        self.max_clients = max_clients
        self.client_buffer_bytes = client_buffer_bytes
        self.on_line = on_line
        self.queue = DecisionQueue(queue_size)
        self.clients_dropped = 0
        self.sent = 0
        self._server: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._clients: dict[int, _Client] = {}

    # -- any thread
    def start(self) -> None:
        """Bind the socket and start the output thread; LocalOutputError (reason) when it cannot."""
        _prepare_path(self.path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(str(self.path))
            os.chmod(self.path, self.mode)
            server.listen(self.max_clients)
        except OSError as exc:
            server.close()
            raise LocalOutputError(
                f"local_output.socket_path: cannot listen on {self.path}: {exc.strerror}", reason="bind"
            ) from exc
        server.setblocking(False)
        self._server = server
        self._thread = threading.Thread(target=self._run, name="local-output", daemon=True)
        self._thread.start()

    def offer(self, decision: Any) -> None:
        """Inference thread: queue a decision and wake the output thread. Never blocks."""
        self.queue.put(decision)
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")  # full wake buffer: the thread is already awake

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for c in list(self._clients.values()):
            with contextlib.suppress(OSError):
                c.sock.close()
        self._clients.clear()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def clients(self) -> int:
        return len(self._clients)

    # -- the output thread
    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        assert self._server is not None
        sel.register(self._server, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop.is_set():
                for key, events in sel.select(timeout=1.0):
                    if key.data == "accept":
                        self._accept(sel)
                    elif key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            while self._wake_r.recv(4096):
                                pass
                    else:
                        client = self._clients.get(key.fd)
                        if client is None:
                            continue
                        if events & selectors.EVENT_READ:
                            self._read(sel, client)
                        if events & selectors.EVENT_WRITE and key.fd in self._clients:
                            self._flush(sel, client)
                self._broadcast(sel)
        except Exception:
            log.exception("local output thread failed")
        finally:
            sel.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        assert self._server is not None
        try:
            sock, _ = self._server.accept()
        except OSError:
            return
        if len(self._clients) >= self.max_clients:
            sock.close()
            self.clients_dropped += 1
            return
        sock.setblocking(False)
        self._clients[sock.fileno()] = _Client(sock)
        sel.register(sock, selectors.EVENT_READ, "client")

    def _drop(self, sel: selectors.BaseSelector, client: _Client, why: str) -> None:
        fd = client.sock.fileno()
        self._clients.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            sel.unregister(client.sock)
        with contextlib.suppress(OSError):
            client.sock.close()
        if why != "closed":
            self.clients_dropped += 1
            log.warning("local output: client dropped (%s)", why)

    def _read(self, sel: selectors.BaseSelector, client: _Client) -> None:
        try:
            data = client.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sel, client, "closed")
            return
        client.inbuf += data
        while b"\n" in client.inbuf:
            line, _, rest = bytes(client.inbuf).partition(b"\n")
            client.inbuf = bytearray(rest)
            if line.strip() and self.on_line is not None:
                try:
                    self.on_line(line)
                except Exception:
                    log.exception("local output: line handler failed")
        if len(client.inbuf) > MAX_CLIENT_LINE_BYTES:
            self._drop(sel, client, "line too long")

    def _broadcast(self, sel: selectors.BaseSelector) -> None:
        items = self.queue.drain()
        if not items:
            return
        if not self._clients:
            return
        blob = b"".join(json.dumps(decision_record(d), separators=(",", ":")).encode() + b"\n" for d in items)
        self.sent += len(items)
        for client in list(self._clients.values()):
            client.outbuf += blob
            self._flush(sel, client)

    def _flush(self, sel: selectors.BaseSelector, client: _Client) -> None:
        try:
            n = client.sock.send(client.outbuf) if client.outbuf else 0
        except BlockingIOError:
            n = 0
        except OSError:
            self._drop(sel, client, "closed")
            return
        del client.outbuf[:n]
        if len(client.outbuf) > self.client_buffer_bytes:
            self._drop(sel, client, f"more than {self.client_buffer_bytes} bytes behind")
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbuf else 0)
        with contextlib.suppress(KeyError, ValueError):
            sel.modify(client.sock, want, "client")
