"""Putting a finished bundle in place: an atomic exchange with the old one where the OS allows
(renameat2 RENAME_EXCHANGE), and removing the temp folders of writers that died (a kill during a
fit)."""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from pathlib import Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_stale(out: Path) -> list:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` folders beside ``out`` whose writer
    process is gone (a kill during fit); returns what was removed."""
    removed = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.match(p.name)
        if (
            m
            and m.group(1) == out.name
            and p.is_dir()
            and not p.is_symlink()
            and not _pid_alive(int(m.group(2)))
        ):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(str(p))
    return removed


_TEMP = re.compile(r"^\.(.+)\.(?:tmp|old)-(\d+)-[0-9a-f]+$")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the OS or the
    file system cannot (the caller falls back to two renames)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def install(tmp: Path, out: Path) -> None:
    """Put the finished bundle ``tmp`` at ``out``. With an old bundle there, the two are
    exchanged in one step where the OS allows (a reader always finds a whole bundle at
    ``out``); elsewhere the old one is renamed aside first (a short window without one)."""
    if out.exists():
        if exchange(tmp, out):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old bundle
            return
        old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
