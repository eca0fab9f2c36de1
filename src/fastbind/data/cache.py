"""Where fastbind keeps data sets and what it derives from them: the one encoded-data cache.

Encoding a corpus (or resizing Omniglot's drawings) takes seconds to minutes; its result is
kept so the next run starts at once. A data set's own folder is never written to: users do
not expect a library to add files to their data, and a shared data mount may be writable by
accident. Two folders, both overridable:

* the **data folder** holds the named data sets (``wikitext-2``, ``ptb``, ``omniglot``...,
  downloaded there when missing): the ``data_dir`` setting if given, else ``$FASTBIND_DATA``,
  else ``~/.cache/fastbind``.
* the **cache folder** holds encoded copies under ``encoded/``: the ``data_dir`` setting if
  given (a run that keeps its data apart keeps its cache there too), else
  ``$FASTBIND_CACHE``, else ``$FASTBIND_DATA``, else ``$XDG_CACHE_HOME/fastbind``, else
  ``~/.cache/fastbind``.

An entry is one folder, ``<cache>/encoded/<source name>-<digest of its path>/<label>/``: the
files of one encoded variant and a ``meta.json`` holding the exact key it was built for
(options, and the size and modification time of every source file). Any change of the key
rebuilds the entry; a damaged entry is rebuilt, never trusted. Files are written to temp
names and renamed into place, ``meta.json`` last, so a crash never leaves an entry that
looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from fastbind._io import atomic_write

T = TypeVar("T")

_VERSION = 2  # 1: entries inside the data folders (.fastbind-cache) and Omniglot's own format
_META = "meta.json"


def _home_cache() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG rule: a relative value is invalid and ignored.
    return Path(xdg) / "fastbind" if xdg and Path(xdg).is_absolute() else Path.home() / ".cache" / "fastbind"


def default_data_dir() -> Path:
    """Folder of the named data sets: ``$FASTBIND_DATA`` if set, else ``~/.cache/fastbind``."""
    env = os.environ.get("FASTBIND_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastbind"


def default_cache_dir() -> Path:
    """Folder of the encoded-data cache when no ``data_dir`` is given.

    ``$FASTBIND_CACHE``, else ``$FASTBIND_DATA`` (the cache stays beside the data sets of a
    user who moved them), else ``$XDG_CACHE_HOME/fastbind``, else ``~/.cache/fastbind``.
    """
    for var in ("FASTBIND_CACHE", "FASTBIND_DATA"):
        env = os.environ.get(var)
        if env:
            return Path(env).expanduser()
    return _home_cache()


def data_root(data_dir: str | os.PathLike | None) -> Path:
    """The folder of the named data sets for a ``data_dir`` setting (None: the default)."""
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def entry(source: Path, label: str, data_dir: str | os.PathLike | None) -> Path:
    """The cache folder of one encoded variant (``label``) of the data at ``source``.

    ``source`` (a folder or a file such as a zip) is named by its resolved path, so two data
    sets with the same folder name never share an entry.
    """
    source = Path(source).resolve()
    root = Path(data_dir).expanduser() if data_dir is not None else default_cache_dir()
    return root / "encoded" / f"{source.name}-{digest(str(source))}" / label


def digest(obj: Any, n: int = 10) -> str:
    """A short stable hash of a JSON-able value (labels of cache entries)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def source_stats(files: Sequence[Path]) -> list[dict[str, Any]]:
    """Name, size and modification time of each file: a changed source invalidates an entry."""
    out = []
    for p in files:
        st = p.stat()
        out.append({"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def cached(
    slot: Path | None,
    key: Mapping[str, Any],
    build: Callable[[], T],
    write: Callable[[Path, T], Mapping[str, Any]],
    read: Callable[[Path, Mapping[str, Any]], T | None],
) -> T:
    """``build()``, or its copy kept in the entry ``slot`` for exactly this ``key``.

    Args:
        slot: the entry folder (see :func:`entry`); None builds without caching.
        key: everything the result depends on, JSON-able.
        build: makes the value.
        write: ``write(slot, value)`` saves the value's files into ``slot`` (atomically) and
            returns what :func:`read` needs to check them (e.g. lengths), kept in the meta.
        read: ``read(slot, meta)`` loads the value back; None (or any exception) when the
            files do not match the meta, i.e. the entry is damaged.

    Returns:
        After a build, the copy read back from the entry when it could be written: for
        memory-mapped arrays the build's in-memory copy is then freed.
    """
    key = json.loads(json.dumps(key, sort_keys=True))  # compare exactly what the meta file stores
    if slot is None:
        return build()
    hit = _read(slot, key, read)
    if hit is not None:
        return hit
    value = build()
    try:
        slot.mkdir(parents=True, exist_ok=True)
        (slot / _META).unlink(missing_ok=True)  # the entry is incomplete until the meta is back
        meta = {"version": _VERSION, "key": key, **write(slot, value)}
        atomic_write(slot / _META, lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True).encode()))
    except OSError as e:
        warnings.warn(f"could not write the encoded-data cache in {slot}: {e}", stacklevel=3)
        return value
    hit = _read(slot, key, read)
    return value if hit is None else hit


def _read(slot: Path, key: Mapping[str, Any], read: Callable[[Path, Mapping[str, Any]], T | None]) -> T | None:
    try:
        meta = json.loads((slot / _META).read_text(encoding="utf-8"))
        if meta.get("version") != _VERSION or meta.get("key") != key:
            return None
        return read(slot, meta)
    except Exception:  # a missing or damaged entry raises whatever its reader raises: rebuild
        return None
