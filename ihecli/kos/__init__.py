"""Key Object Selection documents: KIN (RAD-29), IOCM rejection notes (RAD-66), TCE (RAD-53)
and the XDS-I manifest share one builder (ihecli.kos.builder) and one code list (ihecli.kos.codes)."""
