"""XDS.b vocabulary: ebRIM classification schemes, identification schemes, object types,
association types, statuses, stored-query ids and SOAP actions (ITI TF-3 4.2, 4.3; ITI TF-2a 3.18).
"""
from __future__ import annotations

U = "urn:uuid:"

# DocumentEntry
DE_STABLE = U + "7edca82f-054d-47f2-a032-9b2a5b5186c1"
DE_ON_DEMAND = U + "34268e47-fdf5-41a6-ba33-82133c465248"
DE_AUTHOR = U + "93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS = U + "41a5887f-8865-4c09-adf7-e362475b143a"
DE_CONFIDENTIALITY = U + "f4f85eac-e6cb-4883-b524-f2705394840f"
DE_EVENT = U + "2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
DE_FORMAT = U + "a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_HCFT = U + "f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE = U + "cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_TYPE = U + "f0306f51-975f-434e-a61c-c59651d33983"
DE_PATIENT_ID = U + "58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = U + "2e82c1f6-a085-4c72-9da3-8640a32e42ab"

# SubmissionSet
SS_NODE = U + "a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
SS_AUTHOR = U + "a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE = U + "aa543740-bdda-424e-8c96-df4873be8500"
SS_PATIENT_ID = U + "6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_UNIQUE_ID = U + "96fdda7c-d067-4183-912e-bf5ee74998a8"
SS_SOURCE_ID = U + "554ac39e-e3fe-47fe-b233-965d2a147832"

# Folder
FD_NODE = U + "d9d542f3-6cc4-48b6-8870-ea235fbc94c2"
FD_CODES = U + "1ba97051-7806-41a8-a48b-8fce7af683c5"
FD_PATIENT_ID = U + "f64ffdf0-4b97-4e06-b79f-a52b38ec2f8a"
FD_UNIQUE_ID = U + "75df8f67-9973-4fbe-a900-df66cefecc5a"

CLASSIFICATION_TYPE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification"
EXTERNAL_ID_TYPE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:ExternalIdentifier"
ASSOCIATION_TYPE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Association"
PACKAGE_TYPE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:RegistryPackage"

HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
APND = "urn:ihe:iti:2007:AssociationType:APND"
XFRM = "urn:ihe:iti:2007:AssociationType:XFRM"
XFRM_RPLC = "urn:ihe:iti:2007:AssociationType:XFRM_RPLC"
SIGNS = "urn:ihe:iti:2007:AssociationType:signs"
IS_SNAPSHOT_OF = "urn:ihe:iti:2010:AssociationType:IsSnapshotOf"
RELATIONSHIPS = {RPLC, APND, XFRM, XFRM_RPLC, SIGNS, IS_SNAPSHOT_OF}
REPLACING = {RPLC, XFRM_RPLC}
ASSOCIATION_NAMES = {"HasMember": HAS_MEMBER, "RPLC": RPLC, "APND": APND, "XFRM": XFRM, "XFRM_RPLC": XFRM_RPLC,
                     "signs": SIGNS, "IsSnapshotOf": IS_SNAPSHOT_OF}

APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
SUBMITTED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Submitted"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
PARTIAL = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
SEVERITY_ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
SEVERITY_WARNING = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Warning"

# SOAP actions
ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI42 = "urn:ihe:iti:2007:RegisterDocumentSet-b"
ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"
ITI62 = "urn:ihe:iti:2010:DeleteDocumentSet"
ITI38 = "urn:ihe:iti:2007:CrossGatewayQuery"
ITI39 = "urn:ihe:iti:2007:CrossGatewayRetrieve"


def response_action(action: str) -> str:
    return action + "Response"


# Stored queries: command-line name -> (id, ITI TF name)
STORED_QUERIES = {
    "find-documents": (U + "14d4debf-8f97-4251-9a74-a90016b0af0d", "FindDocuments"),
    "find-submission-sets": (U + "f26abbcb-ac74-4422-8a30-edb644bbc1a9", "FindSubmissionSets"),
    "find-folders": (U + "958f3006-baad-4929-a4de-ff1114824431", "FindFolders"),
    "get-all": (U + "10b545ea-725c-446d-9b95-8aeb444eddf3", "GetAll"),
    "get-documents": (U + "5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4", "GetDocuments"),
    "get-folders": (U + "5737b14c-8a1a-4539-b659-e03a34a5e1e4", "GetFolders"),
    "get-associations": (U + "a7ae438b-4bc2-4642-93e9-be891f7bb155", "GetAssociations"),
    "get-documents-and-associations": (U + "bab9529a-4a10-40b3-a01f-f68a615d247a", "GetDocumentsAndAssociations"),
    "get-submission-sets": (U + "51224314-5390-4169-9b91-b1980040715a", "GetSubmissionSets"),
    "get-submission-set-and-contents": (U + "e8e3cb2c-e39c-46b9-99e4-c12f57260b83", "GetSubmissionSetAndContents"),
    "get-folder-and-contents": (U + "b909a503-523d-4517-8acf-8e5834dfc4c7", "GetFolderAndContents"),
    "get-folders-for-document": (U + "10cae35a-c7f9-4cf5-b61e-fc3278ffb578", "GetFoldersForDocument"),
    "get-related-documents": (U + "d90e5407-b356-4d91-a89f-873917b4b0e6", "GetRelatedDocuments"),
}
QUERY_BY_ID = {v[0]: (k, v[1]) for k, v in STORED_QUERIES.items()}

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
KOS_FORMAT = f"{KOS_SOP_CLASS}^Key Object Selection Document^1.2.840.10008.2.6.1"


def status_short(status: str | None) -> str:
    return (status or "").rsplit(":", 1)[-1]


