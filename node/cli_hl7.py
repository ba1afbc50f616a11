"""`dicom-node mllp`: the HL7 v2 listener alone (started by ``serve`` when the configuration has ``mllp``)."""

from __future__ import annotations

import argparse
import sys

from node.config import ConfigError, load_config


def cmd_mllp(args: argparse.Namespace) -> int:
    """Run the MLLP listener of ``--config`` until SIGTERM/SIGINT (or the death of ``--parent-pid``)."""
    from node.hl7.listener import run_listener
    from node.ops.process import setup_logging

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    if cfg.mllp is None:
        print(f"{args.config}: no mllp section: nothing to listen for", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, cfg.logging.format)
    return run_listener(cfg, parent_pid=args.parent_pid)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``mllp`` on the ``dicom-node`` command line."""
    s = sub.add_parser("mllp", help="the HL7 v2 MLLP listener alone (serve starts it when mllp is configured)")
    s.add_argument("--config", required=True)
    s.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_mllp)
