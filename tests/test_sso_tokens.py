"""Machines with bearer JWTs (``http.oidc``): client credentials tokens of a real identity provider (oidc-provider,
tests/support/oidc_provider.py) against the HTTP side's app in process; the static token beside them.

Expected values come from outside the code under test: the tokens are the provider's own (their roles are what the
provider was told each client holds), the forged ones are signed here with keys the provider never published, the
STOW-RS upload is counted in the node's database only after the provider's token let it in, and every refusal is
looked up in the audit trail.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import insert, select
from starlette.testclient import TestClient

from node.config import parse_config
from node.dicomweb import multipart
from node.http import tokens
from node.http.app import build_app
from node.http.context import HttpContext
from node.ops.audit import read_events
from node.store.schema import jobs, outbox, results
from node.store.spool import Spool
from node.store.state import Store

from support.oidc_provider import Machine, OidcProvider, User
from support.studies import derive_cxr_study
from support.tlscerts import make_ca

pytestmark = [pytest.mark.security, pytest.mark.slow]

AUDIENCE = "api://dicom-node"
STATIC = "static-token-for-simple-setups-0123"
WEB_CLIENT = {"client_id": "dicom-node", "client_secret": "web-secret",
              "redirect_uris": ["https://dicom-node.hospital.test/auth/callback"]}
ROLE_MAP = {"DicomNode.Viewer": "viewer", "DicomNode.PhiViewer": "phi-viewer", "DicomNode.Operator": "operator",
            "DicomNode.Uploader": "uploader"}


class Site:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        ca = make_ca(tmp / "pki", "test-ca")
        self.ca = ca
        self.server = ca.issue(tmp / "pki", "localhost", server=True)
        self.idp = OidcProvider(
            tmp / "idp", self.server.cert, self.server.key, ca.cert,
            machines={"ops-bot": Machine("ops-secret", ["DicomNode.Operator"]),
                      "pacs-push": Machine("push-secret", ["DicomNode.Uploader"]),
                      "dashboard": Machine("dash-secret", ["DicomNode.Viewer"]),
                      "nobody-bot": Machine("nobody-secret", ["Something.Else"]),
                      "brief-bot": Machine("brief-secret", ["DicomNode.Operator"], ttl=1)},
            resources={AUDIENCE: AUDIENCE, "api://another-api": "api://another-api"}, default_resource=AUDIENCE,
            users={"otto": User("pw-otto", "Otto Operator", ["DicomNode.Operator"])}, web_clients=[WEB_CLIENT])
        self.idp.start()
        self.cfg = parse_config({
            "node": {"storage_dir": str(tmp / "var"), "min_free_disk_mb": 0},
            "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}},
            "http": {"port": 18099, "token_env": "SSO_TOKENS_TEST_STATIC",
                     "oidc": {"issuer": self.idp.issuer, "client_id": "dicom-node", "audience": AUDIENCE,
                              "ca_file": str(ca.cert), "role_map": ROLE_MAP, "clock_skew_seconds": 0,
                              "public_url": "https://dicom-node.hospital.test"}}}, tmp / "n.yaml", tmp)
        self.spool = Spool(self.cfg.storage_dir)
        self.spool.create()
        self.store = Store.open(self.cfg.database_url)  # module-wide: every app of the module gets this one
        t = time.time()
        with self.store.engine.begin() as conn:  # one parked result: what retry puts back
            conn.execute(insert(jobs).values(id=1, job_uid="2.25.1", study_uid="1.2.3.4", study_version=1,
                                             rule_name="r", endpoint="cxr", series_uids="[]", state="done",
                                             attempts=1, next_attempt_at=t, created_at=t, updated_at=t))
            conn.execute(insert(results).values(sop_instance_uid="1.2.3.4.5", job_id=1, study_uid="1.2.3.4",
                                                series_uid="1.2.3.4.6", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                                                kind="sr", path=str(tmp / "none.dcm"), created_at=t))
            conn.execute(insert(outbox).values(result_uid="1.2.3.4.5", destination="pacs", state="parked",
                                               attempts=20, next_attempt_at=t, last_status="0xA700",
                                               error="gave up", created_at=t))

    def client(self) -> TestClient:
        ctx = HttpContext(cfg=self.cfg, store=self.store, spool=self.spool)
        return TestClient(build_app(self.cfg, ctx=ctx), base_url="https://testserver")

    def events(self, name: str) -> list[dict]:
        return [e for e in read_events(self.cfg.audit_path) if e["event"] == name]

    def parked(self) -> int:
        with self.store.engine.connect() as conn:
            return len(conn.execute(select(outbox.c.id).where(outbox.c.state == "parked")).all())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    mp = pytest.MonkeyPatch()
    mp.setenv("SSO_TOKENS_TEST_STATIC", STATIC)
    s = Site(tmp_path_factory.mktemp("sso-tokens"))
    try:
        yield s
    finally:
        s.idp.stop()
        mp.undo()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _hs256(header: dict, claims: dict, secret: bytes) -> str:
    """A JWT signed with a shared secret, by hand (joserfc rightly refuses a public key as an HMAC secret)."""
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _parts(token: str) -> tuple[dict, dict, str]:
    h, p, s = token.split(".")
    return (json.loads(base64.urlsafe_b64decode(h + "==")), json.loads(base64.urlsafe_b64decode(p + "==")), s)


def stow(client: TestClient, files: list[Path], token: str):
    body, content_type = multipart.encode(f.read_bytes() for f in files)
    return client.post("/dicomweb/studies", content=body,
                       headers={"Content-Type": content_type, "Accept": "application/dicom+json", **bearer(token)})


def test_each_machine_does_what_its_role_allows(site: Site, tmp_path: Path, data: Path) -> None:
    ops, push, dash, nobody = (site.idp.machine_token(c) for c in ("ops-bot", "pacs-push", "dashboard", "nobody-bot"))
    study = derive_cxr_study(tmp_path / "s", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None)
    sop = str(pydicom.dcmread(study[0], stop_before_pixels=True).SOPInstanceUID)
    with site.client() as client:
        # the operator's machine: write actions, and the pages without patient identifiers
        assert client.post("/actions/retry", headers=bearer(push)).status_code == 403
        assert site.parked() == 1
        reply = client.post("/actions/retry", headers=bearer(ops))
        assert reply.status_code == 200 and reply.json() == {"action": "retry", "requeued": 1}
        assert site.parked() == 0
        assert client.get("/", headers=bearer(ops)).status_code == 200
        assert stow(client, study, ops).status_code == 403
        assert site.store.instance(sop) is None
        # the uploader's machine: STOW-RS in, nothing else
        assert client.get("/", headers=bearer(push)).status_code == 403
        reply = stow(client, study, push)
        assert reply.status_code == 200, reply.text
        assert site.store.instance(sop) is not None
        # a dashboard with the viewer role reads, and writes nothing
        assert client.get("/outbox", headers=bearer(dash)).status_code == 200
        assert client.post("/actions/rerun", json={"study": "1.2.3.4"}, headers=bearer(dash)).status_code == 403
        # a client the provider knows, with no role of this node
        refused = client.get("/", headers=bearer(nobody))
        assert refused.status_code == 403 and "insufficient_scope" in refused.headers["www-authenticate"]
    runs = site.events("action")
    assert [(e["user"], e["outcome"]) for e in runs] == [("ops-bot", 0)]
    refusals = {(e["user"], e["path"]) for e in site.events("token-refused") if e.get("user")}
    assert {("pacs-push", "/actions/retry"), ("ops-bot", "/dicomweb/studies"), ("pacs-push", "/"),
            ("dashboard", "/actions/rerun"), ("nobody-bot", "/")} <= refusals


def test_forged_expired_and_misdirected_tokens_are_refused(site: Site) -> None:
    real = site.idp.machine_token("ops-bot")
    header, claims, signature = _parts(real)
    assert claims["roles"] == ["DicomNode.Operator"] and claims["aud"] == AUDIENCE
    assert header["alg"] == "RS256" and header["kid"]
    now = int(time.time())
    mine = RSAKey.generate_key(2048)
    forged = {
        # signed with a key of our own, named as the provider's key
        "forged-signature": jwt.encode({"alg": "RS256", "kid": header["kid"]}, claims, mine),
        # signed with a key the provider does not publish, and a key ID it never had
        "unknown-key": jwt.encode({"alg": "RS256", "kid": "not-the-providers"}, claims, mine),
        # the provider's token with the roles changed, its signature kept
        "tampered": ".".join([_b64(header), _b64({**claims, "roles": ["DicomNode.Operator", "x"]}), signature]),
        # no signature at all
        "alg-none": ".".join([_b64({"alg": "none", "typ": "JWT"}), _b64(claims), ""]),
        # a shared-secret signature (HS256) made with the provider's public key as the secret
        "hs256": _hs256({"alg": "HS256", "kid": header["kid"]}, claims,
                        RSAKey.import_key(site.idp.jwks()["keys"][0]).as_pem(private=False)),
        # a real token of the provider, for another API
        "wrong-audience": site.idp.machine_token("ops-bot", resource="api://another-api"),
        # a real token of the provider, expired (the provider gave it one second)
        "expired": site.idp.machine_token("brief-bot"),
        # garbage
        "not-a-jwt": "abc.def",
    }
    time.sleep(2.5)  # brief-bot's token is now past its exp (clock_skew_seconds: 0)
    with site.client() as client:
        for name, token in forged.items():
            reply = client.post("/actions/retry", headers=bearer(token))
            assert reply.status_code == 401, (name, reply.text)
            assert 'error="invalid_token"' in reply.headers["www-authenticate"], name
        assert client.post("/actions/retry", headers=bearer(real)).status_code == 200, "the real token still works"
    refused = [e for e in site.events("token-refused") if not e.get("user")][-len(forged):]
    reasons = [e["reason"] for e in refused]
    print("\n".join(f"{name}: {reason}" for name, reason in zip(forged, reasons)))
    expected = {"forged-signature": "bad_signature", "unknown-key": "key the provider does not publish",
                "tampered": "bad_signature", "alg-none": "unsupported_algorithm", "hs256": "unsupported_algorithm",
                "wrong-audience": "'aud'", "expired": "expired", "not-a-jwt": "decode_error"}
    assert len(reasons) == len(forged)
    for (name, reason) in zip(forged, reasons):
        assert expected[name] in reason, (name, reason)
    assert all(e["path"] == "/actions/retry" and e["peer_host"] and e["outcome"] == 8 for e in refused)
    assert real not in site.cfg.audit_path.read_text(), "no token in the audit trail"


def test_the_static_token_stays_for_simple_setups(site: Site) -> None:
    with site.client() as client:
        assert client.post("/actions/retry", headers=bearer(STATIC)).status_code == 200
        assert client.post("/actions/retry", headers=bearer(STATIC + "x")).status_code == 401
        assert client.post("/actions/retry").status_code == 401
    assert site.events("action")[-1]["user"] == "static-token"


def test_new_provider_keys_are_fetched_when_a_token_names_one(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """Key rotation: the provider restarts with a new signing key; its next token names a key ID the node has not
    cached, and the node fetches the key set again instead of refusing."""
    monkeypatch.setattr(tokens, "REFRESH_MIN_SECONDS", 0.0)
    with site.client() as client:
        assert client.post("/actions/retry", headers=bearer(site.idp.machine_token("ops-bot"))).status_code == 200
        old_kid = site.idp.jwks()["keys"][0]["kid"]
        site.idp.stop()
        site.idp.start()
        assert site.idp.jwks()["keys"][0]["kid"] != old_kid
        reply = client.post("/actions/retry", headers=bearer(site.idp.machine_token("ops-bot")))
        assert reply.status_code == 200, reply.text


def test_a_persons_id_token_is_no_bearer_token(site: Site) -> None:
    """With audience = client_id (Entra ID's v2 default), a person's ID token has the right issuer, audience and
    roles: it is still refused, for it proves a sign-in, not a grant to call the node."""
    import asyncio

    id_token = site.idp.id_token("otto", WEB_CLIENT)
    _, claims, _ = _parts(id_token)
    assert claims["aud"] == "dicom-node" and claims["roles"] == ["DicomNode.Operator"] and claims["nonce"]
    oidc = site.cfg.http.oidc.model_copy(update={"audience": None})
    with pytest.raises(tokens.TokenRefused, match="an ID token is not an access token"):
        asyncio.run(tokens.TokenVerifier(oidc).verify(id_token))
