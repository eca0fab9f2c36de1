"""IDX files and MNIST-format image sets, from files written in tmp_path (and ../shared/data)."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fastbind.data import download as dl
from fastbind.data.download import DownloadError
from fastbind.data.idx import ImageSet, load_image_set, read_idx, read_image_set
from fastbind.errors import UserError

_CODES = {np.dtype("uint8"): 0x08, np.dtype("int8"): 0x09, np.dtype("int16"): 0x0B, np.dtype("int32"): 0x0C,
          np.dtype("float32"): 0x0D, np.dtype("float64"): 0x0E}
_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file's bytes: magic, big-endian dims, big-endian values."""
    header = bytes([0, 0, _CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray | bytes, *, compress: bool | None = None) -> Path:
    """Write ``array`` (or raw bytes) as an IDX file, gzip-compressed when the name ends in ``.gz``."""
    data = array if isinstance(array, bytes) else _idx_bytes(array)
    if compress if compress is not None else path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _images(n: int, seed: int, size: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size), dtype=np.uint8)


def _labels(n: int, classes: int = 3) -> np.ndarray:
    return (np.arange(n) % classes).astype(np.uint8)


def write_image_set(folder: Path, *, n_train: int = 12, n_test: int = 6, gz: tuple[bool, ...] = (True,) * 4) -> dict:
    """The four files of a tiny set (gz chooses ``.gz`` per file); returns the arrays by file stem."""
    arrays = dict(zip(_NAMES, (_images(n_train, 0), _labels(n_train), _images(n_test, 1), _labels(n_test)),
                      strict=True))
    for (name, array), compressed in zip(arrays.items(), gz, strict=True):
        write_idx(folder / (name + ".gz" if compressed else name), array)
    return arrays


# --------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_read_idx_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(3)
    array = (rng.standard_normal((3, 5, 2)) * 100).astype(dtype)
    got = read_idx(write_idx(tmp_path / f"x-idx3{suffix}", array))
    assert got.dtype == getattr(torch, dtype) and tuple(got.shape) == (3, 5, 2)
    assert np.array_equal(got.numpy(), array)


def test_read_idx_big_endian_values_and_1d(tmp_path):
    labels = np.array([0, 1, 70000, -5], dtype=np.int32)
    path = write_idx(tmp_path / "labels", labels)
    assert path.read_bytes()[12:16] == b"\x00\x00\x00\x01"  # values are stored big-endian
    assert read_idx(path).tolist() == [0, 1, 70000, -5]


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    array = _images(2, 5)
    gz_without_suffix = write_idx(tmp_path / "plain-name", array, compress=True)
    raw_with_gz_suffix = write_idx(tmp_path / "odd.gz", array, compress=False)
    assert torch.equal(read_idx(gz_without_suffix), torch.from_numpy(array))
    assert torch.equal(read_idx(raw_with_gz_suffix), torch.from_numpy(array))


def _good() -> bytes:
    return _idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))


@pytest.mark.parametrize(("content", "match"), [
    (b"\x01\x00\x08\x01" + b"\x00\x00\x00\x01" + b"x", "not an IDX file"),
    (b"", "not an IDX file"),
    (b"\x00\x00\x07\x01" + b"\x00\x00\x00\x01" + b"x", "unknown IDX type code 0x07"),
    (_good()[:-1], "is truncated: 5 data bytes"),
    (_good()[:9], "is truncated"),  # inside the dims
    (_good() + b"\x00", "has extra bytes: 7 data bytes"),
    (gzip.compress(_good())[:-6], "cannot decompress"),
    (b"\x1f\x8b" + b"not really gzip", "cannot decompress"),
])
def test_read_idx_malformed_is_one_line_naming_the_file(tmp_path, content, match):
    path = tmp_path / "bad-idx2-ubyte"
    path.write_bytes(content)
    with pytest.raises(UserError, match=match) as e:
        read_idx(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(UserError, match="cannot read IDX file"):
        read_idx(tmp_path / "nope")


# --------------------------------------------------------------------------- image sets


def test_read_image_set_mixed_gz_and_raw(tmp_path):
    folder = tmp_path / "tiny"
    arrays = write_image_set(folder, gz=(True, False, False, True))
    data = read_image_set(folder)
    assert isinstance(data, ImageSet) and data.name == "tiny" and data.num_classes == 3
    assert data.train_images.dtype == torch.uint8 and tuple(data.train_images.shape) == (12, 4, 4)
    assert data.train_labels.dtype == torch.int64 and data.test_labels.dtype == torch.int64
    assert np.array_equal(data.train_images.numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(data.test_images.numpy(), arrays["t10k-images-idx3-ubyte"])
    assert data.test_labels.tolist() == _labels(6).tolist()


def test_read_image_set_dotted_names(tmp_path):
    for name, array in zip(_NAMES, (_images(4, 0), _labels(4), _images(2, 1), _labels(2)), strict=True):
        write_idx(tmp_path / name.replace("-idx", ".idx"), array)
    assert len(read_image_set(tmp_path).train_labels) == 4


def test_read_image_set_names_missing_files(tmp_path):
    write_image_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(UserError) as e:
        read_image_set(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg
    assert "lacks train-labels-idx1-ubyte, t10k-images-idx3-ubyte " in msg
    with pytest.raises(UserError, match="does not exist"):
        read_image_set(tmp_path / "nope")


@pytest.mark.parametrize(("name", "array", "match"), [
    ("train-images-idx3-ubyte", np.zeros((12, 16), np.uint8), r"shape \(12, 16\), expected images"),
    ("train-images-idx3-ubyte", np.zeros((12, 4, 4), np.float32), "expected uint8 pixels"),
    ("train-labels-idx1-ubyte", np.zeros((12, 1), np.uint8), "expected labels"),
    ("train-labels-idx1-ubyte", np.zeros(12, np.float32), "expected integer labels"),
    ("train-labels-idx1-ubyte", np.zeros(11, np.uint8), "has 11 labels for the 12 images"),
    ("t10k-labels-idx1-ubyte", np.full(6, 300, np.int32), r"labels in \[300, 300\]"),
    ("t10k-labels-idx1-ubyte", np.full(6, -1, np.int8), r"labels in \[-1, -1\]"),
])
def test_read_image_set_bad_contents_name_the_file(tmp_path, name, array, match):
    write_image_set(tmp_path)
    (tmp_path / f"{name}.gz").unlink()
    write_idx(tmp_path / name, array)
    with pytest.raises(UserError, match=match) as e:
        read_image_set(tmp_path)
    assert "\n" not in str(e.value) and str(tmp_path / name) in str(e.value)


def test_image_set_checks_direct_construction():
    images, labels = torch.zeros(3, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 4])
    data = ImageSet("x", images, labels.to(torch.uint8), images[:1], labels[:1])
    assert data.train_labels.dtype == torch.int64 and data.num_classes == 5
    with pytest.raises(UserError, match="x test labels has 2 labels"):
        ImageSet("x", images, labels, images[:1], labels[:2])
    with pytest.raises(UserError, match="train images are"):
        ImageSet("x", images, labels, torch.zeros(1, 3, 3, dtype=torch.uint8), labels[:1])


# --------------------------------------------------------------------------- load_image_set


def _serve_fashion(root: Path, monkeypatch, base: str | list[str], md5: dict[str, str] | None = None) -> dict:
    """Write a tiny set's .gz files under ``root`` and point SOURCES["fashion-mnist"] at ``base``."""
    arrays = write_image_set(root)
    files = {f"{n}.gz": f"{n}.gz" for n in _NAMES}
    if md5 is None:
        md5 = {f: hashlib.md5((root / f).read_bytes()).hexdigest() for f in files}
    urls = (base,) if isinstance(base, str) else tuple(base)
    monkeypatch.setitem(dl.SOURCES, "fashion-mnist", dl.DatasetSource(
        urls=urls, archive=None, members=files, digests={f: f"md5:{h}" for f, h in md5.items()}))
    return arrays


def test_load_image_set_downloads_by_name(http_root, tmp_path, monkeypatch, closed_port_url):
    root, base = http_root
    arrays = _serve_fashion(root, monkeypatch, [closed_port_url, f"{base}/"])  # the first mirror is down
    cache = tmp_path / "cache"
    data = load_image_set("fashion-mnist", cache, progress=False)
    assert data.name == "fashion-mnist" and data.num_classes == 3
    assert np.array_equal(data.train_images.numpy(), arrays["train-images-idx3-ubyte"])
    folder = cache / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.gz" for n in _NAMES)  # kept compressed
    # Second call: read from the folder, nothing fetched (the server could be gone).
    monkeypatch.setitem(dl.SOURCES, "fashion-mnist", dl.DatasetSource((closed_port_url,), None, {}))
    assert torch.equal(load_image_set("FASHION-MNIST", cache, progress=False).test_labels, data.test_labels)
    # A folder path is read as is.
    assert load_image_set(folder).name == "fashion-mnist"


def test_load_image_set_bad_md5_leaves_nothing(http_root, tmp_path, monkeypatch):
    root, base = http_root
    bad = {f"{n}.gz": "0" * 32 for n in _NAMES}
    _serve_fashion(root, monkeypatch, base, bad)
    with pytest.raises(DownloadError, match="train-images-idx3-ubyte.gz has md5"):
        load_image_set("fashion-mnist", tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache" / "fashion-mnist").iterdir()) == []


def test_load_image_set_mirror_missing_a_file_leaves_nothing(http_root, tmp_path, monkeypatch):
    root, base = http_root
    _serve_fashion(root, monkeypatch, base)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()  # the last file fails after three were written
    with pytest.raises(DownloadError, match="404"):
        load_image_set("fashion-mnist", tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache" / "fashion-mnist").iterdir()) == []


def test_load_image_set_offline_names_folder_and_files(tmp_path, monkeypatch, closed_port_url):
    _serve_fashion(tmp_path / "www", monkeypatch, closed_port_url)
    with pytest.raises(DownloadError) as e:
        load_image_set("fashion-mnist", tmp_path / "cache", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "cache" / "fashion-mnist") in msg
    assert ", ".join(f"{n}.gz" for n in _NAMES) in msg


def test_load_image_set_unknown_name(tmp_path):
    with pytest.raises(UserError, match="data=kmnist is neither a folder nor one of: fashion-mnist, mnist"):
        load_image_set("kmnist", tmp_path)


def test_image_set_sources_are_official():
    fashion, mnist = dl.SOURCES["fashion-mnist"], dl.SOURCES["mnist"]
    assert fashion.urls == ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    assert mnist.urls == ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
    for src in (fashion, mnist):
        assert src.archive is None and src.files == tuple(f"{n}.gz" for n in _NAMES)
        assert all(d.startswith("md5:") and len(d) == 36 for d in src.digests.values())
        assert set(src.digests) == set(src.files)
    assert fashion.digests["train-images-idx3-ubyte.gz"] == "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert mnist.digests["train-images-idx3-ubyte.gz"] == "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873"


def test_real_fashion_mnist(shared_data):
    folder = shared_data / "fashion-mnist"
    if not folder.is_dir():
        pytest.skip("../shared/data/fashion-mnist is not present")
    data = load_image_set(folder)
    assert tuple(data.train_images.shape) == (60_000, 28, 28) and data.train_images.dtype == torch.uint8
    assert tuple(data.test_images.shape) == (10_000, 28, 28) and data.test_images.dtype == torch.uint8
    assert data.num_classes == 10
    assert torch.bincount(data.train_labels, minlength=10).tolist() == [6_000] * 10
    assert torch.bincount(data.test_labels, minlength=10).tolist() == [1_000] * 10
    # Written back as IDX, the tensors are byte for byte the published (decompressed) files.
    published = {"train-labels-idx1-ubyte": ("9018921c3c673c538a1fc5bad174d6f9", data.train_labels),
                 "t10k-images-idx3-ubyte": ("8181f5470baa50b63fa0f6fddb340f0a", data.test_images),
                 "t10k-labels-idx1-ubyte": ("15d484375f8d13e6eb1aabb0c3f46965", data.test_labels)}
    for name, (md5, tensor) in published.items():
        assert hashlib.md5(_idx_bytes(tensor.to(torch.uint8).numpy())).hexdigest() == md5, name
