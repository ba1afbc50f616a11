"""The SCP's per-association copy of its supported contexts (node.dicom.pynetdicom_patches._ContextList) is a real deep copy."""

from __future__ import annotations

import copy

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts

from node.dicom.pynetdicom_patches import _ContextList


def test_cheap_copy_equals_deepcopy_and_shares_no_list() -> None:
    ae = AE()
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    contexts = _ContextList(ae.supported_contexts)
    cheap = copy.deepcopy(contexts)
    reference = copy.deepcopy(list(contexts))
    assert len(cheap) == len(reference) == len(contexts)
    for a, b, original in zip(cheap, reference, contexts):
        assert type(a) is type(b)
        assert vars(a) == vars(b)
        assert a is not original and a._transfer_syntax is not original._transfer_syntax
    before = list(contexts[0].transfer_syntax)
    cheap[0]._transfer_syntax.clear()  # negotiation may change a copy...
    cheap[0].context_id = 1
    assert contexts[0].transfer_syntax == before and len(before) > 1  # ...never the server's own contexts
    assert contexts[0].context_id is None
