"""node/dicom is the DICOM layer: it never imports the flow (rules, jobs, queue), the models or serve.

Scans every import, function-level ones included, so that a new dependency upward cannot hide in a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

DICOM = Path(__file__).resolve().parents[1] / "node" / "dicom"
FORBIDDEN = ("node.flow", "node.models", "node.serve")
#: Known, to be moved: the receiver child's entry point (``python -m node.dicom.receivers``) composes the SCP with
#: the flow's queue (quiet timers), the worker's parent-death helper and serve's logging setup. It belongs with
#: ``serve`` (the composition layer); ReceiverPool itself needs none of these.
KNOWN = {("receivers.py", "node.flow.queue"), ("receivers.py", "node.flow.worker"), ("receivers.py", "node.serve")}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_dicom_layer_imports_nothing_above_it() -> None:
    bad = {(path.name, module) for path in sorted(DICOM.glob("*.py")) for module in _imports(path)
           if module.startswith(FORBIDDEN)}
    assert bad - KNOWN == set(), f"node/dicom must not import the flow, the models or serve: {sorted(bad - KNOWN)}"
