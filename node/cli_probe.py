"""``dicom-node probe --config F [ENDPOINT ...] [--json]``: the go-live check a hospital runs on day one.

One synthetic, PHI-free request per endpoint (every endpoint of the configuration when none is named), then what
came back and what the node will do with it (:mod:`node.models.probe`). Exit status: 0 when the node can use every
reply, 1 when one is not usable (an error, a reply the node cannot read, a setting that will fail), 2 for a bad
command line or configuration.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "cmd_probe"]


def add_parser(sub: Any) -> None:
    """Register ``probe`` on the ``dicom-node`` sub-command parser."""
    s = sub.add_parser("probe", help="go-live check: one synthetic PHI-free request per endpoint, and what the "
                                     "node will do with the reply (exit 1 when it cannot use it)")
    s.add_argument("--config", required=True)
    s.add_argument("endpoints", nargs="*", metavar="ENDPOINT", help="endpoint names (default: every endpoint)")
    s.add_argument("--json", action="store_true", help="one JSON document: a list of reports")
    s.set_defaults(func=cmd_probe)


def cmd_probe(args: argparse.Namespace) -> int:
    """Probe the named endpoints (imports the client and models only now: the command line stays light)."""
    from node.config import ConfigError, load_config
    from node.ops.process import setup_logging

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    names = args.endpoints or list(cfg.endpoints)
    unknown = [n for n in names if n not in cfg.endpoints]
    if unknown or not names:
        print(f"unknown endpoint(s) {unknown}; configured: {sorted(cfg.endpoints) or 'none'}", file=sys.stderr)
        return 2
    setup_logging("ERROR")  # the report says what matters; the client's retry WARNINGs would only repeat it
    from node.models.probe import probe_endpoint, render
    from node.models.probe_models import dumps

    reports = [probe_endpoint(cfg, name) for name in names]
    if args.json:
        print(dumps([r.as_json() for r in reports]))
    else:
        print("\n\n".join(render(r) for r in reports))
    return 0 if all(r.usable for r in reports) else 1
