"""Validating audit messages against the DICOM Audit Message Schema (PS3.15 A.5.1, ``audit-message.rng``).

For the tests and for checking a repository's capture by hand (``python -m node.audit.schema FILE...``); needs
lxml (the ``test`` extra). The node itself builds messages with the standard library only.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).with_name("audit-message.rng")


@lru_cache(maxsize=1)
def _relaxng() -> Any:
    from lxml import etree

    return etree.RelaxNG(etree.parse(str(SCHEMA)))


def errors(xml: bytes) -> list[str]:
    """Why ``xml`` is not a valid DICOM audit message; empty when it is."""
    from lxml import etree

    try:
        doc = etree.fromstring(xml)
    except etree.XMLSyntaxError as exc:
        return [f"not well-formed XML: {exc}"]
    schema = _relaxng()
    if schema.validate(doc):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]


def main(paths: list[str]) -> int:
    bad = 0
    for p in paths:
        found = errors(Path(p).read_bytes())
        bad += bool(found)
        print(f"{p}: {'valid' if not found else '; '.join(found)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
