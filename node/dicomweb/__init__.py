"""DICOMweb: STOW-RS delivery, QIDO-RS/WADO-RS priors, the Azure DICOM service change feed, STOW-RS in."""
