"""People sign in through a real identity provider in a real browser: ``dicom-node serve`` with ``http.tls`` and
``http.oidc``, oidc-provider from npm (tests/support/oidc_provider.py) as the hospital's provider, headless
Chromium (selenium) as the person, the emulator and a mini PACS behind the node.

What each role may see and do is read from the README's role table (tests/support/roles.py) and checked in the
browser: the pages, the patient's name, the write forms and what a POST gets. What the operator's forms did is
counted at the PACS (the rejection note and the re-run's results it received), never in the node's database.
Sign-ins, refusals, sign-outs and actions are looked up in the audit trail the node wrote, and in the audit record
repository (rsyslogd over RFC 5425 TLS, tests/support/rsyslog.py) as the ATNA messages it received and parsed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from node.config import load_config
from node.dicom.tls import BCP195_CIPHERS
from node.ops.audit import read_events

from support import rsyslog
from support.nodekit import send, wait_until
from support.nodeproc import NodeProcess, node_config
from support.oidc_provider import OidcProvider, User
from support.pacs import MiniPACS
from support.ports import free_port
from support.roles import readme_role_table
from support.studies import derive_cxr_study
from support.tlscerts import make_ca

pytestmark = [pytest.mark.slow, pytest.mark.security]

PATIENT = "SSO^PATIENT^TEST"
CLIENT_SECRET = "node-client-secret-for-the-tests"
ROLE_MAP = {"DicomNode.Viewer": "viewer", "DicomNode.PhiViewer": "phi-viewer", "DicomNode.Operator": "operator",
            "DicomNode.Uploader": "uploader"}
#: the test person holding each role (their provider roles map to exactly that node role)
PEOPLE = {"viewer": "vera", "phi-viewer": "pia", "operator": "otto", "uploader": "ulla"}
USERS = {"vera": User("pw-vera-1", "Vera Viewer", ["DicomNode.Viewer"]),
         "pia": User("pw-pia-2", "Pia Phi", ["DicomNode.PhiViewer"]),
         "otto": User("pw-otto-3", "Otto Operator", ["DicomNode.Operator", "Staff"]),
         "ulla": User("pw-ulla-4", "Ulla Uploader", ["DicomNode.Uploader"]),
         "nora": User("pw-nora-5", "Nora Nurse", ["Nurse"])}


class Site:
    """The provider, the node (HTTPS + sign-in), its peers, one study done, and one browser."""

    def __init__(self, tmp: Path, data: Path) -> None:
        from node.emulator.server import EmulatorServer

        self.tmp = tmp
        self.ca = make_ca(tmp / "pki", "test-ca")
        self.cert = self.ca.issue(tmp / "pki", "localhost", server=True)  # names localhost and 127.0.0.1
        self.port = free_port()
        self.base = f"https://127.0.0.1:{self.port}"
        self.idp = OidcProvider(tmp / "idp", self.cert.cert, self.cert.key, self.ca.cert, users=USERS, web_clients=[{
            "client_id": "dicom-node", "client_secret": CLIENT_SECRET, "redirect_uris": [self.base + "/auth/callback"],
            "post_logout_redirect_uris": [self.base + "/auth/signed-out"]}]).start()
        self.emulator = EmulatorServer("127.0.0.1", 0).start()
        (tmp / "pacs").mkdir()
        self.pacs = MiniPACS(folder=tmp / "pacs").start()
        self.repository = rsyslog.start(tmp / "rsyslog", tls=True)
        os.environ["SSO_BROWSER_CLIENT_SECRET"] = CLIENT_SECRET
        os.environ["SSO_BROWSER_SESSION_KEY"] = "session-signing-key-of-the-tests-0123456789"
        cfg = node_config(tmp, endpoint_url=self.emulator.url, pacs=("PACS", self.pacs.port), http={
            "host": "127.0.0.1", "port": self.port,
            "tls": {"cert_file": str(self.cert.cert), "key_file": str(self.cert.key)},
            "oidc": {"issuer": self.idp.issuer, "client_id": "dicom-node",
                     "client_secret_env": "SSO_BROWSER_CLIENT_SECRET", "ca_file": str(self.ca.cert),
                     "session_secret_env": "SSO_BROWSER_SESSION_KEY", "role_map": ROLE_MAP}})
        cfg["audit"] = {"syslog": self.repository.syslog_config()}
        self.node = NodeProcess(tmp, cfg).start()
        self.audit_path = load_config(self.node.config_path).audit_path
        wait_until(lambda: self.get("/healthz") == 200, 60, "the HTTPS side to answer")
        self.study = derive_cxr_study(tmp / "study", data / "cxr" / "cr_pa_mono1_uncompressed.dcm",
                                      patient_name=PATIENT, patient_id="SSO-4711")
        self.study_uid = str(pydicom.dcmread(self.study[0], stop_before_pixels=True).StudyInstanceUID)
        send(self.node, self.study)
        wait_until(lambda: len(self.pacs.stored) >= 2, 120, "SR and GSPS at the PACS")
        self.driver = browser(self.cert.cert)

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.cert))

    def get(self, path: str) -> int | None:
        try:
            return httpx.get(self.base + path, verify=self.tls(), timeout=10).status_code
        except httpx.HTTPError:
            return None

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in read_events(self.audit_path) if e["event"] == name]

    def at_pacs(self, modality: str) -> int:
        return sum(1 for p in self.pacs.received if p.name.startswith(modality + "_"))

    def stop(self) -> None:
        self.driver.quit()
        self.node.stop()
        self.pacs.stop()
        self.emulator.stop()
        self.idp.stop()
        self.repository.stop()
        os.environ.pop("SSO_BROWSER_CLIENT_SECRET", None)
        os.environ.pop("SSO_BROWSER_SESSION_KEY", None)

    def cookie_works(self, value: str) -> bool:
        """Does a copy of a session cookie still sign its holder in (200), or is it sent to sign in (302)?"""
        reply = httpx.get(self.base + "/", verify=self.tls(), timeout=10, headers={"Accept": "text/html"},
                          cookies={"__Host-dicom-node-session": value})
        assert reply.status_code in (200, 302), reply.status_code
        return reply.status_code == 200

    def restart_http_side(self) -> None:
        """SIGKILL the HTTP side's process; serve starts a new one."""
        import signal

        children = Path(f"/proc/{self.node.proc.pid}/task/{self.node.proc.pid}/children").read_text().split()
        pid = next(int(p) for p in children if b"\0http\0" in Path(f"/proc/{p}/cmdline").read_bytes())
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: self.get("/healthz") is None, 30, "the HTTP side to go away")
        wait_until(lambda: self.get("/healthz") == 200, 60, "serve to restart the HTTP side")


def spki_hash(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def browser(cert: Path) -> Any:
    """Headless Chromium trusting exactly the test certificate (by its public key) and nothing else extra."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from support.tools import require_tool

    require_tool("chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--no-first-run", "--disable-extensions", "--proxy-server=direct://", "--proxy-bypass-list=*",
                f"--ignore-certificate-errors-spki-list={spki_hash(cert)}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_script_timeout(30)
    return driver


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("sso-browser"), data)
    try:
        yield s
    finally:
        s.stop()


def by_id(driver: Any, element_id: str, timeout: float = 30) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(expected_conditions.presence_of_element_located((By.ID, element_id)))


def at_login_form(site: Site, path: str = "/") -> None:
    """A fresh browser (no cookie of either site) opens ``path`` of the node and lands on the provider's form."""
    site.driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    site.driver.get(site.base + path)
    by_id(site.driver, "login")
    assert site.driver.current_url.startswith(site.idp.issuer + "/interaction/"), site.driver.current_url


def sign_in(site: Site, login: str, path: str = "/") -> None:
    at_login_form(site, path)
    d = site.driver
    d.find_element("id", "login").send_keys(login)
    d.find_element("id", "password").send_keys(USERS[login].password)
    d.find_element("id", "submit").click()
    wait_until(lambda: d.current_url.startswith(site.base) and (
        "/auth/callback" not in d.current_url or d.find_elements("id", "error-title")), 30, f"{login} back at the node")


def fetch(site: Site, method: str, path: str, form: dict[str, str] | None = None,
          headers: dict[str, str] | None = None, json_body: str | None = None) -> int:
    """The status of a request the page itself makes (same origin, with its cookies)."""
    script = """
        const [method, url, form, headers, jsonBody, done] = arguments;
        const init = {method, headers: headers || {}, credentials: 'same-origin', redirect: 'manual'};
        if (form) init.body = new URLSearchParams(form);
        if (jsonBody) { init.body = jsonBody; init.headers['Content-Type'] = 'application/json'; }
        fetch(url, init).then(r => done(r.status), e => done(String(e)));
    """
    return site.driver.execute_async_script(script, method, site.base + path, form, headers, json_body)


def flash(site: Site, expected: str) -> str:
    """The message at the top of the page a form led to, once it says ``expected`` (the page before may linger)."""
    from selenium.common.exceptions import StaleElementReferenceException

    def text() -> str | None:
        try:
            found = site.driver.find_elements("id", "flash")
            return found[0].text if found and expected in found[0].text else None
        except StaleElementReferenceException:
            return None

    return wait_until(text, 30, f"the page to say {expected!r}")


def page_csrf(site: Site) -> str:
    return site.driver.find_element("css selector", "#signed-in input[name=csrf]").get_attribute("value")


def test_https_with_the_dicom_tls_settings(site: Site) -> None:
    # a client that checks the certificate against the test CA gets TLS 1.2+ and a BCP 195 suite
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw:
        with site.tls().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            assert tls.version() == "TLSv1.3" or tls.cipher()[0] in BCP195_CIPHERS.split(":")
    reply = httpx.get(site.base + "/healthz", verify=site.tls(), timeout=10)
    assert reply.status_code == 200
    assert reply.headers["strict-transport-security"].startswith("max-age=")
    assert reply.headers["x-frame-options"] == "DENY"

    def handshake(ctx: ssl.SSLContext) -> str:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        try:
            with socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw:
                with ctx.wrap_socket(raw) as tls:
                    return f"accepted {tls.version()} {tls.cipher()[0]}"
        except ssl.SSLError as exc:
            return f"refused {exc.reason}"

    tls12_gcm = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls12_gcm.maximum_version = ssl.TLSVersion.TLSv1_2
    tls12_gcm.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384")
    assert handshake(tls12_gcm) == "accepted TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384"
    cbc = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # TLS 1.2 with CBC suites only: not in BCP 195's list (the
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2  # SHA-256/384 ones are in Python's and OpenSSL's defaults)
    cbc.set_ciphers("ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:AES128-SHA256")
    assert handshake(cbc).startswith("refused"), "a CBC-only TLS 1.2 client must be refused"
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # TLS 1.1 (the client allows it: security level 0)
    old.set_ciphers("ALL:@SECLEVEL=0")
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    refused = handshake(old)
    assert refused.startswith("refused") and "NO_PROTOCOLS_AVAILABLE" not in refused, refused
    with pytest.raises(httpx.HTTPError):  # no plain HTTP on that port
        httpx.get(f"http://127.0.0.1:{site.port}/healthz", timeout=10)
    probe = subprocess.run([sys.executable, "-m", "node.cli", "healthcheck", "--config", str(site.node.config_path)],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr  # the container's HEALTHCHECK speaks HTTPS too


@pytest.mark.parametrize("role", ["viewer", "phi-viewer", "uploader", "operator"])
def test_each_role_sees_and_does_what_the_guide_table_says(site: Site, role: str) -> None:
    allowed = readme_role_table()[role]
    login = PEOPLE[role]
    d = site.driver
    sign_in(site, login, f"/studies/{site.study_uid}")
    assert d.find_element("id", "user").text == login
    study_page = d.page_source
    if not allowed["pages"]:
        assert d.find_element("id", "error-title").text == "Not allowed"
        assert site.study_uid not in d.find_element("id", "error-message").text
        for path in ("/", "/outbox", f"/studies/{site.study_uid}"):
            assert fetch(site, "GET", path) == 403, path
    else:
        assert d.find_element("css selector", "h1").text == f"Study {site.study_uid}"
        assert (PATIENT in study_page) == allowed["phi"], f"{role}: patient name shown = {allowed['phi']}"
        assert ("SSO-4711" in study_page) == allowed["phi"]
        for path in ("/", "/outbox"):
            assert fetch(site, "GET", path) == 200, path
        assert bool(d.find_elements("id", "retract-form")) == allowed["actions"]
        assert bool(d.find_elements("id", "rerun-form")) == allowed["actions"]
    # a write without the operator role: refused, whatever the page offers (the session's own CSRF token sent)
    if not allowed["actions"]:
        kos = site.at_pacs("KO")
        for name in ("retract", "rerun", "retry"):
            form = {"csrf": page_csrf(site), "study": site.study_uid, "reason": "quality"}
            assert fetch(site, "POST", f"/actions/{name}", form=form) == 403, name
        assert site.at_pacs("KO") == kos
        refused = [e for e in site.events("action") if e["user"] == login]
        assert {e["action"] for e in refused} == {"retract", "rerun", "retry"}
        assert all(e["outcome"] == 8 and "lacks the role operator" in e["error"] for e in refused)
    # STOW-RS in takes a bearer token only: never a person's session (uploader included)
    assert fetch(site, "POST", "/dicomweb/studies", headers={"X-CSRF-Token": page_csrf(site)}) == 401
    if allowed["actions"]:
        operator_uses_the_forms(site, login)
    logins = [e for e in site.events("user-login") if e["user"] == login]
    assert logins and logins[-1]["roles"] == [role] and logins[-1]["peer_host"] == "127.0.0.1"


def operator_uses_the_forms(site: Site, login: str) -> None:
    """Retract, rerun and retry through the pages' forms; what they did is counted at the PACS."""
    from selenium.webdriver.support.ui import Select

    d = site.driver
    kos, results = site.at_pacs("KO"), len(site.pacs.stored)
    Select(d.find_element("css selector", "#retract-form select[name=reason]")).select_by_value("safety")
    d.find_element("css selector", "#retract-form button").click()
    flash(site, "retract done")
    wait_until(lambda: site.at_pacs("KO") == kos + 1, 60, "the rejection note at the PACS")
    note = pydicom.dcmread(next(p for p in site.pacs.received if p.name.startswith("KO_")))
    assert note.StudyInstanceUID == site.study_uid
    assert note.ConceptNameCodeSequence[0].CodeValue == "113037"  # Rejected for Patient Safety Reasons
    d.find_element("css selector", "#rerun-form button").click()
    flash(site, "rerun done")
    wait_until(lambda: len(site.pacs.stored) >= results + 1 + 2, 120, "the re-run's SR and GSPS at the PACS")
    d.get(site.base + "/outbox")
    d.find_element("css selector", "#retry-form button").click()
    assert flash(site, "retry done") == "retry done: requeued 0"
    done = [e for e in site.events("action") if e["user"] == login]
    assert [(e["action"], e["outcome"]) for e in done] == [("retract", 0), ("rerun", 0), ("retry", 0)]
    assert done[0]["study_uid"] == site.study_uid and done[0]["reason"] == "safety" and done[0]["via"] == "http"
    assert done[0]["user_name"] == USERS[login].name


def test_refused_sign_ins_are_refused_and_audited(site: Site) -> None:
    d = site.driver
    # a person the provider knows, with no role of this node
    sign_in(site, "nora")
    assert d.find_element("id", "error-title").text == "Sign-in failed"
    assert "nora has no role on this node" in d.find_element("id", "error-message").text
    assert fetch(site, "GET", "/") == 401, "not signed in"
    # the person cancels at the provider
    at_login_form(site)
    d.find_element("id", "cancel").click()
    assert by_id(d, "error-title").text == "Sign-in failed"
    assert "access_denied" in d.find_element("id", "error-message").text
    # a wrong password stays at the provider (its own audit); the node has nothing to record
    at_login_form(site)
    d.find_element("id", "login").send_keys("otto")
    d.find_element("id", "password").send_keys("not-otto's-password")
    d.find_element("id", "submit").click()
    assert by_id(d, "login-error").text == "Wrong user name or password."
    # a forged answer: a code and state this browser never asked for
    d.get(site.base + "/auth/callback?code=forged-code&state=forged-state")
    assert by_id(d, "error-title").text == "Sign-in failed"
    failed = site.events("user-login-failed")
    assert [(e.get("user"), e["outcome"]) for e in failed[-3:]] == [("nora", 4), (None, 4), (None, 8)]
    assert "access_denied" in failed[-2]["reason"] and "state" in failed[-1]["reason"]
    assert not [e for e in site.events("user-login") if e["user"] == "nora"]


def _session_cookie(site: Site) -> dict[str, Any]:
    (cookie,) = [c for c in site.driver.get_cookies() if c["name"] == "__Host-dicom-node-session"]
    return cookie


def test_session_cookie_csrf_and_sign_out(site: Site) -> None:
    d = site.driver
    sign_in(site, "vera")
    kept = _session_cookie(site)["value"]  # vera's session: never signed out
    sign_in(site, "otto", f"/studies/{site.study_uid}")
    cookie = _session_cookie(site)
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/"
    assert "domain" not in cookie or cookie["domain"] in ("127.0.0.1", ".127.0.0.1")
    assert "dicom-node-session" not in d.execute_script("return document.cookie")
    # write forms without the session's CSRF token: refused, nothing retracted
    kos = site.at_pacs("KO")
    form = {"study": site.study_uid, "reason": "quality"}
    assert fetch(site, "POST", "/actions/retract", form=form) == 403
    assert fetch(site, "POST", "/actions/retract", form={**form, "csrf": "guessed"}) == 403
    assert fetch(site, "POST", "/actions/retract", json_body='{"study": "%s", "reason": "quality"}'
                 % site.study_uid) == 403
    refused = [e for e in site.events("action") if e["user"] == "otto" and e["outcome"] == 8]
    assert len(refused) >= 3 and all("CSRF" in e["error"] for e in refused[-3:])
    # another site's page posting to the node: the SameSite cookie does not go with it
    d.get("data:text/html,<form method=post action='%s/actions/retry'><input name=csrf value=x></form>"
          "<script>document.forms[0].submit()</script>" % site.base)
    wait_until(lambda: "sign in, or send a bearer token" in d.page_source, 30, "the node's 401 answer")
    assert site.at_pacs("KO") == kos
    # sign out: here, then at the provider; the old cookie is refused afterwards
    d.get(site.base + "/")
    d.find_element("id", "logout").click()
    by_id(d, "op.logoutForm")  # the provider asks to confirm its own sign-out
    d.find_element("css selector", "button[name=logout]").click()
    assert by_id(d, "error-title").text == "Signed out"
    assert d.current_url == site.base + "/auth/signed-out"
    assert not site.cookie_works(cookie["value"]), "a copy of the signed-out cookie"
    assert site.events("user-logout")[-1]["user"] == "otto"
    # the HTTP side restarts (session_secret_env set): sessions go on, the sign-out is still remembered
    site.restart_http_side()
    assert site.cookie_works(kept), "vera's session survives a restart of the HTTP side"
    assert not site.cookie_works(cookie["value"]), "otto's signed-out cookie after a restart"
    d.get(site.base + "/")
    by_id(d, "login")  # the provider's session ended too: the form again, no silent sign-in


#: the HTTP side's events and the DICOM audit message each one makes: (EventID, EventTypeCode or None)
ATNA_OF = {"user-login": ("110114", "110122"), "user-login-failed": ("110114", "110122"),
           "user-logout": ("110114", "110123"), "action": ("110103", None), "token-refused": ("110113", "110132")}


def atna_summary(message: rsyslog.Received) -> tuple[str, str | None, str, int]:
    """(EventID, EventTypeCode, the acting person's UserID, EventOutcomeIndicator) of one received message."""
    import xml.etree.ElementTree as ET

    doc = ET.fromstring(message.xml)
    ident = doc.find("EventIdentification")
    event_type = ident.find("EventTypeCode")
    requestor = next(p for p in doc.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true")
    return (ident.find("EventID").get("csd-code"), None if event_type is None else event_type.get("csd-code"),
            requestor.get("UserID"), int(ident.get("EventOutcomeIndicator")))


def test_every_sign_in_refusal_and_action_reaches_the_audit_repository_naming_the_user(site: Site) -> None:
    from collections import Counter

    from node.audit import schema

    d = site.driver
    sign_in(site, "pia")
    d.find_element("id", "logout").click()
    by_id(d, "op.logoutForm")
    d.find_element("css selector", "button[name=logout]").click()
    by_id(d, "error-title")
    at_login_form(site)
    d.find_element("id", "cancel").click()
    by_id(d, "error-title")
    sign_in(site, "otto", "/outbox")
    d.find_element("css selector", "#retry-form button").click()
    flash(site, "retry done")
    assert httpx.post(site.base + "/actions/retry", headers={"Authorization": "Bearer forged.token.value"},
                      verify=site.tls(), timeout=10).status_code == 401
    # what the node recorded, as the repository must have it: every such event of this module so far
    trail = [e for e in read_events(site.audit_path) if e["event"] in ATNA_OF]
    expected = Counter((*ATNA_OF[e["event"]], e.get("user") or e.get("peer_host") if e["event"] == "token-refused"
                        else e.get("user") or "unknown", e["outcome"]) for e in trail)
    for key in (("110114", "110122", "pia", 0), ("110114", "110123", "pia", 0), ("110114", "110122", "unknown", 4),
                ("110103", None, "otto", 0), ("110113", "110132", "127.0.0.1", 8)):
        assert expected[key] >= 1, (key, expected)  # pia in and out, a cancelled sign-in, otto's retry, the token

    def received() -> Counter:
        got = Counter()
        for m in site.repository.messages():
            summary = atna_summary(m)
            if summary[0] in ("110114", "110103") or summary[1] == "110132":
                got[summary[:1] + ((summary[1],) if summary[0] != "110103" else (None,)) + summary[2:]] += 1
        return got

    wait_until(lambda: received() == expected, 60, "the repository to hold one ATNA message per event")
    for m in site.repository.messages():
        if atna_summary(m)[0] in ("110114", "110103"):
            assert m.msgid == "IHE+RFC-3881" and m.facility == 10
            assert schema.errors(m.xml) == [], schema.errors(m.xml)
