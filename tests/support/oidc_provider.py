"""A real identity provider for the tests: ``oidc-provider`` from npm (OpenID Certified), pinned in
``tests/support/oidc/package.json``, installed by ``scripts/setup.sh`` into ``.cache/oidc-provider/<version>/``, run
with Node.js by ``tests/support/oidc/provider.mjs`` over HTTPS on a free loopback port.

Its issuer is ``https://localhost:<port>`` while the node under test is reached at ``https://127.0.0.1:<port>``: two
sites, so the browser's return from the provider is a cross-site navigation, as with a real provider.

Nothing here skips: a missing Node.js or install fails with the command that installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from .data import REPO
from .ports import free_port

VERSION = json.loads((Path(__file__).parent / "oidc" / "package.json").read_text())["dependencies"]["oidc-provider"]
SCRIPT = Path(__file__).parent / "oidc" / "provider.mjs"


def modules_dir() -> Path:
    """The installed ``node_modules`` (``$OIDC_PROVIDER_MODULES`` or the setup script's cache); fail clearly."""
    path = Path(os.environ.get("OIDC_PROVIDER_MODULES", REPO / ".cache" / "oidc-provider" / VERSION / "node_modules"))
    if not (path / "oidc-provider" / "package.json").is_file():
        pytest.fail(f"oidc-provider {VERSION} not found in {path}: run scripts/setup.sh (npm ci of "
                    f"tests/support/oidc/package.json into .cache/oidc-provider/{VERSION})", pytrace=False)
    return path


@dataclass
class User:
    password: str
    name: str
    roles: list[str]


@dataclass
class Machine:
    client_secret: str
    roles: list[str]
    ttl: int = 600  # seconds the access token lives


@dataclass
class OidcProvider:
    """Use as a context manager; ``issuer``, ``token_endpoint`` once started."""

    folder: Path
    cert: Path
    key: Path
    ca: Path  # what the tests' own HTTPS clients trust
    users: dict[str, User] = field(default_factory=dict)
    web_clients: list[dict[str, Any]] = field(default_factory=list)
    machines: dict[str, Machine] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)  # resource indicator -> audience of its tokens
    default_resource: str | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def issuer(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.folder / "oidc-provider.log"

    def start(self, timeout: float = 60) -> "OidcProvider":
        node = shutil.which("node")
        if node is None:
            pytest.fail("Node.js missing: run scripts/setup.sh (it installs npm and Node.js)", pytrace=False)
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = {"modules": str(modules_dir()), "issuer": self.issuer, "port": self.port, "cert": str(self.cert),
                "key": str(self.key), "users": {k: vars(u) for k, u in self.users.items()},
                "web_clients": self.web_clients, "machines": {k: vars(m) for k, m in self.machines.items()},
                "resources": self.resources, "default_resource": self.default_resource}
        conf_path = self.folder / "oidc-provider.json"
        conf_path.write_text(json.dumps(conf, indent=1))
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([node, str(SCRIPT), str(conf_path)], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while f"ready {self.port}" not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"oidc-provider did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> "OidcProvider":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def metadata(self) -> dict[str, Any]:
        return httpx.get(self.issuer + "/.well-known/openid-configuration", verify=self._tls(), timeout=30).json()

    def jwks(self) -> dict[str, Any]:
        return httpx.get(self.metadata()["jwks_uri"], verify=self._tls(), timeout=30).json()

    def id_token(self, login: str, client: dict[str, Any]) -> str:
        """A person's ID token for a web ``client`` of this provider: the Authorization Code flow with PKCE by hand
        (the sign-in form posted, the code taken from the redirect, never sent to the client's redirect URI)."""
        import base64
        import hashlib
        import re
        import secrets
        from urllib.parse import parse_qs, urljoin, urlsplit

        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        meta = self.metadata()
        redirect_uri = client["redirect_uris"][0]
        with httpx.Client(verify=self._tls(), timeout=30) as web:
            url = meta["authorization_endpoint"]
            params: dict[str, str] | None = {
                "client_id": client["client_id"], "response_type": "code", "scope": "openid profile",
                "redirect_uri": redirect_uri, "state": "s", "nonce": secrets.token_urlsafe(8),
                "code_challenge": challenge, "code_challenge_method": "S256"}
            reply = web.get(url, params=params)
            for _ in range(10):
                if reply.status_code in (302, 303) and reply.headers["location"].startswith(redirect_uri):
                    break
                if reply.status_code in (302, 303):
                    reply = web.get(urljoin(str(reply.url), reply.headers["location"]))
                    continue
                action = re.search(r'action="([^"]+/login)"', reply.text)
                assert action, reply.text
                reply = web.post(urljoin(str(reply.url), action.group(1)),
                                 data={"login": login, "password": self.users[login].password})
            code = parse_qs(urlsplit(reply.headers["location"]).query)["code"][0]
            token = web.post(meta["token_endpoint"], auth=(client["client_id"], client["client_secret"]), data={
                "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": verifier})
        assert token.status_code == 200, token.text
        return token.json()["id_token"]

    def machine_token(self, client_id: str, resource: str | None = None) -> str:
        """A client credentials access token (a JWT) of ``client_id``, for ``resource`` (default: the default one)."""
        data = {"grant_type": "client_credentials", "scope": "api"}
        if resource:
            data["resource"] = resource
        reply = httpx.post(self.metadata()["token_endpoint"], data=data, verify=self._tls(), timeout=30,
                           auth=(client_id, self.machines[client_id].client_secret))
        assert reply.status_code == 200, reply.text
        return reply.json()["access_token"]
