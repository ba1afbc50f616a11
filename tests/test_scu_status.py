"""C-STORE answer classification of the outbox (what is delivered, retried, retried a few times, parked)."""

from __future__ import annotations

import pytest

from node.dicom.scu import classify_status


@pytest.mark.parametrize("status, verdict", [
    (0x0000, "delivered"), (0xB000, "delivered"), (0xB006, "delivered"), (0xB007, "delivered"),
    (0x0111, "delivered"),
    (0xA700, "retry"), (0xA7FF, "retry"), (0x0213, "retry"),
    (0x0110, "retry_limited"), (0xC000, "retry_limited"), (0xC211, "retry_limited"),
    (0xA900, "park"), (0xA9FF, "park"), (0x0122, "park"), (0x0124, "park"),
])
def test_classification(status: int, verdict: str) -> None:
    assert classify_status(status).verdict == verdict
