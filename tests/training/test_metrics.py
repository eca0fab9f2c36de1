from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest
import torch

from fastbind.errors import UserError
from fastbind.training import metrics as M
from fastbind.training.metrics import MetricsWriter, read_metrics


def test_jsonl_round_trip(tmp_path: pathlib.Path) -> None:
    run = tmp_path / "run"
    with MetricsWriter(run, tensorboard=False) as log:
        assert not log.tensorboard
        log.log(1, {"loss": 2.5, "lr": torch.tensor(1e-3)}, tokens=np.int64(70))
        log.log(torch.tensor(2), {"valid/ppl": math.inf, "bucket": {"<100": 9170.0, "100-1K": 460}}, note="ok")
    rows = read_metrics(run)
    assert rows[0] == {"step": 1, "loss": 2.5, "lr": pytest.approx(1e-3), "tokens": 70}
    assert rows[1] == {"step": 2, "valid/ppl": math.inf, "bucket": {"<100": 9170.0, "100-1K": 460}, "note": "ok"}
    assert list(rows[0]) == ["step", "loss", "lr", "tokens"]  # step first, then in call order
    # each line is written and flushed as it happens; a second writer appends
    with MetricsWriter(run, tensorboard=False) as log:
        log.log(3, loss=1.0)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


def test_lines_are_flushed_immediately(tmp_path: pathlib.Path) -> None:
    log = MetricsWriter(tmp_path, tensorboard=False)
    log.log(5, loss=0.5)
    assert read_metrics(tmp_path) == [{"step": 5, "loss": 0.5}]  # before close
    log.close()
    with pytest.raises(RuntimeError):
        log.log(6, loss=1.0)


def test_bad_metric_values(tmp_path: pathlib.Path) -> None:
    with MetricsWriter(tmp_path, tensorboard=False) as log:
        with pytest.raises(TypeError, match="shape"):
            log.log(1, x=torch.zeros(3))
        with pytest.raises(TypeError, match="unsupported"):
            log.log(1, x=object())
        with pytest.raises(ValueError, match="step"):
            log.log(1, {"step": 2})


def test_read_metrics_tolerates_truncated_last_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "a": 1}) + "\n" + '{"step": 2, "a"')
    assert read_metrics(path) == [{"step": 1, "a": 1}]
    path.write_text('{"step": 1\n' + json.dumps({"step": 2}) + "\n")
    with pytest.raises(UserError, match="line 1"):
        read_metrics(path)
    with pytest.raises(UserError, match="not found"):
        read_metrics(tmp_path / "nothing")


def test_non_primary_writes_nothing(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(M.distributed, "is_primary", lambda: False)
    with MetricsWriter(tmp_path / "run", tensorboard=False) as log:
        log.log(1, loss=1.0)
    assert not (tmp_path / "run").exists()


def test_tensorboard_required_but_missing(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(M, "_tensorboard_writer_class", lambda: None)
    with pytest.raises(UserError, match="TensorBoard is not installed"):
        MetricsWriter(tmp_path, tensorboard=True)
    with MetricsWriter(tmp_path, tensorboard=None) as log:  # auto: silently off
        assert not log.tensorboard


def test_tensorboard_receives_scalars(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []

    class FakeWriter:
        def __init__(self, log_dir: str) -> None:
            calls.append(("init", log_dir))

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            calls.append((tag, value, step))

        def close(self) -> None:
            calls.append(("close",))

    monkeypatch.setattr(M, "_tensorboard_writer_class", lambda: FakeWriter)
    with MetricsWriter(tmp_path, tensorboard=None) as log:
        assert log.tensorboard
        log.log(4, {"loss": 1.5, "bucket": {"rare": 2}, "note": "text"})
    assert calls == [("init", str(tmp_path / "tb")), ("loss", 1.5, 4), ("bucket/rare", 2.0, 4), ("close",)]
