"""Imaging workflow on the archive (SWF, PIR, IOCM): Storage Commitment (RAD-10), the Performed
Procedure Step Manager (RAD-6/7/20/21), Instance Availability Notification (RAD-49) and
rejection notes (RAD-66), with one persistent outbox (``queue``) for what goes out to other nodes.
``service.WorkflowServices`` plugs them into the archive's DICOM server."""
