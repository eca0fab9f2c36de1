"""Checkpoints as plain state: atomic, primary-rank-only writes and code-free loading.

A checkpoint is a dict of state_dicts plus context, in the nanoGPT style::

    save_checkpoint(run_dir / "ckpt.pt", {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "config": to_dict(cfg),
        "step": step,
        "rng": rng_state(),
    })
    state = load_checkpoint(run_dir / "ckpt.pt")
    model.load_state_dict(state["model"]); set_rng_state(state["rng"])

Only tensors, Python scalars, strings, ``None``, lists/tuples and dicts (plus
``torch.Size``/``dtype``/``device``) may appear, because :func:`load_checkpoint` reads
with ``torch.load(weights_only=True)``: opening a checkpoint never runs code, and a file
holding pickled objects is refused (a damaged file is reported as damaged, not as refused).
Saving checks this up front, so a module or a numpy array fails at save time with the
offending key, not when resuming.

Writes go to a temp file in the destination folder, are flushed and fsynced, then
renamed over the destination (``os.replace`` is atomic on POSIX and Windows), so a crash
mid-save leaves the previous checkpoint intact.

RNG states are captured per process. :func:`gather_rng_states` collects every rank's, so a
multi-rank run resumed on the same number of ranks continues each rank's streams exactly.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import pickletools
import random
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fastbind._io import atomic_write
from fastbind.errors import UserError
from fastbind.training import distributed

__all__ = [
    "FORMAT",
    "atomic_write",
    "gather_rng_states",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT = "fastbind-checkpoint-v1"
"""Marker stored under the ``"format"`` key of every checkpoint."""

_SCALARS = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def _check_state(value: Any, key: str) -> None:
    """Reject anything ``torch.load(weights_only=True)`` would refuse, naming its key."""
    if isinstance(value, torch.Tensor):
        if type(value) is not torch.Tensor and not isinstance(value, torch.nn.Parameter):
            kind = type(value).__name__
            raise TypeError(f"checkpoint entry {key!r} is a tensor subclass {kind}; save a plain tensor")
        return
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, (dict, OrderedDict)):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint entry {key!r} has a non str/int key {k!r}")
            _check_state(v, f"{key}.{k}")
        return
    if isinstance(value, (list, tuple)):
        if type(value) not in (list, tuple):  # namedtuples etc. need their class to unpickle
            raise TypeError(f"checkpoint entry {key!r} is a {type(value).__name__}; convert it to a list or tuple")
        for i, v in enumerate(value):
            _check_state(v, f"{key}[{i}]")
        return
    hint = ""
    if isinstance(value, torch.nn.Module):
        hint = "; save module.state_dict() instead"
    elif isinstance(value, torch.optim.Optimizer):
        hint = "; save optimizer.state_dict() instead"
    elif isinstance(value, np.ndarray):
        hint = "; convert it with torch.from_numpy()"
    elif isinstance(value, np.generic):
        hint = "; convert it with .item()"
    elif hasattr(value, "__dataclass_fields__"):
        hint = "; convert configs with fastbind.training.config.to_dict()"
    raise TypeError(f"checkpoint entry {key!r} is a {type(value).__name__}, which is not plain state{hint}")


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> pathlib.Path | None:
    """Atomically write ``state`` (plus the format marker) with ``torch.save``, on rank 0 only.

    Args:
        path: Destination file; parent folders are created.
        state: Plain state: tensors, state_dicts, Python scalars, strings, lists, dicts.

    Returns:
        The path written, or None on non-primary ranks (which write nothing).

    Raises:
        TypeError: ``state`` contains a module, optimizer, numpy array or other object that
            a weights-only load would refuse.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    if state.get("format", FORMAT) != FORMAT:
        raise ValueError(f"the 'format' key is reserved for the checkpoint marker, got {state['format']!r}")
    payload = dict(state)
    payload["format"] = FORMAT
    for k, v in payload.items():
        if not isinstance(k, str):
            raise TypeError(f"checkpoint top-level keys must be strings, got {k!r}")
        _check_state(v, k)
    if not distributed.is_primary():
        return None
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` without running any code.

    Args:
        path: The checkpoint file.
        map_location: Passed to ``torch.load`` (default ``"cpu"``).

    Returns:
        The saved dict, including its ``"format"`` marker.

    Raises:
        UserError: The file is missing, damaged (truncated, overwritten) or not a fastbind
            checkpoint, or holds pickled Python objects (refused, as loading them runs code).
    """
    p = pathlib.Path(path)
    if not p.exists():
        raise UserError(f"checkpoint not found: {str(p)!r}")
    if not p.is_file():
        raise UserError(f"checkpoint {str(p)!r} is not a file")
    if p.stat().st_size == 0:
        raise UserError(f"checkpoint {str(p)!r} is damaged or not a fastbind checkpoint (empty file)")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError,
            AttributeError, TypeError) as exc:
        raise _unreadable(p, exc) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint {str(p)!r} is not a fastbind checkpoint (no {FORMAT!r} marker)")
    return state


def _unreadable(path: pathlib.Path, exc: BaseException) -> UserError:
    """Why ``torch.load`` failed, in one line: objects refused for safety, or a damaged file.

    torch answers random bytes, a cut-off file and a pickle naming a class alike, with a
    weights-only error. Only an intact archive (its pickle passes its CRC and parses to its
    end) can be a real refusal; anything else is damaged or foreign.
    """
    where = repr(str(path))
    if isinstance(exc, pickle.UnpicklingError) and _pickle_intact(path):
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({named[1]})" if named else ""
        return UserError(f"checkpoint {where} holds pickled Python objects{what}, "
                         "refused for safety (weights-only load)")
    with open(path, "rb") as fh:
        zip_start = fh.read(4) == b"PK\x03\x04"
    if not zip_start:
        why = "not a zip archive, as torch.save writes"
    elif not _zip_end_found(path):
        why = "cut short: the zip archive has no end record"
    else:
        why = "a zip archive that torch.load cannot read"
    return UserError(f"checkpoint {where} is damaged or not a fastbind checkpoint ({why})")


def _zip_end_found(path: pathlib.Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except zipfile.BadZipFile:  # an end record that is there but damaged
        return False


def _pickle_intact(path: pathlib.Path) -> bool:
    """True when ``path`` is a torch.save zip whose one ``data.pkl`` reads back and parses whole."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
            if len(pickles) != 1:
                return False
            for _ in pickletools.genops(archive.read(pickles[0])):
                pass
    except Exception:  # any failure to read or parse means damage, which is what we ask
        return False
    return True


# --------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Capture the Python, numpy (global), torch CPU and CUDA random states.

    Returns:
        A dict of tensors, ints, floats and lists that ``torch.load(weights_only=True)``
        accepts: ``{"python": [...], "numpy": {...}, "torch": ByteTensor, "cuda": [...]}``
        (``"cuda"`` only when CUDA is initialized-able).
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    out: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "name": str(name),
            # uint32 keys fit losslessly in int64; numpy arrays themselves are not weights-only safe.
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's :func:`rng_state`, in rank order (one entry in a single process).

    Every rank must call it. A checkpoint keeps the list; on resume with the same number of
    ranks each rank restores its own entry, so a resumed run continues every random stream.
    """
    return distributed.all_gather_object(rng_state())


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore states captured by :func:`rng_state` (entries that are absent are skipped).

    CUDA states are restored for as many devices as both the saved state and this machine
    have, so a checkpoint from a GPU run can be resumed on CPU.

    Args:
        state: The dict returned by :func:`rng_state` (possibly after a save/load).
    """
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    if "numpy" in state:
        s = state["numpy"]
        keys = s["keys"]
        keys = keys.cpu().numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        np.random.set_state(
            (s["name"], keys.astype(np.uint32), int(s["pos"]), int(s["has_gauss"]), float(s["cached_gaussian"]))
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu().to(torch.uint8), device=i)
