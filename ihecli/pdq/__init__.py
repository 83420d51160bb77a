"""PDQ Consumer for HL7 V3 (Patient Demographics Query, ITI TF-1 24, ITI TF-2b 3.47).

``query_demographics(url, PdqQuery(family=..., ...), sender=OID, receiver=OID)`` sends ITI-47
over the SOAP layer (``ihecli.net.soap``) and returns a ``PdqAnswer`` with the matches. The
messages (``ihecli.pdq.messages``) validate against the HL7 V3 NE2008 schemas.
"""
from ihecli.pdq.messages import PdqAnswer, PdqPatient, PdqQuery  # noqa: F401
from ihecli.pdq.query import query_demographics  # noqa: F401
