"""An emulated Azure DICOM service (Azure Health Data Services), for tests and demos.

It follows Microsoft's documented v2 API (the DICOM service conformance statement v2 and the change feed overview;
summarised in ``/work/shared/NOTES.md``): DICOMweb only, under ``/v2``; STOW-RS answers 200 (all stored), 202
(some failed) or 409 (none stored) with ``FailedSOPSequence``/``FailureReason`` per instance (45070: already
stored; 43264: validation failed; 43265: study UID mismatch); QIDO-RS and WADO-RS; the change feed
(``GET /v2/changefeed?startTime=&endTime=&offset=&limit=&includemetadata=`` and ``/v2/changefeed/latest``)
with ``Sequence``, ``StudyInstanceUid``, ``SeriesInstanceUid``, ``SopInstanceUid``, ``Action``, ``Timestamp``,
``State``, ``Metadata``. It is an emulator: nothing it stores leaves the machine.
"""

from node.emulator.azure_dicom.archive import Archive, StowResult
from node.emulator.azure_dicom.server import AzureDicomEmulator

__all__ = ["Archive", "AzureDicomEmulator", "StowResult"]
