"""DICOM TLS and access control on the Storage SCP and the SCU, against real peers (dcmtk storescu/storescp,
Python's ssl client, pynetdicom), on loopback, with a throw-away CA made by the test."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from support.dcmtk import TlsStorescp, echoscu, storescu
from node.ops.audit import read_events
from node.config import parse_config
from support.ports import free_port
from node.dicom.scp import StorageSCP
from node.flow.intake import Intake
from node.store.spool import Spool
from node.store.state import Store
from node.dicom.tls import BCP195_CIPHERS
from support.tlscerts import Pki, make_pki

pytestmark = pytest.mark.security


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class TlsNode:
    """The node's Storage SCP in this process, with a plain and a TLS port."""

    def __init__(self, tmp: Path, pki: Pki, *, handshake_timeout: float = 10.0, require_client_cert: bool = True,
                 **node_overrides) -> None:
        node = {"ae_title": "AINODE", "host": "127.0.0.1", "port": free_port(), "storage_dir": str(tmp / "var"),
                "study_complete_after_seconds": 5, "min_free_disk_mb": 0,
                "tls": {"port": free_port(), "cert_file": str(pki.server.cert), "key_file": str(pki.server.key),
                        "ca_file": str(pki.ca.cert), "require_client_cert": require_client_cert,
                        "handshake_timeout_seconds": handshake_timeout}}
        node.update(node_overrides)
        self.cfg = parse_config({"node": node})
        self.spool = Spool(self.cfg.storage_dir)
        self.spool.create()
        self.store = Store.open(self.cfg.database_url)
        self.scp = StorageSCP(self.cfg, self.store, self.spool, Intake(self.cfg, self.store, queue=None))

    def __enter__(self) -> "TlsNode":
        self.scp.start()
        return self

    def __exit__(self, *exc) -> None:
        self.scp.stop(drain_seconds=5)
        self.store.engine.dispose()

    @property
    def tls_port(self) -> int:
        return int(self.cfg.node.tls.port)

    def stored(self) -> int:
        with self.store.engine.connect() as conn:
            return conn.exec_driver_sql("SELECT count(*) FROM instances").scalar_one()

    def events(self, name: str | None = None) -> list[dict]:
        return [e for e in read_events(self.cfg.audit_path) if name is None or e["event"] == name]


def make_instance(folder: Path, data: Path, name: str = "cr_pa_jpeg_baseline.dcm") -> Path:
    ds = pydicom.dcmread(data / "cxr" / name)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def tls_storescu(port: int, f: Path, key: Path | None, cert: Path | None, ca: Path, *, timeout: float = 60,
                 calling_ae: str = "MODALITY") -> subprocess.CompletedProcess[str]:
    tls = ["+tls", str(key), str(cert)] if key is not None else ["+tla"]
    return storescu("127.0.0.1", port, [f], calling_ae=calling_ae,
                    extra=[*tls, "+cf", str(ca), "-xy", "-to", "10", "-ta", "10", "-td", "10"], timeout=timeout)


def test_storescu_over_tls_with_a_trusted_client_certificate(tmp_path: Path, data: Path, pki: Pki) -> None:
    f = make_instance(tmp_path / "in", data)
    with TlsNode(tmp_path, pki) as node:
        proc = tls_storescu(node.tls_port, f, pki.client.key, pki.client.cert, pki.ca.cert)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert node.stored() == 1
        assert echoscu("127.0.0.1", node.cfg.node.port, "AINODE").returncode == 0, "the plain port stays"
        start = [e for e in node.events("association-start") if e["tls"]]
        assert start and start[0]["tls_version"] in ("TLSv1.2", "TLSv1.3")
        assert start[0]["peer_certificate_cn"] == "modality" and start[0]["calling_ae"] == "MODALITY"
        received = node.events("instance-received")
        assert [e["sop_instance_uid"] for e in received] == [pydicom.dcmread(f).SOPInstanceUID]
        ends = node.events("association-end")
        assert any(e["instances_received"] == 1 and e["ended"] == "released" for e in ends), ends


def test_untrusted_or_missing_client_certificate_is_refused(tmp_path: Path, data: Path, pki: Pki) -> None:
    f = make_instance(tmp_path / "in", data)
    with TlsNode(tmp_path, pki) as node:
        rogue = tls_storescu(node.tls_port, f, pki.rogue_client.key, pki.rogue_client.cert, pki.ca.cert)
        anonymous = tls_storescu(node.tls_port, f, None, None, pki.ca.cert)
        plain_on_tls_port = storescu("127.0.0.1", node.tls_port, [f], extra=["-xy", "-to", "5", "-ta", "5"])
        assert rogue.returncode != 0 and anonymous.returncode != 0 and plain_on_tls_port.returncode != 0
        assert node.stored() == 0
        failures = node.events("tls-failure")
        assert len(failures) >= 2 and all(e["peer_host"] == "127.0.0.1" for e in failures), failures
        assert not node.events("association-start")


def test_a_silent_tcp_client_does_not_stall_tls_associations(tmp_path: Path, data: Path, pki: Pki) -> None:
    """pynetdicom alone does the handshake in its accept loop: a client that never sends a ClientHello would
    hold every later association for the whole handshake timeout. Here it must not."""
    f = make_instance(tmp_path / "in", data)
    timeout = 10.0  # the association must finish well inside it, on a busy machine too
    with TlsNode(tmp_path, pki, handshake_timeout=timeout) as node:
        silent = [socket.create_connection(("127.0.0.1", node.tls_port)) for _ in range(3)]
        try:
            time.sleep(0.3)  # the server has accepted them by now
            t0 = time.monotonic()
            proc = tls_storescu(node.tls_port, f, pki.client.key, pki.client.cert, pki.ca.cert)
            elapsed = time.monotonic() - t0
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert elapsed < timeout / 2, f"a TLS association took {elapsed:.2f} s behind silent clients"
            print(f"\nTLS C-STORE behind 3 silent TCP clients: {elapsed:.2f} s (handshake timeout {timeout:.0f} s)")
            # The silent clients are dropped once the handshake timeout has passed.
            silent[0].settimeout(timeout + 5)
            t1 = time.monotonic()
            assert silent[0].recv(1) == b""
            assert time.monotonic() - t0 >= timeout - 1.0 and time.monotonic() - t1 < timeout + 5
        finally:
            for s in silent:
                s.close()
        assert node.stored() == 1
        assert any(e["reason"] == "timed out" for e in node.events("tls-failure"))


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_versions_and_ciphers_follow_bcp195(tmp_path: Path, pki: Pki) -> None:
    with TlsNode(tmp_path, pki) as node:
        def handshake(**kw) -> tuple[str, str]:
            ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
            ctx.load_cert_chain(str(pki.client.cert), str(pki.client.key))
            for k, v in kw.items():
                setattr(ctx, k, v)
            with socket.create_connection(("127.0.0.1", node.tls_port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    return s.version(), s.cipher()[0]

        assert handshake()[0] == "TLSv1.3"
        version, cipher = handshake(maximum_version=ssl.TLSVersion.TLSv1_2)
        assert version == "TLSv1.2" and cipher in BCP195_CIPHERS.split(":")
        with pytest.raises((ssl.SSLError, OSError)):
            handshake(minimum_version=ssl.TLSVersion.TLSv1, maximum_version=ssl.TLSVersion.TLSv1_1)
        ctx12 = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx12.load_cert_chain(str(pki.client.cert), str(pki.client.key))
        ctx12.set_ciphers("AES128-SHA256:AES256-SHA")  # static RSA, CBC: not BCP 195
        with pytest.raises((ssl.SSLError, OSError)):
            with socket.create_connection(("127.0.0.1", node.tls_port), timeout=10) as raw:
                ctx12.wrap_socket(raw, server_hostname="127.0.0.1").close()


def test_host_allowlist_per_calling_ae_title(tmp_path: Path, data: Path, pki: Pki) -> None:
    f = make_instance(tmp_path / "in", data)
    allowed = {"FARAWAY": ["10.0.0.0/8"], "LOCAL": ["127.0.0.0/8", "::1"]}
    with TlsNode(tmp_path, pki, allowed_hosts=allowed, allowed_calling_ae_titles=["FARAWAY", "LOCAL", "ANY"]) as node:
        port = node.cfg.node.port
        refused = storescu("127.0.0.1", port, [f], calling_ae="FARAWAY", extra=["-xy"])
        unknown = storescu("127.0.0.1", port, [f], calling_ae="STRANGER", extra=["-xy"])
        assert refused.returncode != 0 and unknown.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stderr + refused.stdout, refused.stderr
        assert node.stored() == 0
        assert storescu("127.0.0.1", port, [f], calling_ae="LOCAL", extra=["-xy"]).returncode == 0
        assert storescu("127.0.0.1", port, [make_instance(tmp_path / "in2", data)], calling_ae="ANY",
                        extra=["-xy"]).returncode == 0, "AE titles without a host list are not host-restricted"
        assert node.stored() == 2
        rejected = node.events("association-rejected")
        assert {(e["calling_ae"], e["reason"]) for e in rejected} == {
            ("FARAWAY", "host not in allowed_hosts for this calling AE title"),
            ("STRANGER", "calling AE title not in allowed_calling_ae_titles")}
        assert all(e["event_id"]["code"] == "110113" for e in rejected)


# --- SCU ---------------------------------------------------------------------------------------------------------

def test_scu_sends_results_over_tls_and_refuses_an_untrusted_peer(tmp_path: Path, data: Path, pki: Pki) -> None:
    from node.dicom.scu import OutgoingFile, send_files

    f = make_instance(tmp_path / "out", data, "cr_pa_mono1_uncompressed.dcm")  # results are uncompressed
    sop_class = str(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID)
    with TlsStorescp(tmp_path / "pacs", pki) as pacs:
        def dest(**tls):
            cfg = parse_config({"destinations": {"p": {"ae_title": "TLSPACS", "host": "127.0.0.1", "port": pacs.port,
                                                       "timeout_seconds": 10, "tls": tls}}})
            return cfg.destinations["p"]

        good = dest(ca_file=str(pki.ca.cert), cert_file=str(pki.client.cert), key_file=str(pki.client.key))
        out = send_files(good, "AINODE", [OutgoingFile(1, f, sop_class)])
        assert out[1].verdict == "delivered", out
        assert len(pacs.received()) == 1
        # The PACS's certificate does not chain to the CA we trust: nothing is sent.
        wrong_ca = dest(ca_file=str(pki.rogue_ca.cert), cert_file=str(pki.client.cert), key_file=str(pki.client.key))
        out = send_files(wrong_ca, "AINODE", [OutgoingFile(2, f, sop_class)])
        assert out[2].verdict == "retry" and out[2].status == "network", out
        # Our certificate is not one the PACS trusts: refused there.
        rogue = dest(ca_file=str(pki.ca.cert), cert_file=str(pki.rogue_client.cert), key_file=str(pki.rogue_client.key))
        out = send_files(rogue, "AINODE", [OutgoingFile(3, f, sop_class)])
        assert out[3].verdict == "retry", out
        # The name in the PACS's certificate must match what we connect to.
        wrong_name = dest(ca_file=str(pki.ca.cert), cert_file=str(pki.client.cert), key_file=str(pki.client.key),
                          server_name="pacs.example.org")
        assert send_files(wrong_name, "AINODE", [OutgoingFile(4, f, sop_class)])[4].verdict == "retry"
        assert len(pacs.received()) == 1


def test_check_config_loads_the_tls_files(tmp_path: Path, pki: Pki) -> None:
    import sys

    import yaml

    def check(tls: dict) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "node.yaml"
        path.write_text(yaml.safe_dump({"node": {"tls": tls}, "destinations": {
            "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104, "tls": {"ca_file": str(pki.ca.cert)}}}}))
        return subprocess.run([sys.executable, "-m", "node.cli", "check-config", str(path)], capture_output=True,
                              text=True, timeout=60)

    good = {"port": 2762, "cert_file": str(pki.server.cert), "key_file": str(pki.server.key),
            "ca_file": str(pki.ca.cert)}
    ok = check(good)
    assert ok.returncode == 0 and "DICOM TLS on port 2762" in ok.stdout and "destination pacs: DICOM TLS" in ok.stdout
    bad = check({**good, "key_file": str(pki.client.key)})  # a key that does not match the certificate
    assert bad.returncode == 2 and "node.tls: cannot load cert_file/key_file" in bad.stderr, bad.stderr
    no_ca = check({k: v for k, v in good.items() if k != "ca_file"})
    assert no_ca.returncode == 2 and "require_client_cert needs ca_file" in no_ca.stderr, no_ca.stderr
