"""Configuration keys of ``type: fhir`` destinations (``url``, ``auth``, ``scope`` are the destination's own).

A mixin of :class:`node.config_sections.DestinationSection`; it imports nothing from :mod:`node.config`. Every key
is documented in ``config/example.yaml``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FhirDestinationKeys(BaseModel):
    """Identifier systems the EHR uses, so that conditional creates find its existing Patient and order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    patient_identifier_system: str | None = Field(
        None, description="Patient.identifier.system of the DICOM PatientID (the EHR's MRN system); default "
        "urn:oid:<issuer> when the DICOM issuer is an OID, else urn:dicom-ai-node:patient-id:<IssuerOfPatientID>")
    accession_identifier_system: str | None = Field(
        None, description="ServiceRequest/ImagingStudy identifier system of the accession number (type "
        "v2-0203#ACSN); default urn:dicom-ai-node:accession")


FHIR_KEYS = tuple(FhirDestinationKeys.model_fields)
