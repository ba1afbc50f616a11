"""What each of the node's pynetdicom patches relies on, with digests of the pynetdicom code it was checked with.

The patches themselves are in :mod:`node.dicom.pynetdicom_patches` (which re-exports this table);
``tests/test_pynetdicom_patches.py`` recomputes the digests: when pynetdicom changes one of those functions the
test names the patch to re-check (and then its digest is recorded anew here).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

#: The pynetdicom release every patch below was read against and measured with.
PYNETDICOM_CHECKED = "3.0.4"


@dataclass(frozen=True)
class Patch:
    """One change to pynetdicom: why, what it relies on, and the digests of the pynetdicom code it was checked with."""

    name: str
    problem: str
    relies_on: tuple[str, ...]  # private names and behaviours of pynetdicom the patch depends on
    sources: dict[str, str]  # "module:Qualified.name" -> SHA-256 of inspect.getsource() at PYNETDICOM_CHECKED


PATCHES: tuple[Patch, ...] = (
    Patch(
        "settings",
        "received data sets streamed to a file (STORE_RECV_CHUNKED_DATASET); C-FIND/C-GET/C-MOVE identifiers "
        "(PHI) never logged; no per-message handler logging",
        ("_config.STORE_RECV_CHUNKED_DATASET", "_config.LOG_REQUEST_IDENTIFIERS", "_config.LOG_RESPONSE_IDENTIFIERS",
         "_config.LOG_HANDLER_LEVEL"),
        {},
    ),
    Patch(
        "reactor waits",
        "the DUL and association reactors sleep 1 ms per idle loop: ~3 ms asleep per instance on one association "
        "(~240 instances/s); they now wait for work instead (select on the socket and an eventfd woken by "
        "to_provider_queue.put; the DIMSE queue's condition), at most the same 1 ms (node.dicom.netpoll)",
        ("the module global `time` of pynetdicom.dul and pynetdicom.association (replaced by a proxy whose sleep "
         "waits in reactor threads and sleeps elsewhere)",
         "the DUL thread is the DULServiceProvider; its socket is AssociationSocket.socket; every primitive for it "
         "to send arrives through to_provider_queue.put",
         "the acceptor's association thread is the Association; complete messages arrive through "
         "dimse.msg_queue.put"),
        {
            "pynetdicom.dul:DULServiceProvider.run_reactor":
                "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
            "pynetdicom.association:Association._run_reactor":
                "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee",
            "pynetdicom.dul:DULServiceProvider.send_pdu":
                "7cbce5da8594124e9e70c790a68df640d21df11af4220783e752bc607de8dde6",
        },
    ),
    Patch(
        "buffered receive",
        "AssociationSocket.recv read a PDU 4 KiB at a time into a growing bytearray (128 recv calls and copies per "
        "512 KB instance); it now fills one preallocated buffer with recv_into. A P-DATA-TF PDU in Sta6 with "
        "nothing queued before it goes straight to dimse.receive_primitive (what DT-2 does) as views into that "
        "buffer, without the PDU objects, the event/PDU queue hops and the FSM round trip",
        ("AssociationSocket.recv(nr_bytes) returns up to nr_bytes as a bytearray, short only when the peer "
         "closed; socket errors propagate",
         "DULServiceProvider._read_pdu_data is the only reader of the socket; its events and log lines are kept",
         "Sta6 + Evt10 is DT-2: receive_primitive(P_DATA of (context ID, control header + fragment)) -> Sta6",
         "P_DATA._presentation_data_value_list is what the property returns; decode_msg only indexes and slices "
         "the fragments (a memoryview does both)",
         "no handler bound to EVT_DATA_RECV / EVT_PDU_RECV / EVT_FSM_TRANSITION (checked per PDU; else stock path)"),
        {
            "pynetdicom.transport:AssociationSocket.recv":
                "6bc20a33b1b7cfe76d4ad4407ca242563bc6206fde4b4e1cf7a2fbb1f11d621d",
            "pynetdicom.dul:DULServiceProvider._read_pdu_data":
                "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b",
            "pynetdicom.dul:DULServiceProvider._decode_pdu":
                "fc71dd1bf853e1ce79d29b11731a26a4f6ee9eb697026ad611f8fc91f8aa69c9",
            "pynetdicom.fsm:DT_2":
                "9ec543394e0b49eb8be2448fc3f9950361b0047db7cf3742844f377bd225ba73",
            "pynetdicom.fsm:StateMachine.do_action":
                "9a883f44c7f31641b7847b97b51a72abdd31a3c8a9d31031cae7f7d929383dd9",
            "pynetdicom.pdu:P_DATA_TF._generate_items":
                "55a5deea47745b72b787b1115d198e20ba355947da2ccda92987fd372967a141",
            "pynetdicom.pdu:P_DATA_TF.to_primitive":
                "3cba1cd31f03fdf07cab0cdaec8eb85ae5368020e87adf46f46c375ae4ded6b8",
            "pynetdicom.dimse:DIMSEServiceProvider.receive_primitive":
                "5f99c86b14a15cefa87d914cda3591ec4d636d4c53a982e945ec9c1828c6e43f",
            "pynetdicom.pdu_primitives:P_DATA":
                "19c1aa5d5ee978f7dd12a111d1f43ad4eeaa31c95851211aab78ebddd1240c6e",
        },
    ),
    Patch(
        "direct encodings",
        "each C-STORE response's command set was a pydicom Dataset encoded twice (group length, then to send) and "
        "each received file's meta a FileMetaDataset written by pydicom: ~12 % of the SCP's Python time per "
        "instance; the common case is written as bytes (node.dicom.dimse_fast, compared with pynetdicom's and "
        "pydicom's encodings in tests/test_dimse_fast.py), anything else goes the stock way",
        ("DIMSEServiceProvider.send_msg(primitive, context_id) encodes the message and send_pdu()s P-DATA "
         "primitives; a command set that fits one PDV goes as one (control header 0x03)",
         "decode_msg calls the module global `write_file_meta_info(fp, create_file_meta(...))` of dimse_messages",
         "no handler bound to EVT_DIMSE_SENT (checked per response; else stock path)"),
        {
            "pynetdicom.dimse:DIMSEServiceProvider.send_msg":
                "a839cf2fb46976d9da29cf06fea41c04416b38d14fab612af12e5d869bd5b3f0",
            "pynetdicom.dsutils:create_file_meta":
                "035ed415f5aeea15543cca3b0b7b2b6d5a3189bc807a0211f5c633bb356ab9e3",
            "pydicom.filewriter:write_file_meta_info":
                "0568f3155349513bbef9976e179831f8aa76591e0adaa36566a1a17947c667e5",
            "pynetdicom.dimse_messages:DIMSEMessage.primitive_to_message":
                "71fd61d5997f0f0c38abc2d383c4c6457f9c770468288aab04eb82a04d00ce00",
            "pynetdicom.dimse_messages:DIMSEMessage.encode_msg":
                "73000c902c52832dab302ddb3bc274ea93d205a810a197225dd87d4c1212ba57",
        },
    ),
    Patch(
        "uid memo",
        "association negotiation checked every UID of every presentation context twice with regular expressions "
        "(set_uid: the UI validator, then UID.is_valid), ~1.7 ms of ~7.6 ms of Python per association; a value "
        "that passed both is now answered from a bounded memory (node.dicom.uidmemo)",
        ("the module global `set_uid` of pynetdicom.pdu_items, pynetdicom.pdu_primitives and "
         "pynetdicom.presentation (imported by name from pynetdicom.utils)",
         "set_uid has no side effect for a value that passes _config.VALIDATORS['UI'] and is conformant; the "
         "node never changes _config.VALIDATORS"),
        {
            "pynetdicom.utils:set_uid": "f917a8035170f79262606ce81ff903350ae59d272c75d6d15684d9dcde3d178b",
        },
    ),
    Patch(
        "receive guard",
        "a failed write (ENOSPC, EIO) of the chunked receive file killed the DIMSE reactor: the peer saw an abort, "
        "not a status; now the SCP answers 0xA700 (node.dicom.receive_guard)",
        ("the module global `NamedTemporaryFile` of pynetdicom.dimse_messages",
         "decode_msg writes fragments with `.write()` and flushes with `.file.flush()`; `.name` is the path",
         "the C-STORE request primitive's `_dataset_file` is that file, open until the handler returns"),
        {
            "pynetdicom.dimse_messages:DIMSEMessage.decode_msg":
                "f51c777e841a76beeaadfe3015bd4f4a68387229a72f13f3a3b7846d01d72284",
            "pynetdicom.dimse_messages:DIMSEMessage.message_to_primitive":
                "f8f43d34e43450efa31bd308677b85b370f8ca7600c0e067e854f8095ce665ac",
            "pynetdicom.service_class:StorageServiceClass.SCP":
                "63afca7fc6c6e7ee6e6eb303dd6aa72c1e69dbfcb94dd91c9e90ea6d900a4c40",
        },
    ),
    Patch(
        "cheap context copies",
        "every association deep-copied the server's 170 supported contexts (~44 ms, the whole cost of a "
        "one-instance association); a copy of each context's attributes with its lists copied is as deep",
        ("AssociationServer.contexts (a list deep-copied per association)",
         "PresentationContext holds only immutable values and lists (e.g. _transfer_syntax)"),
        {
            "pynetdicom.transport:RequestHandler._create_association":
                "05c8d12b79863cdbdb901ce37187b7030a0434c5cd89d219ed0bedbda679a61e",
            "pynetdicom.transport:AssociationServer.__init__":
                "edacb98bdfb7b9744194698d47fa51d4e2d5c9ed02ef5fb5181f381b31118423",
            "pynetdicom.presentation:PresentationContext.__init__":
                "37a8842ac07cd8f364dba03f5f7a59c23a0068341873edd81d367ad0c75596d9",
        },
    ),
    Patch(
        "nodelay and quick ACKs",
        "against a sender that keeps Nagle's algorithm on (dcmtk without TCP_NODELAY=1) a delayed ACK costs ~40 ms "
        "per instance on loopback (~20/s); TCP_NODELAY and re-armed TCP_QUICKACK on accepted sockets (~140/s)",
        ("AssociationServer.get_request returns the accepted socket (wrapped only when ssl_context is set)",
         "AssociationSocket.recv calls socket.recv on that socket"),
        {
            "pynetdicom.transport:AssociationServer.get_request":
                "925a4f3a3042f6e4b944505d06dc19c41e10ff7dec5385c794d62d31fd000300",
            "pynetdicom.transport:AssociationSocket.recv":
                "6bc20a33b1b7cfe76d4ad4407ca242563bc6206fde4b4e1cf7a2fbb1f11d621d",
        },
    ),
    Patch(
        "shared port",
        "one receiving process is bound by its GIL; SO_REUSEPORT lets node.receivers processes share the port "
        "(4 associations, 2 cores: ~145 -> ~230 instances/s)",
        ("AssociationServer.server_bind binds self.socket",),
        {
            "pynetdicom.transport:AssociationServer.server_bind":
                "cf69278a05a5c777b7e9e9af0769e3102618027b2ec8035a30af8cc370ebdae6",
        },
    ),
    Patch(
        "TLS handshake per connection",
        "with ssl_context the handshake runs in the accept loop: one client that never sends a ClientHello stalls "
        "every new association; the handshake runs in the connection's thread, bounded by a timeout",
        ("ThreadedAssociationServer.process_request_thread(request, client_address) serves one connection",
         "ApplicationEntity.make_server instantiates server_class itself (the SSL context travels in the class)"),
        {
            "pynetdicom.transport:ThreadedAssociationServer.process_request_thread":
                "9e76e9b9c8a3d8b18bb1df7ac652c86f21b4aaaf39e10deca9312f91a7c21a8a",
            "pynetdicom.ae:ApplicationEntity.make_server":
                "6569298ac5cf837c040e6e5bcf3761f69f3792b21b15085f34ebbafcc29b9904",
        },
    ),
    Patch(
        "server tracking",
        "a server made with make_server (to choose its server_class) is unknown to AE.shutdown(); it is added to "
        "the AE's private server list, as start_server does",
        ("ApplicationEntity._servers",),
        {
            "pynetdicom.ae:ApplicationEntity.shutdown":
                "3084723b79cf471ee5866c61327fc3a7af8f3976791a3c946baec4b15f5c6d49",
        },
    ),
)


def source_digest(target: str) -> str:
    """SHA-256 of ``inspect.getsource`` of ``"module:Qualified.name"`` (a pynetdicom function or method)."""
    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    obj = getattr(obj, "__pynetdicom_original__", obj)  # pynetdicom's own code, also once a patch replaced it
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def changed_sources() -> list[tuple[Patch, str]]:
    """(patch, target) for every pynetdicom function whose source differs from the one the patch was checked with."""
    return [(patch, target) for patch in PATCHES for target, digest in patch.sources.items()
            if source_digest(target) != digest]
