"""DICOM client operations (SCU)."""
