"""Error types of dn2. Each carries a message that says what was expected and what was found.

Command-line entry points catch ``Dn2Error`` and print ``str(exc)`` (no traceback), exiting non-zero.
Library errors speak in the caller's words: a bad argument is named as the parameter (``fpr``,
not ``--fpr``), and ``exc.param`` holds that name (None when no single parameter is at fault),
so a command line can say which of its flags it was (``exc.params``: every parameter the
message names, when it names several).
"""

from typing import Optional, Sequence, Tuple


class Dn2Error(Exception):
    """Base class: a user-facing problem with a clear message; ``param``: the parameter (a
    config field / keyword argument name) the problem is about, if one is."""

    param: Optional[str] = None
    params: Tuple[str, ...] = ()  # every parameter the message names, ``param`` first

    def __init__(self, *args, param: Optional[str] = None, params: Sequence[str] = ()):
        super().__init__(*args)
        names = tuple(params) or ((param,) if param else ())
        if names:
            self.param, self.params = param or names[0], names


class ImageError(Dn2Error):
    """An image could not be read or prepared (corrupt, unsupported, too large, ...)."""


class ModelError(Dn2Error):
    """A model file is missing, not a dn2 model, or cannot run."""


class BundleError(Dn2Error):
    """A bundle is missing, half-written, tampered with or inconsistent."""


class ConfigError(Dn2Error):
    """A setting has the wrong type or is out of range; ``param`` names it."""


class MissingExtraError(Dn2Error):
    """An optional dependency is missing; the message names the pip extra that installs it."""

    def __init__(self, module: str, extra: str, purpose: str = ""):
        what = f" ({purpose})" if purpose else ""
        super().__init__(f"{module} is not installed{what}: pip install 'dn2[{extra}]'")
        self.module, self.extra = module, extra
