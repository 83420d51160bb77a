"""HL7 v2 messages: reading ER7 (any 2.x version, MSH-18 character sets) and building
acknowledgements (AA/AE/AR with MSA and ERR). See ``ihecli.hl7.v2``; the MLLP transport is
``ihecli.net.mllp``."""
from ihecli.hl7.v2 import Hl7Error, Message, ack, nak, parse  # noqa: F401
