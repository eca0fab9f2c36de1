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
    file system) and is removed if ``write`` raises.

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
