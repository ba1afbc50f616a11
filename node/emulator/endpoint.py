"""The emulator's HTTP request handling: authentication, the /score scoring path with its faults, the
/_emulator control routes, and replies with the endpoint's headers."""

from __future__ import annotations

import hmac
import json
import logging
import socket
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from node.emulator import EMULATOR_HEADER_VALUE, ModelHandler, RequestError
from node.emulator.faults import status_fault, validate_faults
from node.emulator.handlers import HANDLERS
from node.emulator.inspect import pixels_of
from node.emulator.requestlog import new_entry, record_input, record_reply
from node.emulator.state import EmulatorState
from node.emulator.variants import merged, parse_query

log = logging.getLogger(__name__)

__all__ = ["GENERIC_MODEL_VERSION", "EndpointHTTPServer", "EndpointRequestHandler"]

GENERIC_MODEL_VERSION = "emulator-1"
#: The reason header of a 424 (the container's status goes in ms-azureml-model-error-statuscode).
MODEL_ERROR_REASON = "model_error"


class EndpointHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that tracks its open connections in ``state`` so a stop can close them."""

    daemon_threads = True
    allow_reuse_address = True
    state: EmulatorState

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        # track connections so stop() can close them
        with self.state.lock:
            self.state.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self.state.lock:
            self.state.connections.discard(request)
        super().shutdown_request(request)


class EndpointRequestHandler(BaseHTTPRequestHandler):
    """One HTTP connection to the emulated endpoint: the routes of :mod:`node.emulator.server`."""

    protocol_version = "HTTP/1.1"
    server_version = "dicom-ai-node-emulator"
    sys_version = ""
    timeout = 120  # an idle keep-alive connection is dropped after this
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: EndpointHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)

    # --- plumbing ------------------------------------------------------------------------------------
    @property
    def state(self) -> EmulatorState:
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
              extra: dict[str, str] | None = None, content_type: str = "application/json",
              version_header: bool = False) -> None:
        try:
            self._write(status, body, started, model_version if version_header else "", extra, content_type)
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
        if model_version != "":  # only with the `versioned` variant: no real endpoint sends a version header
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

    def _logged_reply(self, entry: dict[str, Any], obj: Any) -> bytes:
        """``obj`` as the JSON body to answer, kept in the request's log entry first (``reply``)."""
        body = json.dumps(obj).encode("utf-8")
        with self.state.lock:
            record_reply(entry, body)
        return body

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
            try:
                _, requested = parse_query(self.path)
            except ValueError as exc:
                self._send_message(400, f"emulator: {exc}", started=started)
                return
            self._score(path, raw, started, received, requested)
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
                state.reset()
                self._send_json(200, {"reset": True}, started=started)
            elif path == "/_emulator/config":
                self._send_json(200, state.set_config(doc), started=started)
            else:
                self._send_message(404, f"no route {path}", started=started)
        except ValueError as exc:
            self._send_message(400, str(exc), started=started)

    # --- scoring -------------------------------------------------------------------------------------
    def _score(self, path: str, raw: bytes, started: float, received: float, requested: list[str]) -> None:
        state = self.state
        entry = new_entry(path, self.headers, raw, received)
        state.log_request(entry)  # logged on arrival: a test can see a call that is still stalling
        doc: Any = None
        try:
            doc = json.loads(raw)
        except ValueError:
            pass
        input_data = doc.get("input_data") if isinstance(doc, dict) else None
        record_input(entry, input_data)

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
        variants = merged(config.get("variants") or [], requested)
        send_version = "versioned" in variants  # no Microsoft source shows a version header: off by default
        with state.lock:
            entry["variants"] = sorted(variants)
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
                body = self._logged_reply(entry, fault["body"])
                leave()
                finish(status)
                self._send(status, body, started=started, model_version=model_version, extra=extra,
                           version_header=send_version)
                return
            if fault.get("malformed"):
                leave()
                finish(200)
                self._send(200, b'{"output": [["EMULATED: truncated', started=started, model_version=model_version,
                           extra=extra)
                return
            if "status" in fault and fault["status"] >= 300:
                status, message = status_fault(fault, extra)
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
            _check_input_size(entry.get("payload"), config.get("max_input_pixels"))
            options = dict(config)
            options["variants"] = variants
            options["params"] = doc.get("params") if isinstance(doc.get("params"), dict) else {}
            if fault.get("shape"):
                options["response_shape"] = fault["shape"]
            result = handler.score(input_data, options)
            status = int(fault.get("status", 200))
            body = self._logged_reply(entry, result)
            leave()
            finish(status)
            self._send(status, body, started=started, model_version=model_version, extra=extra,
                       version_header=send_version)
        except RequestError as exc:
            leave()
            if exc.status == 404:  # the emulator's own routing (/<model>/score of no model): the gateway's answer
                finish(404)
                self._send_message(404, exc.message, started=started)
                return
            # Everything else is the model container's answer: Azure ML turns a non-200 into 424 with its status
            finish(424)
            self._send_message(424, exc.message, started=started, version_header=send_version,
                               extra={"ms-azureml-model-error-statuscode": str(exc.status),
                                      "ms-azureml-model-error-reason": MODEL_ERROR_REASON})
        except Exception as exc:  # a bug in a handler: the container's 500, which Azure ML answers with 424
            log.exception("emulator: handler failed")
            leave()
            finish(424)
            self._send_message(424, f"emulator error: {type(exc).__name__}", started=started,
                               extra={"ms-azureml-model-error-statuscode": "500",
                                      "ms-azureml-model-error-reason": MODEL_ERROR_REASON})
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



def _check_input_size(payload: Any, limit: Any) -> None:
    """The ``max_input_pixels`` setting: an image or volume larger than the model takes (a GPU's memory) is refused
    with 413, as a container that checks its input would (the server answers 424 with that status)."""
    if not limit or not isinstance(payload, list):
        return
    for i, row in enumerate(payload):
        for column, desc in (row or {}).items():
            n = pixels_of(desc) if isinstance(desc, dict) else 0
            if n > int(limit):
                raise RequestError(413, f"row {i}: {column} of shape {desc.get('shape')} ({n} pixels) is larger "
                                        f"than this model takes ({int(limit)} pixels)")
