"""The emulator's shared state: settings, the pending fault script, the request log and the in-flight counts."""

from __future__ import annotations

import socket
import threading
from collections import deque
from typing import Any

from node.emulator.faults import RESPONSE_SHAPES
from node.emulator.handlers import HANDLERS
from node.emulator.requestlog import LOG_LIMIT
from node.emulator.variants import check_variants

__all__ = ["EmulatorState"]


class EmulatorState:
    """What the server's threads share, guarded by ``lock``: ``key`` (None: no auth), ``faults`` still pending,
    the request ``log``, ``in_flight``/``max_in_flight``, ``config`` (the /_emulator/config settings), ``stopping``
    (set on stop: wakes stalls and delays) and the open ``connections``."""

    def __init__(self, key: str | None, delay_seconds: float, response_shape: str, model: str | None,
                 variants: list[str] | None = None, max_input_pixels: int | None = None) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.faults: deque[dict] = deque()
        self.log: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.config: dict[str, Any] = {"response_shape": response_shape, "delay_seconds": float(delay_seconds),
                                       "model": model, "variants": check_variants(variants),
                                       "max_input_pixels": max_input_pixels}
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()

    def set_config(self, update: Any) -> dict[str, Any]:
        """Change settings (as POST /_emulator/config); ``ValueError`` names a bad key or value. Returns them all."""
        if not isinstance(update, dict):
            raise ValueError("config must be an object")
        unknown = set(update) - set(self.config)
        if unknown:
            raise ValueError(f"unknown config key(s) {sorted(unknown)}; allowed: {sorted(self.config)}")
        if "response_shape" in update and update["response_shape"] not in RESPONSE_SHAPES:
            raise ValueError(f"response_shape must be one of {RESPONSE_SHAPES}")
        if "delay_seconds" in update:
            d = update["delay_seconds"]
            if not isinstance(d, (int, float)) or d < 0:
                raise ValueError("delay_seconds must be a number >= 0")
        if "variants" in update:
            update = {**update, "variants": check_variants(update["variants"])}
        limit = update.get("max_input_pixels")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ValueError("max_input_pixels must be a positive integer (or null: no limit)")
        if update.get("model") is not None and update["model"] not in HANDLERS:
            raise ValueError(f"unknown model {update['model']!r}; known: {sorted(HANDLERS)}")
        with self.lock:
            self.config.update(update)
            if "delay_seconds" in update:
                self.config["delay_seconds"] = float(update["delay_seconds"])
            return dict(self.config)

    def next_fault(self) -> dict | None:
        """The next scripted fault, removed from the script; None when none is pending."""
        with self.lock:
            return self.faults.popleft() if self.faults else None

    def log_request(self, entry: dict[str, Any]) -> None:
        """Append a request's log entry, keeping the last :data:`~node.emulator.requestlog.LOG_LIMIT` entries."""
        with self.lock:
            self.log.append(entry)
            if len(self.log) > LOG_LIMIT:
                del self.log[: len(self.log) - LOG_LIMIT]

    def reset(self) -> None:
        """Clear the fault script, the request log and max_in_flight (to the requests now in flight)."""
        with self.lock:
            self.faults.clear()
            self.log.clear()
            self.max_in_flight = self.in_flight
