"""The embedded MQTT broker (``amqtt``) for one-machine use: the demo and a laptop trial.

``fleet serve`` starts it when no ``broker_url`` is configured, on its own thread with its own
asyncio loop, listening on ``embedded_broker_listen`` (default 127.0.0.1:1883). It speaks MQTT
3.1.1, keeps sessions only in memory and has no TLS or ACLs here: for a plant, run Mosquitto,
EMQX, HiveMQ or VerneMQ and set ``broker_url``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from lineside_common.errors import TransportError

log = logging.getLogger(__name__)


class EmbeddedBroker:
    """An amqtt broker on a background thread; ``start()`` returns once it listens."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        self._thread = threading.Thread(target=self._run, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TransportError(f"embedded MQTT broker did not start on {self.host}:{self.port}")
        if self._error is not None:
            raise TransportError(
                f"embedded MQTT broker failed on {self.host}:{self.port}: {self._error}"
            ) from self._error
        log.info("embedded MQTT broker (amqtt, one machine only) on %s", self.url)

    def _run(self) -> None:
        from amqtt.broker import Broker  # imported here: only the embedded case needs it

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        config = {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 0}
            },
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        async def main() -> None:
            self._broker = Broker(config, loop=loop)
            await self._broker.start()

        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._broker is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop)
        try:
            fut.result(timeout=10)
        except Exception as exc:
            log.warning("embedded broker shutdown: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
