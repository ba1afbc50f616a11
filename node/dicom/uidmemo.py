"""A memory of the UIDs that passed pynetdicom's checks, for association negotiation.

Every association request brings the same few hundred UIDs (an abstract syntax and its transfer syntaxes per
presentation context: storescu proposes ~120 contexts), and pynetdicom checks each one twice with regular
expressions (``pynetdicom.utils.set_uid``: the validator, then ``UID.is_valid``) as it decodes the PDU items and
again as it builds the presentation contexts. Profiled (py-spy, one association per CT slice) that was ~1.7 ms of
the ~7.6 ms of Python an association cost.

:class:`ValidUidMemo` wraps ``set_uid``: a value it has already seen pass both checks is answered from memory, with
the same :class:`~pydicom.uid.UID`; anything else (None, empty, invalid, valid but non-conformant) goes through
``set_uid`` every time, with its errors and log lines. It is installed only where negotiation decodes UIDs
(:func:`node.dicom.pynetdicom_patches.install_uid_memo`), not for the per-message instance UIDs, and remembers at
most ``limit`` values (then it only answers from what it has).
"""

from __future__ import annotations

from typing import Callable

from pydicom.uid import UID

SetUid = Callable[..., "UID | None"]


class ValidUidMemo:
    """``set_uid`` answered from memory for values it found valid and conformant before (see the module docs)."""

    def __init__(self, set_uid: SetUid, limit: int = 4096) -> None:
        self.set_uid = set_uid
        self.limit = limit
        self.known: dict[str | bytes, UID] = {}

    def __call__(self, value: None | str | bytes | UID, name: str, allow_empty: bool = True,
                 allow_none: bool = True, validate: bool = True) -> UID | None:
        if value:
            known = self.known.get(value)  # type: ignore[arg-type]
            if known is not None:
                return known
        uid = self.set_uid(value, name, allow_empty, allow_none, validate)
        if validate and uid and uid.is_valid and len(self.known) < self.limit:
            self.known[value] = uid  # type: ignore[index]
        return uid
