"""node.dicom.pynetdicom_patches: the pynetdicom code each patch relies on is the code it was checked against.

When one of these fails after a pynetdicom upgrade, read the changed function, re-check the named patch (and
re-measure what its docstring promises), then record the new digest in ``PATCHES``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pynetdicom
import pytest

from node.dicom import pynetdicom_patches, receive_guard
from node.dicom.pynetdicom_patches import PATCHES, PYNETDICOM_CHECKED, source_digest

TARGETS = [(patch, target, digest) for patch in PATCHES for target, digest in patch.sources.items()]


def test_pynetdicom_is_the_checked_version() -> None:
    assert pynetdicom.__version__ == PYNETDICOM_CHECKED, (
        f"pynetdicom {pynetdicom.__version__} is installed; every patch in node/dicom/pynetdicom_patches.py was "
        f"checked against {PYNETDICOM_CHECKED}: re-check them (the digest tests name what changed) and update "
        "PYNETDICOM_CHECKED")


@pytest.mark.parametrize("patch,target,digest", TARGETS, ids=[t for _, t, _ in TARGETS])
def test_patched_pynetdicom_code_is_unchanged(patch: pynetdicom_patches.Patch, target: str, digest: str) -> None:
    assert source_digest(target) == digest, (
        f"pynetdicom {pynetdicom.__version__} changed {target}: re-check the patch '{patch.name}' "
        f"({patch.problem}); it relies on: {'; '.join(patch.relies_on)}. Then record the new digest "
        f"{source_digest(target)} in node/dicom/pynetdicom_patches.py")


def test_every_patch_is_documented() -> None:
    names = [p.name for p in PATCHES]
    assert len(names) == len(set(names))
    for patch in PATCHES:
        assert patch.problem and patch.relies_on, patch.name


def test_settings_exist_in_pynetdicom() -> None:
    from pynetdicom import _config

    for patch in PATCHES:
        for name in patch.relies_on:
            if name.startswith("_config."):
                assert hasattr(_config, name.removeprefix("_config.")), (
                    f"pynetdicom._config has no {name} any more: re-check the patch '{patch.name}'")


def test_configure_installs_every_patch() -> None:
    from pynetdicom import _config, association, dimse_messages, dul

    pynetdicom_patches.configure_pynetdicom()
    pynetdicom_patches.configure_pynetdicom()  # idempotent
    assert _config.STORE_RECV_CHUNKED_DATASET is True
    assert _config.LOG_REQUEST_IDENTIFIERS is False and _config.LOG_RESPONSE_IDENTIFIERS is False
    assert _config.LOG_HANDLER_LEVEL == "none"
    assert dul.time.sleep is pynetdicom_patches._reactor_sleep is association.time.sleep
    from pynetdicom.transport import AssociationSocket
    assert AssociationSocket.recv is pynetdicom_patches._recv_exact
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.dul import DULServiceProvider
    assert DULServiceProvider._read_pdu_data is pynetdicom_patches._read_pdu_data
    assert DIMSEServiceProvider.send_msg is pynetdicom_patches._send_msg
    assert dimse_messages.write_file_meta_info is pynetdicom_patches._write_file_meta_info
    assert dimse_messages.NamedTemporaryFile is receive_guard.GuardedTempFile
    from pynetdicom import pdu_items, pdu_primitives, presentation, utils
    assert pdu_items.set_uid is pdu_primitives.set_uid is presentation.set_uid is pynetdicom_patches._uid_memo
    assert utils.set_uid is pynetdicom_patches._uid_memo.set_uid  # everywhere else: pynetdicom's own


NODE = Path(__file__).resolve().parents[1] / "node"


def _patching_lines(path: Path) -> list[str]:
    """Assignments to attributes of pynetdicom's modules, subclasses of its classes, ``._servers`` uses."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pyn_names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pynetdicom"):
            pyn_names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            pyn_names.update(a.asname or a.name for a in node.names if a.name.startswith("pynetdicom"))
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        for t in targets:
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in pyn_names:
                found.append(f"{path.name}:{node.lineno} assigns {t.value.id}.{t.attr}")
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                if isinstance(base, ast.Name) and base.id in pyn_names:
                    found.append(f"{path.name}:{node.lineno} subclasses {base.id}")
        if isinstance(node, ast.Attribute) and node.attr == "_servers":
            found.append(f"{path.name}:{node.lineno} uses ._servers")
    return found


def test_no_pynetdicom_patch_outside_the_patches_module() -> None:
    found = [line for path in sorted(NODE.rglob("*.py")) if path.name != "pynetdicom_patches.py"
             for line in _patching_lines(path)]
    assert not found, f"patch pynetdicom in node/dicom/pynetdicom_patches.py only: {found}"


def test_digests_see_pynetdicoms_code_after_the_patches_are_installed() -> None:
    """Patches that replace a method keep pynetdicom's own function for the digest check (and a second install)."""
    pynetdicom_patches.configure_pynetdicom()
    pynetdicom_patches.configure_pynetdicom()
    assert pynetdicom_patches.changed_sources() == []
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.transport import AssociationSocket

    assert AssociationSocket.recv.__pynetdicom_original__ is not pynetdicom_patches._recv_exact
    assert DIMSEServiceProvider.send_msg.__pynetdicom_original__.__module__ == "pynetdicom.dimse"
