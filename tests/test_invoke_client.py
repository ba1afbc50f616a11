"""EndpointClient against the local emulator over real HTTP: auth, retries, timeouts, concurrency, workspaces."""

from __future__ import annotations

import email.utils
import io
import logging
import threading
import time
import uuid
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from azure.core.credentials import AccessToken
from PIL import Image

from node.config import EndpointSection
from node.emulator.requestlog import fingerprint
from node.emulator.server import EmulatorServer
from node.invoke import auth as auth_mod
from node.invoke import azureml
from node.invoke.auth import TokenCache
from node.invoke.client import EndpointClient, EndpointError, parse_retry_after
from node.models.cxrreportgen.contract import build_request, parse_response

KEY = "emulator-key-0123"


def _png() -> bytes:
    arr = np.full((48, 64), 90, np.uint8)
    arr[0:16, 8:24] = 240
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


PAYLOAD = build_request(frontal_png=_png())


def unique(prefix: str = "ep") -> str:
    """Endpoint names are process-wide semaphore keys: give each test its own."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def section(url: str | None, **kw) -> EndpointSection:
    base = dict(model="cxrreportgen", url=url, auth="none", backoff_initial_seconds=0.01, backoff_max_seconds=0.05,
                timeout_seconds=5, connect_timeout_seconds=2, max_attempts=4)
    base.update(kw)
    return EndpointSection(**base)


@pytest.fixture
def emulator():
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv("TEST_EMULATOR_KEY", KEY)
    with EmulatorServer(key=KEY) as server:
        yield server


def client_for(server: EmulatorServer, **kw) -> EndpointClient:
    return EndpointClient(unique(), section(server.url, **kw))


# --- the happy path ----------------------------------------------------------------------------------

def test_score_returns_reply_with_metadata(emulator):
    emulator.configure(variants=["versioned"])  # a version header, as no real endpoint sends: the client reads it
    with EndpointClient(unique(), section(emulator.url, deployment="blue-1")) as client:
        reply = client.score(PAYLOAD, request_id="job-42_attempt")
    assert reply.status == 200 and reply.attempts == 1
    assert reply.emulated is True
    assert reply.model_version == "cxrreportgen-emulator-1"
    assert reply.request_id == "job-42_attempt"
    assert reply.server_request_id and reply.server_request_id != reply.request_id
    assert reply.deployment == "blue-1"
    assert 0 < reply.elapsed_seconds < 5
    assert parse_response(reply.body)[0].text.startswith("EMULATED")
    [entry] = emulator.requests
    assert entry["headers"]["azureml-model-deployment"] == "blue-1"
    assert entry["headers"]["x-ms-client-request-id"] == "job-42_attempt"
    assert entry["headers"]["content-type"] == "application/json"


def test_generated_request_id_and_validation(emulator):
    with client_for(emulator) as client:
        reply = client.score(PAYLOAD)
        assert len(reply.request_id) <= 40 and reply.request_id.isalnum()
        assert emulator.requests[0]["headers"]["x-ms-client-request-id"] == reply.request_id
        assert "azureml-model-deployment" not in emulator.requests[0]["headers"]
        for bad in ("x" * 41, "has space", "semi;colon", ""):
            with pytest.raises(ValueError):
                client.score(PAYLOAD, request_id=bad)


# --- retries -----------------------------------------------------------------------------------------

def test_429_retry_after_is_honoured(emulator):
    emulator.script_faults([{"status": 429, "retry_after": 1}])
    with client_for(emulator) as client:
        started = time.monotonic()
        reply = client.score(PAYLOAD, request_id="same-id")
        waited = time.monotonic() - started
    assert reply.attempts == 2 and reply.status == 200
    assert waited >= 1.0  # backoff is 0.01 s: only Retry-After explains a wait this long
    first, second = emulator.requests
    assert second["time"] - first["time"] >= 0.99
    # one id across the retries of one call
    assert first["headers"]["x-ms-client-request-id"] == second["headers"]["x-ms-client-request-id"] == "same-id"


def test_retry_after_ms_is_honoured(emulator):
    emulator.script_faults([{"status": 503, "retry_after_ms": 400}])
    with client_for(emulator) as client:
        started = time.monotonic()
        assert client.score(PAYLOAD).attempts == 2
        assert time.monotonic() - started >= 0.4


def test_parse_retry_after_forms():
    h = httpx.Headers({"Retry-After": "3"})
    assert parse_retry_after(h) == 3.0
    now = time.time()
    date = email.utils.formatdate(now + 10, usegmt=True)
    assert 8 <= parse_retry_after(httpx.Headers({"Retry-After": date}), now=now) <= 10.5
    assert parse_retry_after(httpx.Headers({"Retry-After": email.utils.formatdate(now - 60, usegmt=True)})) == 0.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250", "Retry-After": "0"})) == 0.25
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    assert parse_retry_after(httpx.Headers()) is None


def test_500_and_503_retried_then_success(emulator):
    emulator.script_faults([{"status": 500}, {"status": 503}, {"status": 502}])
    with client_for(emulator) as client:
        reply = client.score(PAYLOAD)
    assert reply.attempts == 4 and reply.status == 200
    assert [e["status"] for e in emulator.requests] == [500, 503, 502, 200]


@pytest.mark.parametrize("fault, cause, permanent", [
    ({"status": 424, "model_status": 400, "model_reason": "model_error"}, "model-input", True),
    ({"status": 424, "model_status": 413, "model_reason": "model_error"}, "model-input", True),
    ({"status": 424, "model_status": 507, "model_reason": "cuda_oom"}, "model-error", False),
    ({"status": 424, "headers": {"ms-azureml-model-error-statuscode": "garbage"}}, "model-error", False),
    ({"status": 408}, "timeout", False),
])
def test_408_and_424_are_left_to_the_job_by_cause(emulator, fault, cause, permanent):
    """One call, never retried by the client: the job decides by cause (node/flow/circuit.py). A 424's inner
    status and reason are kept; an inner 4xx is this input's fault (permanent), an inner 5xx the model's."""
    emulator.script_faults([fault, {"status": 500, "repeat": 3}])  # a retry would meet these
    with client_for(emulator) as client:
        with pytest.raises(EndpointError) as info:
            client.score(PAYLOAD)
    err = info.value
    assert err.cause == cause and err.permanent is permanent and err.attempts == 1, repr(err)
    assert [e["status"] for e in emulator.requests] == [fault["status"]]
    if fault["status"] == 424:
        model_status = fault.get("model_status")
        assert err.model_status == model_status
        if model_status:
            assert str(model_status) in err.message and fault["model_reason"] in err.message
            assert err.model_reason == fault["model_reason"]
    else:
        assert "request_timeout_ms" in err.message


def test_a_model_refusal_is_not_an_endpoint_failure(emulator):
    """A 424 the model answered for a refused input is one call and names the model's own status and reason."""
    emulator.configure(max_input_pixels=100)
    with client_for(emulator) as client:
        with pytest.raises(EndpointError) as info:
            client.score(PAYLOAD)
    err = info.value
    assert (err.status, err.model_status, err.cause, err.permanent) == (424, 413, "model-input", True)
    assert "larger than this model takes" in err.message and "the model refused this input" in err.message
    assert len(emulator.requests) == 1


@pytest.mark.parametrize("status", [400, 403, 404, 413])
def test_other_4xx_not_retried(emulator, status):
    emulator.script_faults([{"status": status, "message": f"model says no ({status})"}])
    with client_for(emulator) as client:
        with pytest.raises(EndpointError) as info:
            client.score(PAYLOAD, request_id="rid-4xx")
    err = info.value
    assert err.permanent and err.status == status and err.attempts == 1 and err.request_id == "rid-4xx"
    assert f"model says no ({status})" in err.message
    assert len(emulator.requests) == 1


def test_long_error_body_is_truncated(emulator):
    emulator.script_faults([{"status": 400, "body": {"message": "x" * 5000}}])
    with client_for(emulator) as client:
        with pytest.raises(EndpointError) as info:
            client.score(PAYLOAD)
    assert info.value.permanent and len(info.value.message) < 700


def test_retries_exhausted_is_not_permanent(emulator):
    emulator.script_faults([{"status": 503, "repeat": 3}])
    with client_for(emulator, max_attempts=3) as client:
        with pytest.raises(EndpointError) as info:
            client.score(PAYLOAD)
    err = info.value
    assert not err.permanent and err.status == 503 and err.attempts == 3
    assert "503" in err.message and "3 attempts" in err.message
    assert len(emulator.requests) == 3


def test_stall_beyond_read_timeout_is_retried(emulator):
    emulator.script_faults([{"stall_seconds": 0.8}])
    with client_for(emulator, timeout_seconds=0.25) as client:
        reply = client.score(PAYLOAD)
    assert reply.attempts == 2 and reply.status == 200
    assert reply.elapsed_seconds < 0.25  # the successful call's own time, not the whole score()


def test_connection_closed_is_retried(emulator):
    emulator.script_faults([{"close": True}, {"close": True}])
    with client_for(emulator) as client:
        reply = client.score(PAYLOAD)
    assert reply.attempts == 3
    assert [e["status"] for e in emulator.requests] == [None, None, 200]


def test_connection_refused_exhausts_retries():
    with EmulatorServer() as server:
        url = server.url
    with EndpointClient(unique(), section(url, max_attempts=2)) as client:
        with pytest.raises(EndpointError) as info:
            client.score(PAYLOAD)
    assert not info.value.permanent and info.value.status is None and info.value.attempts == 2
    assert "ConnectError" in info.value.message


def test_malformed_json_is_permanent(emulator):
    emulator.script_faults([{"malformed": True}])
    with client_for(emulator) as client:
        with pytest.raises(EndpointError) as info:
            client.score(PAYLOAD)
    err = info.value
    assert err.permanent and err.status == 200 and err.attempts == 1
    assert "not valid JSON" in err.message


def test_very_long_retry_after_fails_fast_for_the_scheduler(emulator):
    emulator.script_faults([{"status": 429, "retry_after": 3600}])
    with client_for(emulator) as client:
        started = time.monotonic()
        with pytest.raises(EndpointError) as info:
            client.score(PAYLOAD)
    assert time.monotonic() - started < 2
    assert not info.value.permanent and info.value.retry_after == 3600 and info.value.attempts == 1


# --- auth --------------------------------------------------------------------------------------------

def test_key_auth(keyed, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    name = unique()
    with EndpointClient(name, section(keyed.url, auth="key", key_env="TEST_EMULATOR_KEY")) as client:
        reply = client.score(PAYLOAD)
    assert reply.status == 200
    assert keyed.requests[-1]["authorization"] == fingerprint(f"Bearer {KEY}")
    # wrong key: 401, permanent, not retried
    monkeypatch.setenv("WRONG_KEY", "not-the-key")
    with EndpointClient(unique(), section(keyed.url, auth="key", key_env="WRONG_KEY")) as client:
        with pytest.raises(EndpointError) as info:
            client.score(PAYLOAD)
    assert info.value.status == 401 and info.value.permanent and info.value.attempts == 1
    # no key sent at all (auth: none against a keyed endpoint)
    with EndpointClient(unique(), section(keyed.url, auth="none")) as client:
        with pytest.raises(EndpointError) as info:
            client.score(PAYLOAD)
    assert info.value.status == 401 and info.value.permanent
    # key variable missing: a permanent configuration error, no request made
    before = len(keyed.requests)
    with EndpointClient(unique(), section(keyed.url, auth="key", key_env="NO_SUCH_VARIABLE_X")) as client:
        with pytest.raises(EndpointError) as info:
            client.score(PAYLOAD)
    assert info.value.permanent and "NO_SUCH_VARIABLE_X" in info.value.message
    assert len(keyed.requests) == before
    # neither the key nor the payload is ever logged
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert KEY not in logged and "not-the-key" not in logged
    assert PAYLOAD["input_data"]["data"][0][0][:40] not in logged
    assert name in logged


class FakeCredential:
    def __init__(self, lifetime: float = 3600.0) -> None:
        self.calls: list[tuple] = []
        self.lifetime = lifetime
        self.lock = threading.Lock()

    def get_token(self, *scopes, **kwargs):
        with self.lock:
            self.calls.append(scopes)
            n = len(self.calls)
        return AccessToken(f"entra-token-{n}", int(auth_mod._now() + self.lifetime))


def test_entra_token_cached_and_refreshed(emulator, monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr(auth_mod, "_now", lambda: clock[0])
    cred = FakeCredential(lifetime=3600)
    name = unique()
    cfg = section(emulator.url, auth="entra")
    with EndpointClient(name, cfg, credential=cred) as a, EndpointClient(name, cfg, credential=cred) as b:
        for client in (a, b, a):
            client.score(PAYLOAD)
        assert len(cred.calls) == 1  # one token for both clients
        assert cred.calls[0] == ("https://ml.azure.com/.default",)
        clock[0] += 3600 - 301  # still more than 5 minutes left
        a.score(PAYLOAD)
        assert len(cred.calls) == 1
        clock[0] += 2  # now within 5 minutes of expiry: refreshed
        b.score(PAYLOAD)
        assert len(cred.calls) == 2
        a.score(PAYLOAD)
        assert len(cred.calls) == 2
    sent = [e["authorization"] for e in emulator.requests]
    assert sent[:4] == [fingerprint("Bearer entra-token-1")] * 4
    assert sent[4:] == [fingerprint("Bearer entra-token-2")] * 2


def test_token_cache_is_thread_safe():
    calls = []

    def fetch():
        calls.append(1)
        time.sleep(0.05)
        return AccessToken("t", int(time.time() + 3600))

    cache = TokenCache(fetch)
    threads = [threading.Thread(target=cache.get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    cache.invalidate()
    assert cache.get() == "t" and len(calls) == 2


def test_entra_credential_failure_is_reported(emulator):
    class Unavailable(Exception):
        pass

    Unavailable.__name__ = "CredentialUnavailableError"

    class Broken:
        def get_token(self, *scopes, **kw):
            raise Unavailable("no managed identity here")

    with EndpointClient(unique(), section(emulator.url, auth="entra"), credential=Broken()) as client:
        with pytest.raises(EndpointError) as info:
            client.score(PAYLOAD)
    assert info.value.permanent and "no managed identity" in info.value.message
    assert emulator.requests == []


# --- concurrency -------------------------------------------------------------------------------------

def _parallel(clients, n):
    errors, replies = [], []

    def run(client):
        try:
            replies.append(client.score(PAYLOAD))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(clients[i % len(clients)],)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    return replies


def test_max_concurrency_across_clients():
    with EmulatorServer(delay_seconds=0.15) as server:
        name = unique()
        cfg = section(server.url, max_concurrency=2)
        clients = [EndpointClient(name, cfg), EndpointClient(name, cfg), EndpointClient(name, cfg)]
        try:
            replies = _parallel(clients, 6)
        finally:
            for c in clients:
                c.close()
        assert len(replies) == 6
        assert server.max_in_flight == 2
        # a different endpoint name has its own limit
        other = [EndpointClient(unique(), section(server.url, max_concurrency=6))]
        server.reset()
        _parallel(other, 6)
        other[0].close()
        assert server.max_in_flight > 2


def test_semaphore_not_held_while_sleeping(emulator):
    """max_concurrency=1: a call waiting out a Retry-After lets another call through meanwhile."""
    emulator.script_faults([{"status": 429, "retry_after": 0.6}])
    name = unique()
    cfg = section(emulator.url, max_concurrency=1)
    done: dict[str, float] = {}
    with EndpointClient(name, cfg) as a, EndpointClient(name, cfg) as b:
        t0 = time.monotonic()
        ta = threading.Thread(target=lambda: (a.score(PAYLOAD), done.__setitem__("a", time.monotonic() - t0)))
        ta.start()
        while not emulator.requests or emulator.requests[0]["status"] != 429:  # a got its 429 and is sleeping
            time.sleep(0.005)
        b.score(PAYLOAD)
        done["b"] = time.monotonic() - t0
        ta.join(5)
    assert done["b"] < 0.5 < done["a"]


# --- workspace endpoints (azure-ai-ml look-ups, faked) -----------------------------------------------

class FakeOnlineEndpoints:
    def __init__(self, scoring_uri: str, keys) -> None:
        self.scoring_uri = scoring_uri
        self.keys = keys
        self.get_calls = 0
        self.key_calls = 0

    def get(self, name):
        self.get_calls += 1
        return SimpleNamespace(name=name, scoring_uri=self.scoring_uri, auth_mode="key")

    def get_keys(self, name):
        self.key_calls += 1
        return self.keys() if callable(self.keys) else self.keys

    def invoke(self, *a, **kw):  # pragma: no cover - must never be used on the hot path
        raise AssertionError("online_endpoints.invoke must not be used")


def workspace_section(endpoint_name: str, **kw) -> EndpointSection:
    return section(None, subscription_id="00000000-0000-0000-0000-000000000000", resource_group="rg",
                   workspace="ws", endpoint_name=endpoint_name, **kw)


def test_workspace_endpoint_key_lookup_cached(keyed):
    fake = SimpleNamespace(online_endpoints=FakeOnlineEndpoints(keyed.url, SimpleNamespace(primary_key=KEY,
                                                                                         secondary_key="k2")))
    cfg = workspace_section(unique("cxr"), auth="key")
    name = unique()
    try:
        with EndpointClient(name, cfg, ml_client=fake, credential=FakeCredential()) as c1:
            assert c1.score(PAYLOAD).status == 200
            assert c1.score(PAYLOAD).status == 200
            assert c1.url == keyed.url
        with EndpointClient(name, cfg) as c2:  # a second client reuses the process-wide lookup
            assert c2.score(PAYLOAD).status == 200
        assert fake.online_endpoints.get_calls == 1 and fake.online_endpoints.key_calls == 1
        assert {e["authorization"] for e in keyed.requests} == {fingerprint(f"Bearer {KEY}")}
    finally:
        azureml.clear_cache()


def test_workspace_endpoint_aad_token_refreshed(emulator, monkeypatch):
    clock = [2_000_000.0]
    monkeypatch.setattr(auth_mod, "_now", lambda: clock[0])
    issued = []

    def keys():
        issued.append(1)
        return SimpleNamespace(access_token=f"aad-{len(issued)}", expiry_time_utc=clock[0] + 3600)

    fake = SimpleNamespace(online_endpoints=FakeOnlineEndpoints(emulator.url, keys))
    cfg = workspace_section(unique("cxr"), auth="key")
    try:
        with EndpointClient(unique(), cfg, ml_client=fake) as client:
            client.score(PAYLOAD)
            client.score(PAYLOAD)
            clock[0] += 3400
            client.score(PAYLOAD)
        assert len(issued) == 2
        assert [e["authorization"] for e in emulator.requests] == [
            fingerprint("Bearer aad-1"), fingerprint("Bearer aad-1"), fingerprint("Bearer aad-2")]
    finally:
        azureml.clear_cache()


def test_workspace_entra_and_lookup_failure(emulator):
    cred = FakeCredential()
    fake = SimpleNamespace(online_endpoints=FakeOnlineEndpoints(emulator.url, None))
    try:
        with EndpointClient(unique(), workspace_section(unique("cxr"), auth="entra"), ml_client=fake,
                            credential=cred) as client:
            client.score(PAYLOAD)
        assert fake.online_endpoints.key_calls == 0 and len(cred.calls) == 1

        class NotFound(Exception):
            status_code = 404

        class Failing:
            def get(self, name):
                raise NotFound(f"endpoint {name} not found")

        with EndpointClient(unique(), workspace_section(unique("gone")),
                            ml_client=SimpleNamespace(online_endpoints=Failing())) as client:
            with pytest.raises(EndpointError) as info:
                client.score(PAYLOAD)
        assert info.value.permanent and "not found" in info.value.message
    finally:
        azureml.clear_cache()


def test_injected_transport_is_used():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"output": []}, headers={"x-request-id": "srv-1"})

    cfg = section("https://example.invalid/score")
    with EndpointClient(unique(), cfg, transport=httpx.MockTransport(handler)) as client:
        reply = client.score({"input_data": {}})
    assert reply.body == {"output": []} and not reply.emulated and reply.model_version is None
    assert reply.server_request_id == "srv-1"
    assert seen[0].headers["content-type"] == "application/json"
    assert "authorization" not in seen[0].headers
