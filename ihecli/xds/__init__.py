"""XDS.b (ITI TF-1 10, ITI TF-2a/2b 3.18, 3.41, 3.42, 3.43, 3.62; ITI TF-3 4): metadata,
Document Source, Consumer and Administrator, and a Document Registry and Repository.

- ``model``: DocumentEntry, SubmissionSet, Folder, Association, Code, CX patient IDs.
- ``ebrim``: those objects <-> ebRIM 3.0 XML.
- ``client``: provide_and_register (ITI-41), registry_stored_query (ITI-18),
  retrieve_document_set (ITI-43), remove_metadata (ITI-62).
- ``source``: files -> submissions with the affinity domain's defaults (profile ``[xds]``).
- ``server``: ``XdsServer`` (``ihe xds serve``) over the archive database and storage folder.
"""
