"""``node.receivers`` when not set: the count chosen from the usable cores, and the port check before sharing it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from node.dicom import cores
from node.dicom.receivers import check_port_free


@pytest.mark.parametrize("n,expected", [(1, 1), (2, 1), (3, 1), (4, 2), (6, 3), (8, 4), (16, 4), (64, 4)])
def test_auto_receivers(n: int, expected: int) -> None:
    assert cores.auto_receivers(n) == expected


def test_cgroup_quota_caps_the_affinity(tmp_path: Path) -> None:
    affinity = cores.usable_cores(tmp_path / "absent")
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # --cpus=1.5
    assert cores.usable_cores(quota) == min(affinity, 2)
    quota.write_text("max 100000\n")
    assert cores.usable_cores(quota) == affinity


def test_config_default_is_the_automatic_choice(tmp_path: Path) -> None:
    from node.config_sections import NodeSection

    assert NodeSection().receivers == cores.auto_receivers()
    assert NodeSection(receivers=3).receivers == 3


def test_port_check_fails_when_something_listens() -> None:
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even a shareable listener counts
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        with pytest.raises(OSError):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # closed: free again
