"""Configuration changes as audit events (``config-changed``: a Security Alert, Software Configuration).

The node remembers the digest of its configuration file and of each of its sections in
``<node_dir>/config-seen.json``. ``serve`` compares at start (a change made while the node was stopped) and every
few seconds while it runs (a change that takes effect at the next start); either way one ``config-changed``
event names the file, its new SHA-256, the sections that changed (never their values) and whether any of them
is a security setting (TLS, who may connect, the HTTP side's authentication, the audit trail, endpoint keys).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from node.ops.audit import audit_log

log = logging.getLogger(__name__)

SECURITY = ("node.tls", "node.allowed_calling_ae_titles", "node.allowed_hosts", "http", "audit")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def section_digests(data: Any) -> dict[str, str]:
    """A digest per top-level section, per security key of ``node``, per destination's TLS and endpoint's keys."""
    if not isinstance(data, dict):
        return {"(file)": _digest(data)}
    out = {str(k): _digest(v) for k, v in data.items()}
    node = data.get("node") if isinstance(data.get("node"), dict) else {}
    for key in ("tls", "allowed_calling_ae_titles", "allowed_hosts"):
        out[f"node.{key}"] = _digest(node.get(key))
    for section, keys in (("destinations", ("tls",)), ("endpoints", ("auth", "key_env", "key_file"))):
        for name, item in (data.get(section) or {}).items() if isinstance(data.get(section), dict) else ():
            if isinstance(item, dict):
                out[f"{section}.{name}.security"] = _digest({k: item.get(k) for k in keys})
    return out


def _is_security(path: str) -> bool:
    return path.endswith(".security") or any(path == s or path.startswith(s + ".") for s in SECURITY)


class ConfigWatch:
    """``check()``: record a ``config-changed`` event when the file differs from the one last seen."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.path = Path(cfg.source_path) if cfg.source_path else None
        self.state_path = cfg.node_dir / "config-seen.json"
        self._stat: tuple | None = None

    def check(self, at_start: bool) -> bool:
        """True when a change was recorded. The first start only remembers the file."""
        if self.path is None:
            return False
        try:
            st = os.stat(self.path)
            if not at_start and self._stat == (st.st_ino, st.st_size, st.st_mtime_ns):
                return False
            raw = self.path.read_bytes()
        except OSError:
            return False
        self._stat = (st.st_ino, st.st_size, st.st_mtime_ns)
        sha = hashlib.sha256(raw).hexdigest()
        try:
            seen = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            seen = None
        if seen is not None and seen.get("sha256") == sha:
            return False
        try:
            sections = section_digests(yaml.safe_load(raw))
        except yaml.YAMLError:
            sections = {"(file)": sha}
        self._remember(sha, sections)
        if seen is None:
            return False
        old = seen.get("sections") or {}
        changed = sorted(k for k in set(old) | set(sections) if old.get(k) != sections.get(k))
        security = any(_is_security(k) for k in changed)
        when = "at start" if at_start else "while running (takes effect at the next start)"
        audit_log(self.cfg).record("config-changed", path=str(self.path), sha256=sha,
                                   previous_sha256=seen.get("sha256"), sections=changed, security=security,
                                   detected=when, user=_os_user(),
                                   reason=f"configuration file changed ({', '.join(changed) or 'formatting'}), "
                                          f"detected {when}")
        log.warning("configuration %s changed (%s), detected %s", self.path, ", ".join(changed) or "formatting", when)
        return True

    def _remember(self, sha: str, sections: dict[str, str]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sha256": sha, "sections": sections}), encoding="utf-8")
        os.replace(tmp, self.state_path)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
