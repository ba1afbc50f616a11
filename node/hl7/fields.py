"""One field component of a python-hl7 segment, read positionally and tolerantly (inbound messages of v2.3-v2.8)."""

from __future__ import annotations

from typing import Any

import hl7


def component(seg: Any, field: int, component: int = 1, repetition: int = 0) -> str:
    """The raw text (still HL7-escaped) of ``seg``-``field``.``component`` in repetition ``repetition``.

    A missing segment, field, repetition or component is "", as is a component past the first of a field that has
    no components.
    """
    if seg is None or len(seg) <= field:
        return ""
    value = seg[field]
    try:
        if isinstance(value, hl7.Repetition) or (
                isinstance(value, hl7.Field) and value and isinstance(value[0], hl7.Repetition)):
            value = value[repetition]
        if isinstance(value, (hl7.Field, hl7.Repetition)) and len(value) and isinstance(value[0], hl7.Component):
            value = value[component - 1] if component <= len(value) else ""
        elif component > 1:
            value = ""
    except (IndexError, TypeError):
        return ""
    return str(value)
