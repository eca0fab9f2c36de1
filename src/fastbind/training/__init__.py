"""Training infrastructure: configs, checkpoints, distributed helpers, optimizers, metrics, seeds.

Nothing here knows about a particular model; recipes combine these pieces.
"""

from __future__ import annotations

from fastbind.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from fastbind.training.config import apply_overrides, from_dict, parse_cli, to_dict
from fastbind.training.distributed import (
    DistInfo,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    cleanup,
    get_rank,
    get_world_size,
    init_distributed,
    is_primary,
    shard_stream,
)
from fastbind.training.metrics import MetricsWriter, perplexity, read_metrics
from fastbind.training.optim import OptimConfig, build_optimizer, build_scheduler, clip_grad
from fastbind.training.seed import deterministic, seed_everything

__all__ = [
    "DistInfo",
    "MetricsWriter",
    "OptimConfig",
    "all_reduce_mean",
    "all_reduce_sum",
    "apply_overrides",
    "barrier",
    "build_optimizer",
    "build_scheduler",
    "cleanup",
    "clip_grad",
    "deterministic",
    "from_dict",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_primary",
    "load_checkpoint",
    "parse_cli",
    "perplexity",
    "read_metrics",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "shard_stream",
    "to_dict",
]
