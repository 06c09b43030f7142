"""The line's state read from an OPC UA node on the line's PLC (needs the ``opcua`` extra).

``[line] source = "opcua"`` with ``opcua_url`` and ``opcua_node`` (e.g. ``ns=2;s=Line1.State``):
the node holds a PackML state name (``"Execute"``), a PackML state number (OPC 30050 / ISA-TR88:
6 = Execute, 4 = Idle, ...) or the same JSON the other sources take. An optional
``opcua_changeover_node`` holds a Boolean changeover flag.

The node is read every ``opcua_poll_s`` (only the latest state matters, so polling loses
nothing that counts). A PLC that cannot be reached makes the state ``unknown`` (the update
window then defers) and is reported once per outage; the reader retries with capped backoff.
Runs its own asyncio loop on its own thread; it hands values to the caller's callbacks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# PackML state numbers (ISA-TR88.00.02 / OPC 30050) for the states the update window knows.
PACKML_NUMBERS = {
    2: "stopped",
    4: "idle",
    5: "suspended",
    6: "execute",
    9: "aborted",
    11: "held",
    17: "complete",
}


def payload_of(value: Any, changeover: Any) -> bytes:
    """The node's value (and changeover flag) as a line-state payload for parse_line_state."""
    if isinstance(value, bool):
        value = str(value)  # not a state: parse_line_state reports it as a bad value
    elif isinstance(value, int):
        value = PACKML_NUMBERS.get(value, f"PackML state {value}")
    if isinstance(value, str) and value.lstrip()[:1] in ("{", '"', "["):
        return value.encode()
    body: dict[str, Any] = {"state": value}
    if changeover is not None:
        body["changeover"] = changeover
    return json.dumps(body, default=str).encode()


class OpcUaLineSource:
    """Polls the line's state node; ``on_value(payload)`` per read, ``on_unreachable(why)`` per failure."""

    def __init__(
        self,
        url: str,
        node: str,
        *,
        changeover_node: str | None,
        poll_s: float,
        on_value: Callable[[bytes], None],
        on_unreachable: Callable[[str], None],
        timeout_s: float = 4.0,
        backoff_max_s: float = 10.0,
    ) -> None:
        self.url = url
        self.node = node
        self.changeover_node = changeover_node
        self.poll_s = poll_s
        self.on_value = on_value
        self.on_unreachable = on_unreachable
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()), name="line-opcua", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 2)

    async def _sleep(self, seconds: float) -> None:
        end = asyncio.get_running_loop().time() + seconds
        while not self._stop.is_set() and asyncio.get_running_loop().time() < end:
            await asyncio.sleep(min(0.1, seconds))

    async def _main(self) -> None:
        from asyncua import Client

        delay = 0.5
        while not self._stop.is_set():
            try:
                client = Client(self.url, timeout=self.timeout_s)
                async with client:
                    node = client.get_node(self.node)
                    flag = client.get_node(self.changeover_node) if self.changeover_node else None
                    delay = 0.5
                    while not self._stop.is_set():
                        value = await node.read_value()
                        changeover = await flag.read_value() if flag is not None else None
                        self.on_value(payload_of(value, changeover))
                        await self._sleep(self.poll_s)
            except Exception as exc:  # asyncua raises many types: all mean "cannot read the node now"
                if self._stop.is_set():
                    return
                why = f"{type(exc).__name__}: {exc}"[:300]
                log.info(
                    "line state node %s at %s unreachable (%s); retry in %.1fs",
                    self.node,
                    self.url,
                    why,
                    delay,
                )
                try:
                    self.on_unreachable(why)
                except Exception:
                    log.exception("line-state unreachable callback failed")
                await self._sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
