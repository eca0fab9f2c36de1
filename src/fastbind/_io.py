"""Atomic file writes shared by checkpoints, run files and data caches."""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import IO, Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> pathlib.Path:
    """Write a file atomically: ``write(fh)`` into a temp file, fsync, rename over ``path``.

    The temp file lives in the destination folder (a rename is only atomic within one
    file system) and is removed if ``write`` raises. The file gets the mode an ordinary
    new file gets under the process's umask (``mkstemp`` makes it owner-only, and the
    rename would keep that).

    Args:
        path: Destination; parent folders are created.
        write: Called with a binary file handle open for writing.

    Returns:
        The destination path.
    """
    dest = pathlib.Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # not on Windows, where the mode does not apply
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(dest.parent)
    return dest


def _umask() -> int:
    """The process's umask, read without changing it where the OS allows."""
    try:  # Linux: no window in which another thread sees a changed umask
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: pathlib.Path) -> None:
    # Makes the rename itself durable across a power cut; not possible on every OS.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
