"""The README's role table (the table whose header starts ``| who |``), read as data: the tests
check the code and a real sign-in against it, so the table cannot drift from what the node does."""

from __future__ import annotations

from .data import REPO

#: the table's columns -> the capability of node.http.auth.NEEDS each one names
COLUMNS = {"status pages": "pages", "patient identifiers": "phi", "retry, retract, rerun": "actions",
           "STOW-RS in": "stow"}


def readme_role_table() -> dict[str, dict[str, bool]]:
    """Row label (backquotes removed) -> capability -> allowed ("yes..." in the cell)."""
    lines = [line.strip() for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("| who |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    assert [COLUMNS.get(h) for h in header[1:]] == list(COLUMNS.values()), header
    table: dict[str, dict[str, bool]] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0].replace("`", "")] = {COLUMNS[h]: c.lower().startswith("yes") for h, c in zip(header[1:], cells[1:])}
    return table
