"""The shape of the code (the architecture issue): no import cycles, layers that stay apart, small modules, one
registry line per model."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support.data import REPO

PACKAGES = ("node", "converters", "dicom_out")
MAX_MODULE_LINES = 420  # "no module over ~400 lines"


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module ``name`` imports, at module level or inside functions (a lazy import is still an edge)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:  # `from pkg import name`: the module pkg.name, or pkg itself
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (module-level and function-level imports alike): " + "; ".join(
        " <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("layer", ["converters", "dicom_out"])
def test_converters_and_writers_import_nothing_from_node(layer: str) -> None:
    graph = _graph()
    bad = {m: sorted(d for d in deps if d.split(".")[0] == "node") for m, deps in graph.items()
           if m.split(".")[0] == layer}
    assert not {m: d for m, d in bad.items() if d}, bad


def test_transport_and_network_layers_know_no_model() -> None:
    """node.invoke is HTTP and credentials only; node.dicom (networking) and node.store (state) know no model, no flow
    and no process supervision: everything above them may import them, never the other way round."""
    graph = _graph()
    rules = {"node.invoke": ("node.models", "node.flow", "node.dicom", "node.store"),
             "node.dicom": ("node.models", "node.flow", "node.serve", "node.cli"),
             "node.store": ("node.models", "node.flow", "node.dicom", "node.serve", "node.cli")}
    bad = []
    for mod, deps in graph.items():
        for layer, forbidden in rules.items():
            if mod == layer or mod.startswith(layer + "."):
                bad += [f"{mod} -> {d}" for d in deps if any(d == f or d.startswith(f + ".") for f in forbidden)]
    assert not bad, bad


def test_no_module_over_the_size_limit() -> None:
    big = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_the_registry_names_every_part_of_every_model() -> None:
    from pydantic import BaseModel

    from node.config import parse_config
    from node.emulator import ModelHandler
    from node.models.registry import MODELS

    assert sorted(MODELS) == ["cxrreportgen", "medimageinsight", "medimageparse", "medimageparse3d"]
    for name, spec in MODELS.items():
        assert callable(spec.load_pipeline()), name
        handler = spec.load_emulator()
        assert isinstance(handler, ModelHandler), name
        assert spec.load_contract().__doc__, name
        schema = spec.params_schema()
        assert schema is None or issubclass(schema, BaseModel), name
        # a configuration may name the model
        parse_config({"endpoints": {"e": {"model": name, "url": "http://127.0.0.1:1/score", "auth": "none"}}})


def test_the_command_line_imports_no_metrics_before_serve_sets_them_up() -> None:
    """prometheus_client picks its multiprocess mode when imported: `dicom-node serve` must prepare the metrics folder
    first, so parsing the command line may not import it (the SCP's counters were silently lost when it did)."""
    import subprocess
    import sys

    from dicom_out.kos import REJECTION_TITLES
    from node.cli_rules import REASON_CHOICES

    assert sorted(REASON_CHOICES) == sorted(REJECTION_TITLES)
    code = ("import sys; from node import cli; cli.build_parser(); "
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
