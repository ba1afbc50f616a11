"""An emulated UPS-RS worklist (EMULATED), for tests and demos of the node's AIW-I Task Performer.

Written from DICOM PS3.18 §11 (Worklist Service: create, search, retrieve, update, change state, request
cancellation), PS3.4 Annex CC (the UPS state machine, Table CC.1.1-2, and the final state requirements of Table
CC.2.5-3) and Microsoft's Azure DICOM service v2 conformance statement (one worklist under ``/v2``, its ten
searchable attributes, ``limit`` up to 200, 409 on a claim of an IN PROGRESS workitem, 400 on a wrong or missing
Transaction UID, no Transaction UID in a retrieved workitem, no Watch or Event SOP classes: performers poll). It
imports nothing of ``node/dicomweb`` or ``node/ups``: it checks the client, it does not share its code.
"""

from node.emulator.ups_rs.server import UpsRsEmulator
from node.emulator.ups_rs.worklist import Worklist, final_state_problem

__all__ = ["UpsRsEmulator", "Worklist", "final_state_problem"]
