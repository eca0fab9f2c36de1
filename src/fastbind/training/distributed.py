"""What fastbind's training and evaluation ask of ``torch.distributed``, in one module.

Recipes, evaluation and checkpoints ask here "am I the primary rank?", "how many ranks are
there?" or "sum this across ranks", and get the single-process answer when no process group
is running, so they read the same with and without ``torchrun``.

Launching::

    torchrun --standalone --nproc_per_node 2 -m fastbind lm-train ...

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` reads them, starts the process group (``nccl``
when CUDA is available, ``gloo`` on CPU) and returns a :class:`DistInfo`. Without those
variables it is a no-op returning rank 0 of 1.

Splitting data: the global batch keeps ``batch_size`` rows and each rank takes an equal,
contiguous block of them (:class:`fastbind.data.stream.ChunkStream`), so ranks together see
exactly the tokens one process would; gradients are averaged by DDP.

Anything that changes weights outside autograd (e.g. Hebbian ``memorize``) must apply the
same update on every rank. The layers sit below this package, so they call
``torch.distributed`` for that themselves; see the layer's own docs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Any

import torch
import torch.distributed as dist

from fastbind.errors import BadSetting, UserError

__all__ = [
    "DistInfo",
    "all_gather_object",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_primary",
    "replicas_identical",
    "resolve_device",
]

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: Global rank, 0 for a single process.
        world_size: Number of processes, 1 for a single process.
        local_rank: Rank on this machine (selects the GPU).
        device: The device this process should use.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_primary(self) -> bool:
        """True on rank 0, the rank that writes files and logs."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def is_distributed() -> bool:
    """True when a process group is initialized."""
    return dist.is_available() and dist.is_initialized()


def _env_int(name: str) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None


def init_distributed(backend: str | None = None) -> DistInfo:
    """Start the process group from torchrun's environment, or do nothing.

    Safe to call twice: when a group is already running its info is returned.

    Args:
        backend: ``"nccl"``, ``"gloo"`` or None to choose (nccl when CUDA is available).

    Returns:
        A :class:`DistInfo`. Without ``RANK``/``WORLD_SIZE`` in the environment, rank 0 of 1
        on ``cuda`` if available, else ``cpu``.

    Raises:
        UserError: Only some of the torchrun variables are set, or they are inconsistent.
    """
    cuda = torch.cuda.is_available()
    if is_distributed():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
        return DistInfo(rank, world, local, _device(local, cuda))

    present = [k for k in _ENV_KEYS if k in os.environ]
    if not {"RANK", "WORLD_SIZE"} <= set(present):
        if present:
            names = ", ".join(present)
            raise UserError(f"partial torchrun environment: {names} set but RANK and WORLD_SIZE are both needed")
        return DistInfo(0, 1, 0, _device(0, cuda))

    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UserError(f"distributed run (WORLD_SIZE={world}) needs {' and '.join(missing)} in the environment")
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and cuda:
        # Pin the device before the group starts so NCCL's communicators use our GPU.
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistInfo(rank, world, local, _device(local, cuda))


def _device(local_rank: int, cuda: bool) -> torch.device:
    if cuda:
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def check_device(name: str) -> None:
    """A config's ``device`` setting, checked while the settings are read (:func:`resolve_device` later)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise BadSetting("device", f"must be auto, cpu, mps, cuda or cuda:N, got {name!r}")


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    """The device a recipe runs on: the rank's own under torchrun, else ``name``.

    Args:
        name: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        info: From :func:`init_distributed` (None: a single process).

    Raises:
        UserError: A CUDA device is asked for and CUDA is not available.
    """
    if info is not None and info.is_distributed:
        return info.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but CUDA is not available")
    return dev


def replicas_identical(model: torch.nn.Module) -> bool:
    """True when every rank holds bit-identical parameters and buffers (True in one process).

    Every rank must call it (it gathers one digest per rank).
    """
    if not is_distributed():
        return True
    h = hashlib.sha1()
    for t in list(model.state_dict().values()):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return len(set(all_gather_object(h.hexdigest()))) == 1


def get_rank() -> int:
    """Global rank, 0 when no process group is running."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes, 1 when no process group is running."""
    return dist.get_world_size() if is_distributed() else 1


def is_primary() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for all ranks; a no-op in a single process."""
    if is_distributed():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` in a single process).

    Every rank must call it; for small things (digests, RNG states), not tensors.
    """
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all ranks, as a new tensor (the input is not modified).

    Use for counts and loss sums (e.g. total NLL and total tokens of an evaluation).
    """
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all ranks, as a new floating tensor (input unchanged).

    Integer tensors are promoted to float so the mean is not truncated.
    """
    out = tensor.detach().clone()
    if not out.is_floating_point():
        out = out.to(torch.get_default_dtype())
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def cleanup() -> None:
    """Destroy the process group if one is running (call once at the end of a recipe)."""
    if is_distributed():
        dist.destroy_process_group()
