"""The ``dicom-node`` commands of the audit: ``audit-forward`` (started by serve), and the ``action`` events of the
command line's write actions (retry, retract, rerun) with the operating-system user who ran them."""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
from typing import Any


def cmd_audit_forward(args: argparse.Namespace) -> int:
    """`dicom-node audit-forward --config F`: the ATNA forwarder process alone (started by serve)."""
    from node.audit.forwarder import run_forwarder
    from node.config import ConfigError, load_config
    from node.ops.process import setup_logging

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, cfg.logging.format)
    return run_forwarder(cfg, parent_pid=args.parent_pid)


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def record_action(cfg: Any, action: str, outcome: str = "success", **fields: Any) -> None:
    """One ``action`` event: a write action run from the command line, by the OS user, on this host."""
    from node.ops.audit import audit_log

    audit_log(cfg).record("action", outcome, action=action, user=os_user(), peer_host=socket.gethostname(),
                          via="cli", **{k: v for k, v in fields.items() if v not in (None, "", [])})


def add_parsers(sub: Any) -> None:
    """Register `audit-forward` (hidden: serve starts it when audit.syslog is set)."""
    s = sub.add_parser("audit-forward", help=argparse.SUPPRESS)
    s.add_argument("--config", required=True)
    s.add_argument("--parent-pid", type=int, default=None)
    s.set_defaults(func=cmd_audit_forward)
