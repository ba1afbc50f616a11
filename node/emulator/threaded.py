"""An emulator's HTTP server run in a background thread, as a context manager (the DICOMweb emulators' shared part)."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Any, Self


class ThreadedEmulator:
    """Serves ``server`` on a daemon thread named ``name`` between :meth:`start` and :meth:`stop`."""

    def __init__(self, server: ThreadingHTTPServer, name: str) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)

    def start(self) -> Self:
        """Start answering requests; returns the emulator."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
