"""A worker's life after SIGTERM: first draining (readiness 503, requests still served), then uvicorn's own
graceful shutdown, bounded by ``shutdown_grace`` (uvicorn's ``timeout_graceful_shutdown``).

The delay lets a load balancer or an orchestrator see /readyz fail, or drop the replica from DNS, before the
listener closes: without it, requests routed here in that window are refused.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

logger = logging.getLogger("bloodcells")

DRAIN_SIGNALS = (signal.SIGTERM,)


@dataclass
class Lifecycle:
    draining: bool = False


def drain_before_exit(lifecycle: Lifecycle, delay: float) -> None:
    """Wrap the server's SIGTERM handler (uvicorn's, installed before the lifespan starts): on the first
    SIGTERM mark the worker draining, and pass the signal on to uvicorn ``delay`` seconds later.

    Only in the main thread (where the server runs); SIGINT (Ctrl+C) is left as it is."""
    if delay <= 0 or threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in DRAIN_SIGNALS:
        server_handler = signal.getsignal(sig)
        if not callable(server_handler):
            continue
        signal.signal(sig, _draining_handler(lifecycle, delay, loop, server_handler))


def _draining_handler(lifecycle: Lifecycle, delay: float, loop: asyncio.AbstractEventLoop,
                      server_handler: Callable[[int, FrameType | None], Any]) -> Callable[[int, FrameType | None], None]:
    def handle(sig: int, frame: FrameType | None) -> None:
        if lifecycle.draining:  # a second signal: no more waiting
            server_handler(sig, frame)
            return
        lifecycle.draining = True
        logger.info("draining before shutdown", extra={"fields": {"signal": signal.Signals(sig).name,
                                                                   "delay_s": delay}})
        loop.call_soon_threadsafe(loop.call_later, delay, server_handler, sig, None)
    return handle
