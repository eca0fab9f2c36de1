from __future__ import annotations

import json
import os
import pathlib
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from fastbind.errors import UserError
from fastbind.training import distributed as D
from fastbind.training.checkpoint import load_checkpoint, save_checkpoint
from fastbind.training.metrics import MetricsWriter, read_metrics

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ----------------------------------------------------------------------------- single process


def test_single_process_is_a_no_op(clean_env: pytest.MonkeyPatch) -> None:
    info = D.init_distributed()
    assert (info.rank, info.world_size, info.local_rank) == (0, 1, 0)
    assert info.is_primary and not info.is_distributed
    assert info.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not D.is_distributed()
    assert D.get_rank() == 0 and D.get_world_size() == 1 and D.is_primary()
    D.barrier()
    assert D.all_gather_object({"a": 1}) == [{"a": 1}]
    x = torch.tensor([1, 2, 3])
    m = D.all_reduce_mean(x)
    assert m.dtype == torch.get_default_dtype() and m.tolist() == [1.0, 2.0, 3.0]
    s = D.all_reduce_sum(x)
    s += 1
    assert x.tolist() == [1, 2, 3]  # inputs are never modified
    D.cleanup()


def test_partial_env_is_an_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RANK", "0")
    with pytest.raises(UserError, match="partial torchrun environment"):
        D.init_distributed()


def test_missing_master_is_an_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="MASTER_ADDR and MASTER_PORT"):
        D.init_distributed()


@pytest.mark.parametrize("rank,world", [("2", "2"), ("x", "2"), ("0", "0")])
def test_bad_env_values(clean_env: pytest.MonkeyPatch, rank: str, world: str) -> None:
    clean_env.setenv("RANK", rank)
    clean_env.setenv("WORLD_SIZE", world)
    with pytest.raises(UserError):
        D.init_distributed()


# ----------------------------------------------------------------------------- two processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    info = D.init_distributed(backend="gloo")
    try:
        assert (info.rank, info.world_size, info.local_rank) == (rank, world, rank)
        assert D.is_distributed() and D.get_rank() == rank and D.get_world_size() == world
        assert D.is_primary() == (rank == 0) == info.is_primary
        # init again is harmless and reports the same placement
        again = D.init_distributed()
        assert (again.rank, again.world_size) == (rank, world)

        x = torch.tensor([float(rank), 10.0 * rank + 1])
        mean = D.all_reduce_mean(x)
        total = D.all_reduce_sum(torch.tensor([rank + 1]))
        assert x.tolist() == [float(rank), 10.0 * rank + 1]  # input untouched

        gathered = D.all_gather_object({"rank": rank, "name": f"r{rank}"})

        # Only rank 0 writes files.
        ckpt = pathlib.Path(out_dir) / "ckpt.pt"
        written = save_checkpoint(ckpt, {"rank": rank})
        with MetricsWriter(pathlib.Path(out_dir) / "run", tensorboard=False) as log:
            log.log(1, rank=rank)
        D.barrier()
        result = {
            "mean": mean.tolist(),
            "total": total.tolist(),
            "gathered": gathered,
            "wrote": written is not None,
        }
        (pathlib.Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        D.cleanup()
    assert not D.is_distributed()


def test_two_process_gloo_group(tmp_path: pathlib.Path, clean_env: pytest.MonkeyPatch) -> None:
    world = 2
    ctx = mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=False)
    deadline = time.monotonic() + 60
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:  # a hung collective must fail the test, not hang CI
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail("2-process gloo group did not finish in 60 s")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    for r, res in enumerate(results):
        assert res["mean"] == [0.5, 6.0]
        assert res["total"] == [3]
        assert res["gathered"] == [{"rank": 0, "name": "r0"}, {"rank": 1, "name": "r1"}]
        assert res["wrote"] is (r == 0)
    assert load_checkpoint(tmp_path / "ckpt.pt")["rank"] == 0
    assert read_metrics(tmp_path / "run") == [{"step": 1, "rank": 0}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "rank0.json", "rank1.json", "run"]
