"""ihe: IHE actors on one command line, sharing one local archive and one profile file."""

__version__ = "0.1.0"
