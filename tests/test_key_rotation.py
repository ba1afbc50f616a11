"""A rotated endpoint key does not fail jobs: ``key_file`` is re-read when it changes, and a 401 reloads once.

Kubernetes and Docker rotate a mounted secret by replacing the file; an environment variable never changes
inside a running process, so ``key_file`` is the way to rotate without a restart.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from node.config import EndpointSection
from node.emulator.server import EmulatorServer
from node.invoke.client import EndpointClient, EndpointError
from node.models.cxrreportgen.contract import build_request

OLD, NEW, NEWER = "key-aaaaaaaaaaaa", "key-bbbbbbbbbbbb", "key-cccccccccccc"  # same length: same file size


def _payload() -> dict:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(buf, "PNG")
    return build_request(frontal_png=buf.getvalue())


def _client(url: str, key_file: Path) -> EndpointClient:
    cfg = EndpointSection(model="cxrreportgen", url=url, auth="key", key_file=key_file, max_attempts=2,
                          backoff_initial_seconds=0.01, backoff_max_seconds=0.02, timeout_seconds=5)
    return EndpointClient(f"rot-{uuid.uuid4().hex[:8]}", cfg)


def _rotate_server(server: EmulatorServer, key: str) -> None:
    with server._state.lock:
        server._state.key = key


def test_key_file_is_reread_when_the_secret_rotates(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(OLD + "\n")
    payload = _payload()
    with EmulatorServer(key=OLD) as server, _client(server.url, key_file) as client:
        assert client.score(payload).status == 200
        _rotate_server(server, NEW)
        replacement = tmp_path / "key.new"  # the atomic swap a secret mount does
        replacement.write_text(NEW)
        os.replace(replacement, key_file)
        assert client.score(payload).status == 200
        assert [r["status"] for r in server.requests] == [200, 200], "the new key was used at once, no 401"


def test_a_401_reloads_the_key_once_then_is_permanent(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(OLD)
    payload = _payload()
    with EmulatorServer(key=OLD) as server, _client(server.url, key_file) as client:
        assert client.score(payload).status == 200
        # the file changes but keeps its inode, size and mtime, so only the 401 reveals it
        st = key_file.stat()
        _rotate_server(server, NEW)
        with key_file.open("r+") as f:
            f.write(NEW)
        os.utime(key_file, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert client.score(payload).status == 200
        assert [r["status"] for r in server.requests] == [200, 401, 200]
        # a key that is wrong after the reload too: permanent, after exactly one reload
        _rotate_server(server, NEWER)
        with pytest.raises(EndpointError) as info:
            client.score(payload)
        assert info.value.status == 401 and info.value.permanent
        assert [r["status"] for r in server.requests][3:] == [401, 401]


def test_key_env_and_key_file_are_exclusive_and_relative_to_the_config(tmp_path: Path) -> None:
    from node.config import ConfigError, parse_config

    ep = {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score", "auth": "key", "key_env": "X",
          "key_file": "secrets/key"}
    with pytest.raises(ConfigError, match=r"endpoints\.c.*key_env or key_file, not both"):
        parse_config({"endpoints": {"c": ep}}, tmp_path / "node.yaml")
    del ep["key_env"]
    cfg = parse_config({"endpoints": {"c": ep}}, tmp_path / "node.yaml")
    assert cfg.endpoints["c"].key_file == (tmp_path / "secrets" / "key").resolve()
