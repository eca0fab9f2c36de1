"""Omniglot loader: archives and folders, de-duplication, the 5/15 split, the cache, downloads."""

from __future__ import annotations

import io
import os
import zipfile

import pytest
import torch
from PIL import Image

from fastbind.data import omniglot
from fastbind.data.download import DownloadError
from fastbind.data.omniglot import augment, load_omniglot, read_omniglot
from fastbind.errors import UserError


@pytest.fixture
def archives(tmp_path, omniglot_zip):
    """Two zips sharing the identical alphabet Greek (as the official small1/small2 do) and an extracted folder."""
    folder = tmp_path / "omniglot"
    omniglot_zip(folder / "small1.zip", "images_background_small1", {"Greek": 2, "Korean": 1})
    omniglot_zip(folder / "small2.zip", "images_background_small2", {"Greek": 2, "Latin": 2})
    extra = omniglot_zip(tmp_path / "x.zip", "images_extra", {"Tagalog": 1}, drawings=7)
    with zipfile.ZipFile(extra) as zf:
        zf.extractall(folder)  # folder/images_extra/Tagalog/character01/*.png
    return folder


def test_counts_dedup_and_split(archives):
    data = read_omniglot(archives, progress=False)
    # Greek/character01-02 appear in both zips and count once.
    assert data.classes == ["Greek/character01", "Greek/character02", "Korean/character01", "Latin/character01",
                            "Latin/character02", "Tagalog/character01"]
    assert data.alphabets == ["Greek", "Korean", "Latin", "Tagalog"]
    n_train = torch.bincount(data.train_labels).tolist()
    n_test = torch.bincount(data.test_labels).tolist()
    assert n_test == [5] * 6 and n_train == [15] * 5 + [2]  # Tagalog has only 7 drawings
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape[1:] == (28, 28)
    assert len(data.sources) == 3


def _decoded(zip_path, member):
    with zipfile.ZipFile(zip_path) as zf, Image.open(io.BytesIO(zf.read(member))) as im:
        small = im.convert("L").resize((28, 28), Image.Resampling.BOX)
    return 255 - torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8).view(28, 28)


def test_first_five_drawings_are_the_test_set(archives):
    data = read_omniglot(archives, progress=False)
    z = archives / "small1.zip"
    korean = data.classes.index("Korean/character01")
    test = data.test_images[data.test_labels == korean]
    train = data.train_images[data.train_labels == korean]
    for d in range(5):  # drawings _01.._05, in file-name order
        assert torch.equal(test[d], _decoded(z, f"images_background_small1/Korean/character01/0001_{d + 1:02d}.png"))
    assert torch.equal(train[0], _decoded(z, "images_background_small1/Korean/character01/0001_06.png"))
    assert torch.equal(train[-1], _decoded(z, "images_background_small1/Korean/character01/0001_20.png"))
    assert int(test.max()) == 255 and int(test.min()) == 0  # ink is 255 on a 0 background


def test_cache_is_used_and_invalidated(archives, tmp_path, monkeypatch, omniglot_zip):
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in archives.rglob("*")}
    first = load_omniglot(archives, tmp_path / "cache", progress=False)
    cache_files = list((tmp_path / "cache" / "encoded").rglob("omniglot.pt"))
    assert len(cache_files) == 1  # in the cache folder, never beside the archives (writable here)
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in archives.rglob("*")} == before
    assert oct(cache_files[0].stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def boom(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(omniglot, "read_omniglot", boom)
    again = load_omniglot(archives, tmp_path / "cache", progress=False)
    assert again.classes == first.classes and torch.equal(again.train_images, first.train_images)
    # Changing an archive (here: a class added to one zip) rebuilds the tensors.
    omniglot_zip(archives / "small2.zip", "images_background_small2", {"Greek": 2, "Latin": 3})
    monkeypatch.undo()
    rebuilt = load_omniglot(archives, tmp_path / "cache", progress=False)
    assert rebuilt.num_classes == first.num_classes + 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_read_only_folder_caches_elsewhere(archives, tmp_path):
    for p in [archives, *archives.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555)
    try:
        data = load_omniglot(archives, tmp_path / "cache", progress=False)
        assert data.num_classes == 6
        assert not list(archives.rglob("omniglot.pt"))
        assert list((tmp_path / "cache").rglob("omniglot.pt"))
    finally:
        for p in [archives, *archives.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)


def test_bad_input(tmp_path, omniglot_zip):
    with pytest.raises(UserError, match="does not exist"):
        load_omniglot(tmp_path / "missing", tmp_path, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no Omniglot"):
        load_omniglot(tmp_path / "empty", tmp_path, progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.zip").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read"):
        read_omniglot(tmp_path / "bad", progress=False)
    few = omniglot_zip(tmp_path / "few" / "f.zip", "r", {"A": 1}, drawings=5)
    with pytest.raises(UserError, match="need more than"):
        read_omniglot(few, progress=False)


def test_download_and_offline_error(tmp_path, monkeypatch, omniglot_zip):
    src = tmp_path / "server"
    a = omniglot_zip(src / "images_background.zip", "images_background", {"Greek": 2})
    b = omniglot_zip(src / "images_evaluation.zip", "images_evaluation", {"Atlantean": 1})
    monkeypatch.setattr(omniglot, "OMNIGLOT_SOURCES", {a.name: a.as_uri(), b.name: b.as_uri()})
    data = load_omniglot("omniglot", tmp_path / "cache", progress=False)
    assert data.classes == ["Atlantean/character01", "Greek/character01", "Greek/character02"]
    assert sorted(p.name for p in (tmp_path / "cache" / "omniglot").glob("*.zip")) == sorted([a.name, b.name])

    missing = (tmp_path / "nowhere.zip").as_uri()
    monkeypatch.setattr(omniglot, "OMNIGLOT_SOURCES", {a.name: a.as_uri(), "images_evaluation.zip": missing})
    with pytest.raises(DownloadError) as e:
        load_omniglot("omniglot", tmp_path / "cache2", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "cache2" / "omniglot") in msg and "images_evaluation.zip" in msg
    assert not list((tmp_path / "cache2" / "omniglot").glob("*.zip"))  # no half of the set is kept


def test_augment_is_seeded_and_identity_without_motion():
    x = torch.rand(4, 1, 28, 28)
    same = augment(x, max_degrees=0.0, max_shift=0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    a = augment(x, generator=torch.Generator().manual_seed(1))
    b = augment(x, generator=torch.Generator().manual_seed(1))
    c = augment(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape
    # A rotation keeps the ink inside the frame of a centred blob.
    blob = torch.zeros(1, 1, 28, 28)
    blob[..., 11:17, 11:17] = 1
    rotated = augment(blob, max_shift=0.0, generator=torch.Generator().manual_seed(3))
    assert abs(float(rotated.sum()) - 36.0) < 2.0


def test_real_small_archives(shared_data):
    data = load_omniglot(shared_data / "omniglot", progress=False)
    assert data.num_classes == 242 and len(data.alphabets) == 8
    assert len(data.train_labels) == 242 * 15 and len(data.test_labels) == 242 * 5
