# `make test` installs everything the tests need (Debian peers when run as root, the package
# with its test extras) and runs them. `make docs` regenerates man pages and completions.
PYTHON ?= python3
DEBS ?= dcmtk groff-base man-db postgresql procps chromium rsyslog rsyslog-gnutls chrony dicom3tools orthanc orthanc-dicomweb xorriso
.PHONY: test deps debs docs

test: deps
	$(PYTHON) -m pytest

deps: debs
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'

debs:
	@missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "missing Debian packages:$$missing (install them as root: apt-get install$$missing)" >&2; exit 1; fi; \
	fi

docs:
	$(PYTHON) tools/gen_docs.py
