"""An EHR for the tests: an HTTP FHIR R4 endpoint that takes transaction Bundles, validates each one with two
validators that share no code with the node, and applies them with the FHIR spec's transaction semantics.

No validating FHIR R4 server installs offline here (HAPI is Maven/Docker), so this receiver does what the tests
need from one, and only that:

* validation: ``fhirclient``'s R4 (4.0.1) models in strict mode (types, unknown and missing elements) and npm's
  ``fhir`` package (FHIR.js: required elements, value sets, allowed reference targets; its "Unexpected property"
  warnings count as errors). A Bundle failing either is answered 400 with an OperationOutcome and applies nothing;
* transactions (FHIR R4 3.1.0.11 / 3.1.0.8.2): all or nothing; ``POST`` with ``ifNoneExist`` (conditional create:
  no match creates, one match is answered 200 and not created again, several are 412); ``PUT Type?search``
  (conditional update: no match creates, one updates it, several are 412); ``PUT Type/id`` (update or create);
  references to an entry's ``fullUrl`` are rewritten to the resource's ``Type/id``; searches understand
  ``identifier=system|value``. The answer is a ``transaction-response`` Bundle;
* faults, scripted per request: ``500``, ``429``, ``401``, ``400`` (answered without applying), ``slow:N``
  (applied and committed, answered N seconds later: a node killed meanwhile never sees the answer), ``drop``
  (applied, connection closed without an answer);
* credentials, when asked for (``FhirReceiver(basic=(user, password))`` or ``FhirReceiver(bearer=token)``): a
  request without the right ``Authorization`` header is answered 401 with ``WWW-Authenticate`` and an
  OperationOutcome, before anything else is read or applied, as a FHIR server behind OAuth or basic auth does.

The node's Bundles are counted here: ``posts`` (every request), ``bundles`` (the valid ones), ``store`` (resources
by type and id, with their version), ``invalid`` (what a validator said), ``refused`` (requests answered 401 for
their credentials: the ``Authorization`` header each one carried).
"""

from __future__ import annotations

import base64
import copy
import hmac
import json
import subprocess
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from fhirclient.models import bundle as fc_bundle
from fhirclient.models.fhirabstractbase import FHIRValidationError

from .data import REPO
from .ports import HOST

NPM_DIR = REPO / ".cache" / "npm"
BAD_WARNINGS = ("Unexpected property",)


class JsValidator:
    """The npm ``fhir`` validator in one long-lived node process (tests/support/fhir_validate.js)."""

    def __init__(self) -> None:
        if not (NPM_DIR / "node_modules" / "fhir").is_dir():
            pytest.fail(f"npm package fhir not found in {NPM_DIR}: run scripts/setup.sh (it installs fhir@4.12.0)",
                        pytrace=False)
        script = REPO / "tests" / "support" / "fhir_validate.js"
        self.proc = subprocess.Popen(["node", str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={"NODE_PATH": str(NPM_DIR / "node_modules"), "PATH": "/usr/bin:/bin:/usr/local/bin"})
        self.lock = threading.Lock()

    def problems(self, resource: dict[str, Any]) -> list[str]:
        with self.lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(resource) + "\n")
            self.proc.stdin.flush()
            answer = json.loads(self.proc.stdout.readline())
        return [f"{m.get('location')}: {m.get('message')}" for m in answer.get("messages", [])
                if m.get("severity") == "error" or any(w in str(m.get("message")) for w in BAD_WARNINGS)]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def validate(bundle: dict[str, Any], js: JsValidator) -> list[str]:
    """Both validators' errors (empty: valid)."""
    errors: list[str] = []
    try:
        fc_bundle.Bundle(copy.deepcopy(bundle), strict=True)
    except FHIRValidationError as exc:
        errors.append(f"fhirclient R4: {exc}")
    except Exception as exc:  # noqa: BLE001 - any failure to read it is an invalid Bundle
        errors.append(f"fhirclient R4: {type(exc).__name__}: {exc}")
    errors += [f"fhir.js R4: {p}" for p in js.problems(bundle)]
    return errors


class Conflict(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class FhirReceiver:
    """``with FhirReceiver() as ehr:`` a FHIR base URL ``ehr.url`` on a free loopback port."""

    def __init__(self, *, basic: tuple[str, str] | None = None, bearer: str | None = None) -> None:
        if basic is not None and bearer is not None:
            raise ValueError("one kind of credential at a time")
        self.expected = (f"Basic {base64.b64encode(f'{basic[0]}:{basic[1]}'.encode()).decode()}" if basic
                         else f"Bearer {bearer}" if bearer else None)
        self.challenge = 'Basic realm="fhir"' if basic else 'Bearer realm="fhir", error="invalid_token"'
        self.refused: list[str | None] = []
        self.js = JsValidator()
        self.store: dict[str, dict[str, dict[str, Any]]] = {}
        self.posts: list[dict[str, Any]] = []
        self.bundles: list[dict[str, Any]] = []
        self.invalid: list[tuple[dict[str, Any], list[str]]] = []
        self._script: deque[str] = deque()
        self._lock = threading.Lock()
        self._next_id = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                receiver._post(self)

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{HOST}:{self.server.server_address[1]}/fhir"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="ehr")

    def __enter__(self) -> "FhirReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.js.close()

    def script(self, *behaviours: str) -> None:
        with self._lock:
            self._script.extend(behaviours)

    # the HTTP side ---------------------------------------------------------------------------------------------
    def _post(self, req: BaseHTTPRequestHandler) -> None:
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        if self.expected is not None and not hmac.compare_digest(
                (req.headers.get("Authorization") or "").encode(), self.expected.encode()):
            with self._lock:
                self.refused.append(req.headers.get("Authorization"))
            return self._answer(req, 401, _outcome("missing or wrong credentials", code="login"),
                                {"WWW-Authenticate": self.challenge})
        with self._lock:
            mode = self._script.popleft() if self._script else "ok"
            self.posts.append({"mode": mode, "headers": dict(req.headers), "at": time.time()})
        if mode in ("500", "429", "401", "400"):
            return self._answer(req, int(mode), _outcome(f"scripted {mode}"))
        try:
            bundle = json.loads(body)
        except ValueError:
            return self._answer(req, 400, _outcome("not JSON"))
        errors = validate(bundle, self.js)
        if errors:
            with self._lock:
                self.invalid.append((bundle, errors))
            return self._answer(req, 400, _outcome("; ".join(errors)[:4000]))
        if bundle.get("type") != "transaction":
            return self._answer(req, 400, _outcome("only transaction Bundles are taken here"))
        try:
            response = self.apply(bundle)
        except Conflict as exc:
            return self._answer(req, exc.status, _outcome(str(exc)))
        if mode.startswith("slow:"):
            time.sleep(float(mode.split(":", 1)[1]))
        if mode == "drop":
            req.close_connection = True
            req.connection.close()
            return None
        return self._answer(req, 200, response)

    def _answer(self, req: BaseHTTPRequestHandler, status: int, body: dict[str, Any],
                headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            req.send_response(status)
            req.send_header("Content-Type", "application/fhir+json")
            req.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                req.send_header(name, value)
            req.end_headers()
            req.wfile.write(data)
        except OSError:  # the client went away (killed)
            pass

    # the transaction -------------------------------------------------------------------------------------------
    def search(self, store: dict[str, dict[str, dict[str, Any]]], rtype: str, query: str) -> list[str]:
        """Ids of ``rtype`` resources matching ``identifier=system|value`` (the only search the node uses)."""
        params = parse_qs(query, keep_blank_values=True)
        wanted = params.get("identifier", [""])[0]
        system, _, value = wanted.partition("|")
        return [rid for rid, r in store.get(rtype, {}).items()
                if any(i.get("system") == system and i.get("value") == value for i in r.get("identifier", []))]

    def apply(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """Apply a transaction (all or nothing) and return its transaction-response."""
        with self._lock:
            store = copy.deepcopy(self.store)
            resolved: dict[str, str] = {}
            answers: list[dict[str, Any] | None] = [None] * len(bundle.get("entry", []))
            entries = list(enumerate(bundle.get("entry", [])))
            order = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3}
            entries.sort(key=lambda e: order.get(e[1]["request"]["method"], 9))
            for i, entry in entries:
                req, res = entry["request"], copy.deepcopy(entry.get("resource") or {})
                method, url = req["method"], req["url"]
                rtype = url.split("?")[0].split("/")[0]
                if method == "POST":
                    found = self.search(store, rtype, req["ifNoneExist"]) if req.get("ifNoneExist") else []
                    if len(found) > 1:
                        raise Conflict(412, f"{rtype}?{req['ifNoneExist']}: {len(found)} matches")
                    if found:
                        rid, status = found[0], "200 OK"
                    else:
                        rid, status = self._create(store, rtype, res), "201 Created"
                elif method == "PUT" and "?" in url:
                    found = self.search(store, rtype, url.split("?", 1)[1])
                    if len(found) > 1:
                        raise Conflict(412, f"{url}: {len(found)} matches")
                    if found:
                        rid, status = found[0], "200 OK"
                        self._update(store, rtype, rid, res)
                    else:
                        rid, status = self._create(store, rtype, res), "201 Created"
                elif method == "PUT":
                    rid = url.split("/")[1]
                    status = "200 OK" if rid in store.get(rtype, {}) else "201 Created"
                    self._update(store, rtype, rid, res)
                else:
                    raise Conflict(400, f"method {method} is not supported here")
                resolved[entry["fullUrl"]] = f"{rtype}/{rid}"
                answers[i] = {"response": {"status": status, "location":
                                           f"{rtype}/{rid}/_history/{store[rtype][rid]['meta']['versionId']}"}}
            for rtype, resources in store.items():  # fullUrl references -> Type/id (in this transaction's writes)
                for rid, res in resources.items():
                    resources[rid] = _rewrite(res, resolved)
            self.store = store
            self.bundles.append(bundle)
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}

    def _create(self, store: dict, rtype: str, res: dict[str, Any]) -> str:
        self._next_id += 1
        rid = f"{rtype.lower()}-{self._next_id}"
        res["id"] = rid
        res["meta"] = {**res.get("meta", {}), "versionId": "1"}
        store.setdefault(rtype, {})[rid] = res
        return rid

    def _update(self, store: dict, rtype: str, rid: str, res: dict[str, Any]) -> None:
        old = store.get(rtype, {}).get(rid)
        version = int(old["meta"]["versionId"]) + 1 if old else 1
        res["id"] = rid
        res["meta"] = {**res.get("meta", {}), "versionId": str(version)}
        store.setdefault(rtype, {})[rid] = res

    # what the tests read ---------------------------------------------------------------------------------------
    def resources(self, rtype: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(copy.deepcopy(self.store.get(rtype, {})).values())

    def wait_for(self, predicate: Any, timeout: float = 60.0, what: str = "the EHR") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate(self)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {len(self.posts)} POST(s), "
                             f"{len(self.bundles)} applied, invalid: {[e for _, e in self.invalid][:3]}")


def _rewrite(value: Any, resolved: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: (resolved.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, resolved))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, resolved) for v in value]
    return value


def _outcome(text: str, code: str = "processing") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
