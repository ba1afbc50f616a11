"""The emulator's HTTP server: Azure ML online endpoint behaviour around pluggable model handlers.

Routes
------
``POST /score``                 dispatched by ``input_data.columns`` (``frontal_image`` -> CXRReportGen); when
                                several handlers accept the columns, the server's ``model`` setting decides, else 400
``POST /<model>/score``         that model explicitly (``/cxrreportgen/score``, ``/medimageinsight/score``)
``GET  /``                      liveness (``{"status": "Healthy", "models": [...]}``)
``POST /_emulator/faults``      ``{"faults": [fault, ...]}``: appended to the fault script
``GET  /_emulator/faults``      the faults still pending
``GET  /_emulator/requests``    ``{"requests": [...], "max_in_flight": n}``: the request log
``POST /_emulator/reset``       clears the fault script, the request log and max_in_flight
``GET|POST /_emulator/config``  ``{"response_shape": "rows"|"object", "delay_seconds": float, "model": str|null}``

With a key, every route except ``GET /`` needs ``Authorization: Bearer <key>`` (else 401, JSON message).
Unauthenticated requests are answered by the "gateway": they consume no fault.

Faults
------
Each ``/score`` request that passes authentication consumes the next fault, if any (a dict; keys combine):

* ``{"stall_seconds": 5}``: sleep first, then go on (with the other keys, or answer normally);
* ``{"close": true}``: close the connection without answering;
* ``{"status": 429, "retry_after": 1}``: answer that status with ``{"message": ...}``; ``retry_after`` (seconds, or
  an HTTP date string) -> ``Retry-After``, ``retry_after_ms`` -> ``retry-after-ms``; ``message`` overrides the
  text; a 424 carries ``ms-azureml-model-error-statuscode``/``-reason`` (``model_status``, ``model_reason``);
* ``{"malformed": true}``: 200 whose body is not JSON;
* ``{"body": <any JSON>}``: 200 with exactly this body (``status`` may change the code);
* ``{"shape": "object"|"rows"}``: the reply shape of this one answer;
* ``{"headers": {...}}``: extra reply headers; ``{"repeat": n}``: the fault n times in a row.

Every reply carries ``x-ms-emulator``, ``x-request-id``, ``x-emulator-elapsed-ms`` (server processing time) and
``x-ms-model-version``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable

from node.emulator import EMULATOR_HEADER_VALUE, ModelHandler, RequestError
from node.emulator.inspect import describe_payload
from node.models import registry

log = logging.getLogger(__name__)

RESPONSE_SHAPES = ("rows", "object")
LOG_LIMIT = 10_000  # request log entries kept (a long benchmark run must not grow memory without bound)
GENERIC_MODEL_VERSION = "emulator-1"
_FAULT_KEYS = {"status", "retry_after", "retry_after_ms", "stall_seconds", "close", "malformed", "body", "shape",
               "message", "headers", "model_status", "model_reason", "repeat"}
_DEFAULT_MESSAGES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "No deployment with traffic",
    408: "Request timed out",
    413: "Request entity too large",
    424: "The model container failed",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}

# --- model handlers ----------------------------------------------------------------------------------

HANDLERS: dict[str, ModelHandler] = {}


def register_handler(handler: ModelHandler) -> None:
    """Make a model available at ``/<handler.name>/score`` and to ``/score``'s column dispatch."""
    HANDLERS[handler.name] = handler


for _handler in registry.emulator_handlers():
    register_handler(_handler)


def fingerprint(authorization: str | None) -> str | None:
    """A short, non-reversible tag of an Authorization header value (the log never holds the secret)."""
    if not authorization:
        return None
    return hashlib.sha256(authorization.encode("utf-8")).hexdigest()[:12]


def validate_faults(faults: Any) -> list[dict]:
    """Check a fault script; return it with ``repeat`` expanded. ``ValueError`` names the bad entry."""
    if not isinstance(faults, list):
        raise ValueError("faults must be a list of objects")
    out: list[dict] = []
    for i, fault in enumerate(faults):
        if not isinstance(fault, dict):
            raise ValueError(f"fault {i}: must be an object")
        unknown = set(fault) - _FAULT_KEYS
        if unknown:
            raise ValueError(f"fault {i}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_FAULT_KEYS)}")
        status = fault.get("status")
        if status is not None and (not isinstance(status, int) or not 200 <= status <= 599):
            raise ValueError(f"fault {i}: status must be an HTTP status code 200..599")
        stall = fault.get("stall_seconds", 0)
        if not isinstance(stall, (int, float)) or stall < 0:
            raise ValueError(f"fault {i}: stall_seconds must be a number >= 0")
        if fault.get("shape") not in (None, *RESPONSE_SHAPES):
            raise ValueError(f"fault {i}: shape must be one of {RESPONSE_SHAPES}")
        if "headers" in fault and not isinstance(fault["headers"], dict):
            raise ValueError(f"fault {i}: headers must be an object")
        repeat = fault.get("repeat", 1)
        if not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"fault {i}: repeat must be an integer >= 1")
        single = {k: v for k, v in fault.items() if k != "repeat"}
        out.extend(dict(single) for _ in range(repeat))
    return out


# --- shared state ------------------------------------------------------------------------------------

class _State:
    def __init__(self, key: str | None, delay_seconds: float, response_shape: str, model: str | None) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.faults: deque[dict] = deque()
        self.log: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.config: dict[str, Any] = {"response_shape": response_shape, "delay_seconds": float(delay_seconds),
                                       "model": model}
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()

    def set_config(self, update: Any) -> dict[str, Any]:
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
        if update.get("model") is not None and update["model"] not in HANDLERS:
            raise ValueError(f"unknown model {update['model']!r}; known: {sorted(HANDLERS)}")
        with self.lock:
            self.config.update(update)
            if "delay_seconds" in update:
                self.config["delay_seconds"] = float(update["delay_seconds"])
            return dict(self.config)

    def next_fault(self) -> dict | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    state: _State

    def process_request(self, request, client_address):  # track connections so stop() can close them
        with self.state.lock:
            self.state.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.state.lock:
            self.state.connections.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dicom-ai-node-emulator"
    sys_version = ""
    timeout = 120  # an idle keep-alive connection is dropped after this
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)

    # --- plumbing ------------------------------------------------------------------------------------
    @property
    def state(self) -> _State:
        return self.server.state

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            n = 0
        return self.rfile.read(n) if n > 0 else b""

    def _authorized(self) -> bool:
        key = self.state.key
        if key is None:
            return True
        return hmac.compare_digest((self.headers.get("Authorization") or "").encode(), f"Bearer {key}".encode())

    def _send(self, status: int, body: bytes, *, started: float, model_version: str | None = None,
              extra: dict[str, str] | None = None, content_type: str = "application/json") -> None:
        try:
            self._write(status, body, started, model_version, extra, content_type)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            # the client gave up (read timeout) while we stalled: nothing to answer
            self.close_connection = True

    def _write(self, status: int, body: bytes, started: float, model_version: str | None,
               extra: dict[str, str] | None, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-ms-emulator", EMULATOR_HEADER_VALUE)
        self.send_header("x-request-id", str(uuid.uuid4()))
        self.send_header("x-ms-model-version", model_version or GENERIC_MODEL_VERSION)
        self.send_header("x-emulator-elapsed-ms", f"{(time.perf_counter() - started) * 1000:.3f}")
        client_rid = self.headers.get("x-ms-client-request-id")
        if client_rid:
            self.send_header("x-ms-client-request-id", client_rid)
        self.send_header("azureml-model-deployment", self.headers.get("azureml-model-deployment") or "emulator")
        for name, value in (extra or {}).items():
            self.send_header(name, str(value))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, *, started: float, **kw: Any) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), started=started, **kw)

    def _send_message(self, status: int, message: str, *, started: float, **kw: Any) -> None:
        self._send_json(status, {"message": message}, started=started, **kw)

    # --- routes --------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        started = time.perf_counter()
        path = self.path.split("?", 1)[0]
        if path in ("/", "/health"):
            self._send_json(200, {"status": "Healthy", "models": sorted(HANDLERS)}, started=started)
            return
        if not self._authorized():
            self._send_message(401, "missing or invalid bearer key", started=started)
            return
        state = self.state
        if path == "/_emulator/requests":
            with state.lock:
                payload = {"requests": [dict(e) for e in state.log], "max_in_flight": state.max_in_flight}
            self._send_json(200, payload, started=started)
        elif path == "/_emulator/faults":
            with state.lock:
                self._send_json(200, {"faults": list(state.faults)}, started=started)
        elif path == "/_emulator/config":
            with state.lock:
                self._send_json(200, dict(state.config), started=started)
        else:
            self._send_message(404, f"no route {path}", started=started)

    def do_POST(self) -> None:  # noqa: N802
        started = time.perf_counter()
        received = time.time()
        path = self.path.split("?", 1)[0]
        raw = self._read_body()
        if path == "/score" or (path.endswith("/score") and path.count("/") == 2):
            self._score(path, raw, started, received)
            return
        if not self._authorized():
            self._send_message(401, "missing or invalid bearer key", started=started)
            return
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            self._send_message(400, "the body is not JSON", started=started)
            return
        state = self.state
        try:
            if path == "/_emulator/faults":
                faults = validate_faults(doc.get("faults") if isinstance(doc, dict) else None)
                with state.lock:
                    state.faults.extend(faults)
                    pending = len(state.faults)
                self._send_json(200, {"pending": pending}, started=started)
            elif path == "/_emulator/reset":
                with state.lock:
                    state.faults.clear()
                    state.log.clear()
                    state.max_in_flight = state.in_flight
                self._send_json(200, {"reset": True}, started=started)
            elif path == "/_emulator/config":
                self._send_json(200, state.set_config(doc), started=started)
            else:
                self._send_message(404, f"no route {path}", started=started)
        except ValueError as exc:
            self._send_message(400, str(exc), started=started)

    # --- scoring -------------------------------------------------------------------------------------
    def _score(self, path: str, raw: bytes, started: float, received: float) -> None:
        state = self.state
        entry: dict[str, Any] = {
            "path": path,
            "model": None,
            "columns": None,
            "rows": None,
            "digests": None,
            "headers": {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"},
            "authorization": fingerprint(self.headers.get("Authorization")),
            "body_size": len(raw),
            "time": received,
            "status": None,
            "state": "in_progress",
            "fault": None,
            "elapsed_ms": None,
        }
        with state.lock:  # logged on arrival: a test can see a call that is still stalling
            state.log.append(entry)
            if len(state.log) > LOG_LIMIT:
                del state.log[: len(state.log) - LOG_LIMIT]
        doc: Any = None
        try:
            doc = json.loads(raw)
        except ValueError:
            pass
        input_data = doc.get("input_data") if isinstance(doc, dict) else None
        if isinstance(input_data, dict) and isinstance(input_data.get("columns"), list):
            entry["columns"] = [str(c) for c in input_data["columns"]]
            if isinstance(input_data.get("data"), list):
                entry["rows"] = len(input_data["data"])
                first = input_data["data"][0] if input_data["data"] else None
                if isinstance(first, list):  # a digest per value of row 0: tests check content, the log holds no PHI
                    entry["digests"] = {c: hashlib.sha256(str(v).encode("utf-8")).hexdigest()
                                        for c, v in zip(entry["columns"], first)}
            entry["payload"] = describe_payload(input_data)  # what left the node: image kinds, text

        def finish(status: int | None) -> None:
            with state.lock:
                entry["status"] = status
                entry["state"] = "answered" if status is not None else "closed"
                entry["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 3)

        if not self._authorized():
            finish(401)
            self._send_message(401, "missing or invalid bearer key (Authorization: Bearer <key>)", started=started)
            return

        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            config = dict(state.config)
        counted = True

        def leave() -> None:  # before the reply is written: a client may start its next call at once
            nonlocal counted
            if counted:
                counted = False
                with state.lock:
                    state.in_flight -= 1

        try:
            fault = state.next_fault()
            with state.lock:
                entry["fault"] = fault
            fault = fault or {}
            if fault.get("stall_seconds"):
                state.stopping.wait(float(fault["stall_seconds"]))
            if fault.get("close"):
                leave()
                finish(None)
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            extra = {str(k): str(v) for k, v in (fault.get("headers") or {}).items()}
            handler = None
            try:
                handler = self._pick_handler(path, entry["columns"], config)
            except RequestError:
                if "status" not in fault and "body" not in fault and not fault.get("malformed"):
                    raise
            model_version = handler.model_version if handler is not None else None
            with state.lock:
                entry["model"] = handler.name if handler is not None else None

            if "body" in fault:
                status = int(fault.get("status", 200))
                leave()
                finish(status)
                self._send_json(status, fault["body"], started=started, model_version=model_version, extra=extra)
                return
            if fault.get("malformed"):
                leave()
                finish(200)
                self._send(200, b'{"output": [["EMULATED: truncated', started=started, model_version=model_version,
                           extra=extra)
                return
            if "status" in fault and fault["status"] >= 300:
                status = int(fault["status"])
                if "retry_after" in fault:
                    extra["Retry-After"] = str(fault["retry_after"])
                if "retry_after_ms" in fault:
                    extra["retry-after-ms"] = str(fault["retry_after_ms"])
                if status == 424:
                    extra.setdefault("ms-azureml-model-error-statuscode", str(fault.get("model_status", 500)))
                    extra.setdefault("ms-azureml-model-error-reason", str(fault.get("model_reason", "model_error")))
                message = str(fault.get("message") or _DEFAULT_MESSAGES.get(status, f"HTTP {status}"))
                leave()
                finish(status)
                self._send_message(status, f"{message} (emulated)", started=started, model_version=model_version,
                                   extra=extra)
                return

            # a normal answer
            if not isinstance(doc, dict):
                raise RequestError(400, "the body must be a JSON object with input_data")
            if not isinstance(input_data, dict):
                raise RequestError(400, "the body has no input_data object")
            assert handler is not None
            delay = float(config.get("delay_seconds") or 0.0)
            if delay > 0:
                state.stopping.wait(delay)
            options = dict(config)
            options["params"] = doc.get("params") if isinstance(doc.get("params"), dict) else {}
            if fault.get("shape"):
                options["response_shape"] = fault["shape"]
            result = handler.score(input_data, options)
            status = int(fault.get("status", 200))
            leave()
            finish(status)
            self._send_json(status, result, started=started, model_version=model_version, extra=extra)
        except RequestError as exc:
            leave()
            finish(exc.status)
            self._send_message(exc.status, exc.message, started=started)
        except Exception as exc:  # a bug in a handler: answer like the inference server would
            log.exception("emulator: handler failed")
            leave()
            finish(500)
            self._send_message(500, f"emulator error: {type(exc).__name__}", started=started)
        finally:
            leave()

    def _pick_handler(self, path: str, columns: list[str] | None, config: dict[str, Any]) -> ModelHandler:
        if path != "/score":
            name = path.strip("/").split("/", 1)[0]
            handler = HANDLERS.get(name)
            if handler is None:
                raise RequestError(404, f"no model {name!r}; known: {sorted(HANDLERS)}")
            return handler
        if columns is None:
            raise RequestError(400, "the body must be JSON with input_data.columns")
        candidates = [h for h in HANDLERS.values() if h.accepts(columns)]
        if config.get("model"):
            return HANDLERS[config["model"]]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise RequestError(400, f"no emulated model takes the columns {columns}")
        raise RequestError(400, f"columns {columns} fit several models {sorted(h.name for h in candidates)}; "
                                f"POST to /<model>/score")


# --- public server object ----------------------------------------------------------------------------

class EmulatorServer:
    """A real HTTP server on ``host:port`` (0: a free port) emulating the model endpoints.

    ``key``: the bearer key to demand (None: no auth). ``delay_seconds``: simulated model time per answer.
    ``response_shape``: ``"rows"`` (``[{"output": "<JSON string>"}]``, what the sample client sees) or ``"object"``
    (``{"output": [...]}``, the product page). ``model``: the model ``/score`` always means (default: by columns).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, key: str | None = None,
                 delay_seconds: float = 0.0, response_shape: str = "rows", model: str | None = None) -> None:
        if response_shape not in RESPONSE_SHAPES:
            raise ValueError(f"response_shape must be one of {RESPONSE_SHAPES}")
        if model is not None and model not in HANDLERS:
            raise ValueError(f"unknown model {model!r}; known: {sorted(HANDLERS)}")
        self.host = host
        self.port = port
        self._state = _State(key, delay_seconds, response_shape, model)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> "EmulatorServer":
        if self._httpd is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_cls = type("_Server", (_HTTPServer,), {"address_family": family})
        httpd = server_cls((self.host, self.port), _Handler)
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

    def model_url(self, model: str) -> str:
        return f"{self.base_url}/{model}/score"

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
        """Change ``response_shape``, ``delay_seconds`` or ``model`` (as POST /_emulator/config)."""
        return self._state.set_config(update)

    def reset(self) -> None:
        with self._state.lock:
            self._state.faults.clear()
            self._state.log.clear()
            self._state.max_in_flight = self._state.in_flight

    @property
    def requests(self) -> list[dict]:
        """The /score requests received, logged on arrival: path, model, columns, rows, digests (column -> SHA-256
        of the value in row 0, as sent: base64 for images), headers (no
        Authorization), authorization (a fingerprint, see :func:`fingerprint`), body_size, time (received, POSIX),
        status answered (None while in progress or when closed), state ("in_progress", "answered", "closed"),
        fault, elapsed_ms."""
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
                  response_shape: str = "rows", model: str | None = None) -> None:
    """Run the emulator in the foreground until SIGINT/SIGTERM (``dicom-node emulator``)."""
    server = EmulatorServer(host, port, key=key, delay_seconds=delay_seconds, response_shape=response_shape,
                            model=model).start()
    done = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        done.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _stop)
    print(f"emulator listening on {server.url} (models: {', '.join(sorted(HANDLERS))}; "
          f"auth: {'key' if key else 'none'})", flush=True)
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
    args = parser.parse_args(list(argv) if argv is not None else None)
    key = None
    if args.key_env:
        key = os.environ.get(args.key_env)
        if not key:
            parser.error(f"environment variable {args.key_env} is not set or empty")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_forever(args.host, args.port, key, delay_seconds=args.delay_seconds, response_shape=args.shape,
                  model=args.model)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
