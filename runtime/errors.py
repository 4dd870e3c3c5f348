"""Error types of dn2. Each carries a message that says what was expected and what was found.

Command-line entry points catch ``Dn2Error`` and print ``str(exc)`` (no traceback), exiting non-zero.
"""


class Dn2Error(Exception):
    """Base class: a user-facing problem with a clear message."""


class ImageError(Dn2Error):
    """An image could not be read or prepared (corrupt, unsupported, too large, ...)."""


class ModelError(Dn2Error):
    """A model file is missing, not a dn2 model, or cannot run."""


class BundleError(Dn2Error):
    """A bundle is missing, half-written, tampered with or inconsistent."""


class MissingExtraError(Dn2Error):
    """An optional dependency is missing; the message names the pip extra that installs it."""

    def __init__(self, module: str, extra: str, purpose: str = ""):
        what = f" ({purpose})" if purpose else ""
        super().__init__(f"{module} is not installed{what}: pip install 'dn2[{extra}]'")
        self.module, self.extra = module, extra
