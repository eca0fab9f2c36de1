from __future__ import annotations

import io
import pathlib
import pickle
import random
import zipfile

import numpy as np
import pytest
import torch

from fastbind.errors import UserError
from fastbind.training import checkpoint as ckpt_mod
from fastbind.training.checkpoint import FORMAT, load_checkpoint, rng_state, save_checkpoint, set_rng_state


class Payload:
    """An arbitrary class: unpickling it would mean running code from the file."""

    def __init__(self) -> None:
        self.x = 1


def _state(scale: float = 1.0) -> dict:
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(scale)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    with torch.no_grad():
        model.weight.fill_(scale)  # a known value to recognise the checkpoint by
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "config": {"lr": 1e-3, "buckets": [1, 2], "name": "adam", "ckpt": None},
        "step": 7,
    }


def _listing(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_save_load_round_trip(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sub" / "ckpt.pt"
    state = _state(2.0)
    assert save_checkpoint(path, state) == path
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT
    assert loaded["step"] == 7 and loaded["config"] == state["config"]
    torch.testing.assert_close(loaded["model"]["weight"], torch.full((2, 3), 2.0))
    # the optimizer state is restorable
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    opt.load_state_dict(loaded["optimizer"])
    assert _listing(path.parent) == ["ckpt.pt"]
    assert "format" not in state  # the caller's dict is not modified


def test_interrupted_save_keeps_old_checkpoint(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _state(1.0))
    real_save = torch.save

    def crashing_save(obj: object, f: io.BufferedWriter, *args: object, **kwargs: object) -> None:
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])  # half a file reaches the disk
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(5.0))
    monkeypatch.undo()
    assert _listing(tmp_path) == ["ckpt.pt"]  # no temp file left behind
    torch.testing.assert_close(load_checkpoint(path)["model"]["weight"], torch.full((2, 3), 1.0))


def test_interrupted_save_by_keyboard_interrupt(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(obj: object, f: io.BufferedWriter, *args: object, **kwargs: object) -> None:
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ckpt.pt", _state())
    assert _listing(tmp_path) == []


def test_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UserError, match="checkpoint not found") as info:
        load_checkpoint(tmp_path / "nope.pt")
    assert "nope.pt" in str(info.value)
    with pytest.raises(UserError, match="not a file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("keep", [0, 10, 0.5, 0.9])
def test_truncated_file(tmp_path: pathlib.Path, keep: float) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, _state())
    data = good.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(UserError, match="damaged or not a fastbind checkpoint") as info:
        load_checkpoint(bad)
    assert "bad.pt" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"this is not a checkpoint at all" * 10, b"\x80\x02garbage",
                                     bytes(range(256)) * 20, b"PK\x03\x04" + bytes(500)])
def test_garbage_file(tmp_path: pathlib.Path, content: bytes) -> None:
    bad = tmp_path / "junk.pt"
    bad.write_bytes(content)
    with pytest.raises(UserError, match="junk.pt.* is damaged or not a fastbind checkpoint") as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value) and "pickled" not in str(info.value)


def test_damaged_pickle_inside_an_intact_archive(tmp_path: pathlib.Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, _state())
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():  # the same archive with its pickle cut in half
            data = src.read(info)
            dst.writestr(info, data[: len(data) // 2] if info.filename.endswith("/data.pkl") else data)
    with pytest.raises(UserError, match="bad.pt.* is damaged or not a fastbind checkpoint"):
        load_checkpoint(bad)


def test_not_a_fastbind_checkpoint(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, path)
    with pytest.raises(UserError, match="not a fastbind checkpoint"):
        load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(UserError, match="not a fastbind checkpoint"):
        load_checkpoint(path)


def test_pickled_object_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": Payload()}, path)
    with pytest.raises(UserError, match="pickled Python objects") as info:
        load_checkpoint(path)
    assert "evil.pt" in str(info.value) and "damaged" not in str(info.value)


def test_load_uses_weights_only(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1})
    seen: dict = {}
    real_load = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(path)
    assert seen.get("weights_only") is True


def test_plain_pickle_with_reduce_is_refused(tmp_path: pathlib.Path) -> None:
    """A file whose unpickling would call a function is rejected, and the function never runs."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple:
            return (pathlib.Path.touch, (marker,))

    path = tmp_path / "evil2.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": FORMAT, "x": Evil()}, fh, protocol=2)
    with pytest.raises(UserError):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "value,message",
    [
        (torch.nn.Linear(2, 2), "state_dict"),
        (np.zeros(3), "torch.from_numpy"),
        (Payload(), "not plain state"),
        ({"nested": [1, {"deep": torch.nn.ReLU()}]}, "'bad.nested[1].deep'"),
    ],
)
def test_save_refuses_objects(tmp_path: pathlib.Path, value: object, message: str) -> None:
    with pytest.raises(TypeError) as info:
        save_checkpoint(tmp_path / "c.pt", {"bad": value})
    assert message in str(info.value)
    assert _listing(tmp_path) == []


def test_reserved_format_key(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "c.pt", {"format": "other"})


def test_non_primary_rank_does_not_write(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckpt_mod.distributed, "is_primary", lambda: False)
    assert save_checkpoint(tmp_path / "c.pt", {"step": 1}) is None
    assert _listing(tmp_path) == []


def _draws() -> tuple:
    return (
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(),
        torch.rand(3).tolist(),
        torch.randint(0, 1000, (4,)).tolist(),
    )


def test_rng_round_trip_through_checkpoint(tmp_path: pathlib.Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()  # its odd number of gaussian draws leaves a cached value in both states
    assert random.getstate()[2] is not None and np.random.get_state()[3] == 1
    path = tmp_path / "rng.pt"
    save_checkpoint(path, {"rng": rng_state()})
    expected = _draws()
    # scramble everything, then restore from the file
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert _draws() != expected
    set_rng_state(load_checkpoint(path)["rng"])
    assert _draws() == expected


def test_rng_state_is_weights_only_loadable(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "r.pt"
    torch.save(rng_state(), path)
    state = torch.load(path, weights_only=True)
    assert set(state) >= {"python", "numpy", "torch"}
