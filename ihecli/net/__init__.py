"""Transports: DIMSE glue, and later MLLP, SOAP, HTTP, TLS."""
