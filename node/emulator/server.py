"""The emulator's HTTP server: Azure ML online endpoint behaviour around pluggable model handlers.

Routes
------
``POST /score``                 dispatched by ``input_data.columns`` (``frontal_image`` -> CXRReportGen); when
                                several handlers accept the columns, the server's ``model`` setting decides, else 400
``POST /<model>/score``         that model explicitly (``/cxrreportgen/score``, ``/medimageinsight/score``);
                                ``?variant=a,b`` answers this request in those reply variants
                                (:mod:`node.emulator.variants`)
``GET  /``                      liveness (``{"status": "Healthy", "models": [...]}``)
``POST /_emulator/faults``      ``{"faults": [fault, ...]}``: appended to the fault script
``GET  /_emulator/faults``      the faults still pending
``GET  /_emulator/requests``    ``{"requests": [...], "max_in_flight": n}``: the request log
``POST /_emulator/reset``       clears the fault script, the request log and max_in_flight
``GET|POST /_emulator/config``  ``{"response_shape": "rows"|"object", "delay_seconds": float, "model": str|null,
                                "variants": [names], "max_input_pixels": int|null}``

A request the emulated model refuses (an undecodable image, a volume over ``max_input_pixels``...) is answered as
Azure ML answers a model container's non-200: **424** with ``ms-azureml-model-error-statuscode`` (the model's
status, e.g. 400 or 413) and ``ms-azureml-model-error-reason``; a handler's crash is a 424 with status 500.

With a key, every route except ``GET /`` needs ``Authorization: Bearer <key>`` (else 401, JSON message).
Unauthenticated requests are answered by the "gateway": they consume no fault.

The faults a ``/score`` request may meet are in :mod:`node.emulator.faults`, the request log's entries in
:mod:`node.emulator.requestlog`, the request handling in :mod:`node.emulator.endpoint`.

Every reply carries ``x-ms-emulator``, ``x-request-id`` and ``x-emulator-elapsed-ms`` (server processing time); like
the real service, no model-version header, except a scoring reply in the ``versioned`` variant
(``x-ms-model-version``: the emulated model's version).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from typing import Any, Iterable

from node.emulator.endpoint import EndpointHTTPServer, EndpointRequestHandler
from node.emulator.faults import RESPONSE_SHAPES, validate_faults
from node.emulator.handlers import HANDLERS
from node.emulator.state import EmulatorState
from node.emulator.variants import VARIANTS

log = logging.getLogger(__name__)

__all__ = ["EmulatorServer", "main", "serve_forever"]


class EmulatorServer:
    """A real HTTP server on ``host:port`` (0: a free port) emulating the model endpoints.

    ``key``: the bearer key to demand (None: no auth). ``delay_seconds``: simulated model time per answer.
    ``response_shape``: ``"rows"`` (``[{"output": "<JSON string>"}]``, what the sample client sees) or ``"object"``
    (``{"output": [...]}``, the product page). ``model``: the model ``/score`` always means (default: by columns).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, key: str | None = None,
                 delay_seconds: float = 0.0, response_shape: str = "rows", model: str | None = None,
                 variants: list[str] | None = None, max_input_pixels: int | None = None) -> None:
        if response_shape not in RESPONSE_SHAPES:
            raise ValueError(f"response_shape must be one of {RESPONSE_SHAPES}")
        if model is not None and model not in HANDLERS:
            raise ValueError(f"unknown model {model!r}; known: {sorted(HANDLERS)}")
        self.host = host
        self.port = port
        self._state = EmulatorState(key, delay_seconds, response_shape, model, variants, max_input_pixels)
        self._httpd: EndpointHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> "EmulatorServer":
        if self._httpd is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_cls = type("_Server", (EndpointHTTPServer,), {"address_family": family})
        httpd = server_cls((self.host, self.port), EndpointRequestHandler)
        httpd.state = self._state
        self._state.stopping.clear()
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"emulator:{self.port}", daemon=True)
        self._thread.start()
        log.info("emulator listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._state.stopping.set()  # wakes stalls and delays
        httpd.shutdown()
        httpd.server_close()
        with self._state.lock:
            conns = list(self._state.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "EmulatorServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- addresses -----------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the emulator is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The scoring URI, ``http://127.0.0.1:<port>/score``."""
        return f"{self.base_url}/score"

    def model_url(self, model: str, *variants: str) -> str:
        """``/<model>/score``, with ``?variant=...`` when ``variants`` are named."""
        query = f"?variant={','.join(variants)}" if variants else ""
        return f"{self.base_url}/{model}/score{query}"

    # --- control (the same as the /_emulator routes) -------------------------------------------------
    def script_faults(self, faults: list[dict]) -> None:
        checked = validate_faults(faults)
        with self._state.lock:
            self._state.faults.extend(checked)

    @property
    def pending_faults(self) -> list[dict]:
        with self._state.lock:
            return list(self._state.faults)

    def configure(self, **update: Any) -> dict[str, Any]:
        """Change ``response_shape``, ``delay_seconds``, ``model``, ``variants`` or ``max_input_pixels`` (as POST
        /_emulator/config)."""
        return self._state.set_config(update)

    def reset(self) -> None:
        """Clear the fault script, the request log and max_in_flight (as POST /_emulator/reset)."""
        self._state.reset()

    @property
    def requests(self) -> list[dict]:
        """The /score requests received, logged on arrival: path, model, columns, rows, digests (column -> SHA-256
        of the value in row 0, as sent: base64 for images), headers (no
        Authorization), authorization (a fingerprint, see :func:`fingerprint`), body_size, time (received, POSIX),
        status answered (None while in progress or when closed), state ("in_progress", "answered", "closed"),
        fault, elapsed_ms, variants (the reply variants this request was answered in), reply (the JSON answered with
        a model's result or a scripted body, as sent; None when larger than 64 KiB) and reply_bytes."""
        with self._state.lock:
            return [dict(e) for e in self._state.log]

    @property
    def max_in_flight(self) -> int:
        """The highest number of /score requests handled at the same time."""
        with self._state.lock:
            return self._state.max_in_flight

    @property
    def in_flight(self) -> int:
        with self._state.lock:
            return self._state.in_flight


def serve_forever(host: str, port: int, key: str | None, *, delay_seconds: float = 0.0,
                  response_shape: str = "rows", model: str | None = None, variants: list[str] | None = None,
                  max_input_pixels: int | None = None) -> None:
    """Run the emulator in the foreground until SIGINT/SIGTERM (``dicom-node emulator``)."""
    server = EmulatorServer(host, port, key=key, delay_seconds=delay_seconds, response_shape=response_shape,
                            model=model, variants=variants, max_input_pixels=max_input_pixels).start()
    done = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        done.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _stop)
    print(f"emulator listening on {server.url} (models: {', '.join(sorted(HANDLERS))}; "
          f"auth: {'key' if key else 'none'}; variants: {', '.join(variants or []) or 'none'})", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m node.emulator.server [--host H] [--port P] [--key-env VAR] [--delay-seconds S] [--shape rows]``"""
    parser = argparse.ArgumentParser(prog="python -m node.emulator.server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--key-env", default=None, help="environment variable holding the bearer key to demand")
    parser.add_argument("--delay-seconds", type=float, default=0.0, help="simulated model time per answer")
    parser.add_argument("--shape", choices=RESPONSE_SHAPES, default="rows", help="reply shape of CXRReportGen")
    parser.add_argument("--model", choices=sorted(HANDLERS), default=None, help="the model /score always means")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), default=[],
                        help="a reply variant of the real service (repeatable; node/emulator/variants.py)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    key = None
    if args.key_env:
        key = os.environ.get(args.key_env)
        if not key:
            parser.error(f"environment variable {args.key_env} is not set or empty")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_forever(args.host, args.port, key, delay_seconds=args.delay_seconds, response_shape=args.shape,
                  model=args.model, variants=args.variant)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())