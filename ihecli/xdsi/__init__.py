"""XDS-I.b (RAD TF-1 18; RAD TF-2/3 4.68, 4.69): the archive as Imaging Document Source (Set of
DICOM Instances option) and the Imaging Document Consumer.

- ``manifest``: the KOS manifest of a study (title 113030 Manifest) with Retrieve AE Title and
  Retrieve Location UID on every referenced series, and its XDS metadata (RAD-68 = ITI-41 with
  application/dicom and formatCode 1.2.840.10008.5.1.4.1.1.88.59).
- ``rad69``: Retrieve Imaging Document Set: the request and response, the archive's responder
  (served on ``ihe archive serve --http-port`` at /xdsi) and the consumer's call.
"""
