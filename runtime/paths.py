"""What a path really is, in words, for messages that say what was found.

``found(path)`` never raises and never opens the path: "no such path", "a directory",
"a FIFO (named pipe)", "a character device", "a path of N bytes, longer than PATH_MAX", ...
``regular_file(path, expected)`` returns the path when it is a regular file and raises
``Dn2Error("<path>: expected <expected>, found <what>")`` otherwise.
"""

from __future__ import annotations

import os
import stat
from typing import Type

from .errors import Dn2Error

PATH_MAX = 4096  # Linux, including the terminating NUL
NAME_MAX = 255


def too_long(path) -> str:
    """A reason the path is too long for the OS ('' when it is not)."""
    raw = os.fsencode(path)
    if len(raw) >= PATH_MAX:
        return f"a path of {len(raw)} bytes, longer than PATH_MAX ({PATH_MAX - 1})"
    longest = max((len(p) for p in raw.split(b"/")), default=0)
    if longest > NAME_MAX:
        return f"a path with a {longest}-byte name, longer than NAME_MAX ({NAME_MAX})"
    return ""


def kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def found(path) -> str:
    """What is at ``path``, in words (never raises, never opens it)."""
    long = too_long(path)
    if long:
        return long
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a dangling symlink to {os.readlink(path)!r}"
        return "no such path"
    except NotADirectoryError:
        return "no such path (a parent is a file, not a directory)"
    except PermissionError:
        return "a path this user may not look into (permission denied)"
    except OSError as exc:
        return f"an unusable path ({exc.strerror or exc})"
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        return "an empty file (0 bytes)"
    return kind(st.st_mode)


def regular_file(path, expected: str, error: Type[Dn2Error] = Dn2Error) -> str:
    """``path`` if it is a non-empty regular file; else ``error("<path>: expected ..., found")``."""
    p = os.fspath(path)
    what = found(p)
    if what != "a regular file":
        raise error(f"{p}: expected {expected}, found {what}")
    return p
