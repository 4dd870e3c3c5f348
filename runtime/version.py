"""The dn2 version, in one place (the runtime is the only part every install has)."""

__version__ = "0.1.0"
