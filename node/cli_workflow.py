"""``dicom-node workitems``: the UPS-RS workitems this node claimed and how far each got (registered by
:mod:`node.cli`). UIDs, rules and reasons only, never PHI; the Transaction UID (the workitem's lock) is not shown."""

from __future__ import annotations

import argparse
import json
import sys
import time

from node.config import ConfigError, load_config


def cmd_workitems(args: argparse.Namespace) -> int:
    """Print the newest workitem rows (``--json``: as JSON) and the count per state."""
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    from node.store.state import Store

    store = Store.open(cfg.database_url, sqlite_synchronous=cfg.database.sqlite_synchronous)
    rows = store.workitems(args.limit, [args.state] if args.state else None)
    for r in rows:
        r.pop("transaction_uid", None)
        r.pop("lease_owner", None)
    if args.json:
        print(json.dumps({"counts": store.workitem_counts(), "workitems": rows}, default=str, indent=2))
        return 0
    counts = store.workitem_counts()
    print("workitems: " + (", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"))
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["updated_at"]))
        print(f"  {r['workitem_uid']}  {r['state']:<10} rule {r['rule_name'] or '-'}  study {r['study_uid'] or '-'}  "
              f"({r['source']}, {when}){': ' + r['reason'] if r['reason'] else ''}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``workitems`` on the ``dicom-node`` command line."""
    s = sub.add_parser("workitems", help="UPS-RS workitems this node claimed (AIW-I) and their state")
    s.add_argument("--config", required=True)
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--state", default=None, help="only this state (claimed, running, completed, canceled, lost...)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_workitems)
