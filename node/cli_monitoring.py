"""``dicom-node monitor ...``: the monitoring side's commands (node/monitoring).

- ``monitor baseline pin --model M [--version V] (--from DATE --to DATE | --last 30d) [--note T]``: freeze the
  reference of a model version; ``monitor baseline list``; ``monitor baseline unpin --model M [--version V]``;
- ``monitor evaluate``: drift and agreement alerts now (the worker does it every ``evaluate_every_minutes``);
- ``monitor report --since 30d --format html|csv [--table agreement|drift] [--out FILE]``: the committee's report;
- ``monitor extract (--text T | --file F)``: what the extraction reads in a report (offline; nothing stored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path

from node.config import ConfigError, load_config

UNITS = {"m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def duration(text: str) -> float:
    """'30d', '12h', '2w', '90m' -> seconds (argparse type)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration like 30d, 12h, 2w or 90m")
    return float(match.group(1)) * UNITS[match.group(2)]


def moment(text: str) -> float:
    """'2026-01-31' or '2026-01-31T08:00' (local time) -> POSIX seconds (argparse type)."""
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a date (YYYY-MM-DD) or date and time (YYYY-MM-DDTHH:MM)") from None


def _open(args: argparse.Namespace):  # -> (cfg, store) or raises SystemExit(2)
    from node.store.state import Store

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return cfg, Store.open(cfg.database_url, sqlite_synchronous=cfg.database.sqlite_synchronous)


def cmd_pin(args: argparse.Namespace) -> int:
    from node.monitoring.baseline import BaselineError, Window, pin

    cfg, store = _open(args)
    if args.last is not None:
        end = time.time()
        window = Window(end - args.last, end)
    elif args.start is not None and args.end is not None:
        window = Window(args.start, args.end)
    else:
        print("give --last DURATION, or --from DATE and --to DATE", file=sys.stderr)
        return 2
    if window.end <= window.start:
        print("the window ends before it starts", file=sys.stderr)
        return 2
    try:
        row = pin(store, model=args.model, version=args.version, window=window, pinned_by=args.by, note=args.note,
                  min_cases=cfg.monitoring.min_window_cases, sample=cfg.monitoring.max_embedding_samples)
    except BaselineError as exc:
        print(f"not pinned: {exc}", file=sys.stderr)
        return 1
    summary = json.loads(row["summary"])
    print(f"baseline {row['id']} pinned for {row['model']} {row['model_version']}: {summary['n']} studies, "
          f"{len(summary['categorical']) + len(summary['numeric']) + len(summary['rates'])} features"
          + (f", {len(row['embeddings']) // (4 * row['embedding_dim'])} embeddings" if row["embeddings"] else ""))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    _, store = _open(args)
    rows = store.baselines(active_only=not args.all)
    for b in rows:
        when = "%s .. %s" % tuple(time.strftime("%Y-%m-%d %H:%M", time.localtime(t))
                                  for t in (b["window_start"], b["window_end"]))
        print(f"{b['id']}\t{b['model']}\t{b['model_version']}\t{when}\t{b['summary']['n']} studies\t"
              f"{'active' if b['active'] else 'replaced'}\t{b['pinned_by']}\t{b['note']}")
    if not rows:
        print("no baseline pinned")
    return 0


def cmd_unpin(args: argparse.Namespace) -> int:
    _, store = _open(args)
    n = store.unpin_baseline(args.model, args.version)
    print(f"{n} baseline(s) unpinned")
    return 0 if n else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from node.monitoring.evaluate import evaluate
    from node.ops.process import setup_logging

    cfg, store = _open(args)
    setup_logging(cfg.log_level, cfg.logging.format)
    store.claim_monitor_evaluation(0.0, force=True)
    out = evaluate(store, cfg.monitoring)
    for r in out.drift:
        print(f"drift\t{r['model']}\t{r['model_version']}\t{r['test']}\t{r['method']}\tp_adj={r['p_adjusted']:.3g}\t"
              f"effect={r['effect']:.3f}\t{'SIGNIFICANT' if r['significant'] else 'ok'}")
    for line in out.untested:
        print(f"not tested\t{line}")
    for kind, alerts in out.alerts.items():
        for message in alerts.values():
            print(f"ALERT\t{kind}\t{message}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from node.monitoring.report import as_csv, as_html, report_data

    cfg, store = _open(args)
    data = report_data(store, cfg, args.since / 86400.0)
    text = (as_csv(data, args.table) if args.format == "csv"
            else as_html(data, cfg, f"the last {args.since / 86400.0:g} days"))
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from node.monitoring.extract import NOT_FINDINGS, extract, mentions, sections

    text = args.text if args.text is not None else Path(args.file).read_text(encoding="utf-8", errors="replace")
    for heading, body in sections(text):
        for sentence in mentions(body):
            for m in sentence:
                skipped = " (section not read for findings)" if heading in NOT_FINDINGS else ""
                print(f"{heading or '-'}\t{m.finding}\t{m.status}\t{m.text}{skipped}")
    result = extract(text)
    print(json.dumps({"findings": result.findings, "labels": result.labels, "sentences": result.sentences}))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``monitor`` on the ``dicom-node`` command line."""
    p = sub.add_parser("monitor", help="agreement with the radiologists and drift (baseline, evaluate, report)")
    msub = p.add_subparsers(dest="monitor_command", required=True)
    b = msub.add_parser("baseline", help="the operator's drift baseline per model version")
    bsub = b.add_subparsers(dest="baseline_command", required=True)
    s = bsub.add_parser("pin", help="freeze a window of one model version as its drift reference")
    s.add_argument("--config", required=True)
    s.add_argument("--model", required=True, help="cxrreportgen | medimageinsight | medimageparse | medimageparse3d")
    s.add_argument("--version", default=None, help="the model version (default: the only one in the window)")
    s.add_argument("--from", dest="start", type=moment, default=None, help="window start (YYYY-MM-DD[THH:MM])")
    s.add_argument("--to", dest="end", type=moment, default=None, help="window end (exclusive)")
    s.add_argument("--last", type=duration, default=None, help="the window ending now, e.g. 30d")
    s.add_argument("--note", default="", help="why this window (shown on the page)")
    s.add_argument("--by", default="operator", help="who pins it (shown on the page)")
    s.set_defaults(func=cmd_pin)
    s = bsub.add_parser("list", help="the pinned baselines")
    s.add_argument("--config", required=True)
    s.add_argument("--all", action="store_true", help="also the replaced ones")
    s.set_defaults(func=cmd_list)
    s = bsub.add_parser("unpin", help="stop testing a model (version) for drift")
    s.add_argument("--config", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--version", default=None)
    s.set_defaults(func=cmd_unpin)
    s = msub.add_parser("evaluate", help="evaluate drift and agreement alerts now")
    s.add_argument("--config", required=True)
    s.set_defaults(func=cmd_evaluate)
    s = msub.add_parser("report", help="the quality committee's report (HTML or CSV)")
    s.add_argument("--config", required=True)
    s.add_argument("--since", type=duration, default=duration("30d"), help="the window, e.g. 30d (default)")
    s.add_argument("--format", choices=("html", "csv"), default="html")
    s.add_argument("--table", choices=("agreement", "drift"), default="agreement", help="CSV: which table")
    s.add_argument("--out", default=None, help="write here instead of standard output")
    s.set_defaults(func=cmd_report)
    s = msub.add_parser("extract", help="show what the extraction reads in a report text (nothing is stored)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--text")
    g.add_argument("--file")
    s.set_defaults(func=cmd_extract)
