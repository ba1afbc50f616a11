"""node.dicom.uidmemo: negotiation's UIDs answered from memory once they passed pynetdicom's checks, and only then."""

from __future__ import annotations

import logging

import pytest
from pydicom.uid import UID
from pynetdicom import utils

from node.dicom.uidmemo import ValidUidMemo

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


class Counting:
    """pynetdicom's own set_uid, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return utils.set_uid(*args, **kwargs)


def test_a_valid_uid_is_checked_once_and_the_same_uid_comes_back() -> None:
    stock = Counting()
    memo = ValidUidMemo(stock)
    first = memo(CT_IMAGE.encode(), "Abstract Syntax Name")
    again = memo(CT_IMAGE.encode(), "Abstract Syntax Name")
    as_str = memo(CT_IMAGE, "abstract_syntax", True, False, True)
    assert first == CT_IMAGE and isinstance(first, UID)
    assert again is first
    assert as_str == CT_IMAGE and isinstance(as_str, UID)
    assert stock.calls == 2  # once for the bytes, once for the str


def test_invalid_values_raise_every_time() -> None:
    stock = Counting()
    memo = ValidUidMemo(stock)
    too_long = "1.2." + "3" * 70
    for _ in range(2):
        with pytest.raises(ValueError, match="Invalid 'Abstract Syntax Name'"):
            memo(too_long, "Abstract Syntax Name")
    assert stock.calls == 2
    with pytest.raises(ValueError):
        memo("", "Application Context Name", False, False)  # empty not allowed: still refused
    assert memo(None, "SOP Class UID") is None
    assert memo("", "SOP Class UID") == ""


def test_a_non_conformant_uid_is_warned_about_every_time(caplog: pytest.LogCaptureFixture) -> None:
    stock = Counting()
    memo = ValidUidMemo(stock)
    leading_zero = "1.2.03.4"  # valid characters, but a component with a leading zero is not conformant
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        assert memo(leading_zero, "Abstract Syntax Name") == leading_zero
        assert memo(leading_zero, "Abstract Syntax Name") == leading_zero
    assert stock.calls == 2
    assert sum("Non-conformant" in r.getMessage() for r in caplog.records) == 2


def test_unchecked_values_are_not_remembered() -> None:
    stock = Counting()
    memo = ValidUidMemo(stock)
    memo(CT_IMAGE, "Transfer Syntax Name", validate=False)
    memo(CT_IMAGE, "Transfer Syntax Name")
    assert stock.calls == 2  # the first answer was not checked, so it taught nothing


def test_memory_is_bounded() -> None:
    stock = Counting()
    memo = ValidUidMemo(stock, limit=3)
    uids = [f"1.2.826.0.1.{n}" for n in range(1, 6)]
    for uid in uids:
        assert memo(uid, "SOP Class UID") == uid
    assert len(memo.known) == 3
    for uid in uids:
        assert memo(uid, "SOP Class UID") == uid
    assert stock.calls == 5 + 2  # the two beyond the limit are checked each time
