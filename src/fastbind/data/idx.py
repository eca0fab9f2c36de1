"""MNIST-format image sets: the IDX file format and the four files of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions), each
dimension as a big-endian uint32, then the values in row-major order, big-endian. The files
are usually kept gzip-compressed; :func:`read_idx` reads both forms (gzip is recognised by
its magic bytes, not by the file name).

An image set is four such files in one folder: ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each
plain or ``.gz`` (``train-images.idx3-ubyte``, as some copies name them, works too).
``data="fashion-mnist"`` or ``data="mnist"`` downloads the official ``.gz`` files into the
data folder (:func:`~fastbind.data.cache.data_root`) the first time.

Example::

    data = load_image_set("../shared/data/fashion-mnist")
    data.train_images.shape, data.train_images.dtype   # (60000, 28, 28), torch.uint8
    data.train_labels[:5], data.num_classes            # int64 class ids, 10
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastbind.data.cache import data_root
from fastbind.data.download import fetch_dataset
from fastbind.errors import UserError

__all__ = ["IMAGE_SETS", "ImageSet", "load_image_set", "read_idx", "read_image_set"]

#: The named image sets :func:`load_image_set` downloads (keys of ``download.SOURCES``).
IMAGE_SETS = ("fashion-mnist", "mnist")

# IDX type code -> big-endian numpy type of the stored values.
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# The four files of a set, by role, as the MNIST distribution names them (without .gz).
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it starts with the gzip magic bytes."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read IDX file {path}: {e.strerror or e}") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut file, EOFError
        text = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"cannot decompress IDX file {path}: {text}") from None


def read_idx(path: str | Path) -> torch.Tensor:
    """Read one IDX file (plain or gzip-compressed) as a tensor of its type and shape.

    Args:
        path: the file.

    Returns:
        A tensor with the file's dimensions: uint8 for type 0x08, int8 (0x09), int16 (0x0B),
        int32 (0x0C), float32 (0x0D) or float64 (0x0E).

    Raises:
        UserError: an unreadable file, a bad magic or type code, or a data length that does
            not match the dimensions; the one-line message names the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise UserError(f"{path} is not an IDX file (magic {data[:4].hex(' ') or 'missing'}, "
                        f"expected 00 00 <type> <dims>)")
    code, ndim = data[2], data[3]
    if code not in _TYPES:
        known = ", ".join(f"0x{c:02X}" for c in _TYPES)
        raise UserError(f"{path} has unknown IDX type code 0x{code:02X} (known: {known})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path} is truncated: {len(data)} bytes, shorter than its {ndim}-dimension header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_TYPES[code])
    expected = math.prod(shape) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        problem = "is truncated" if got < expected else "has extra bytes"
        raise UserError(f"{path} {problem}: {got} data bytes for shape {shape} of {dtype.name}, "
                        f"expected {expected}")
    values = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header)
    return torch.from_numpy(values.astype(dtype.newbyteorder("="))).reshape(shape)  # astype copies


def _check_pair(images: torch.Tensor, labels: torch.Tensor, images_name: str, labels_name: str) -> None:
    """Images ``(N, H, W)`` and integer labels ``(N,)`` in [0, 255], else a one-line error."""
    if images.dim() != 3:
        raise UserError(f"{images_name} holds shape {tuple(images.shape)}, expected images (N, H, W)")
    if images.dtype != torch.uint8:
        raise UserError(f"{images_name} holds {images.dtype}, expected uint8 pixels")
    if labels.dim() != 1:
        raise UserError(f"{labels_name} holds shape {tuple(labels.shape)}, expected labels (N,)")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise UserError(f"{labels_name} holds {labels.dtype}, expected integer labels")
    if len(labels) != len(images):
        raise UserError(f"{labels_name} has {len(labels)} labels for the {len(images)} images of {images_name}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) > 255):
        raise UserError(f"{labels_name} has labels in [{int(labels.min())}, {int(labels.max())}], "
                        f"expected class ids in [0, 255]")


@dataclass
class ImageSet:
    """An MNIST-format image set as tensors.

    Attributes:
        name: the set's name (``"fashion-mnist"``, ``"mnist"`` or its folder's name).
        train_images: ``(N_train, H, W)`` uint8.
        train_labels: ``(N_train,)`` int64 class ids.
        test_images: ``(N_test, H, W)`` uint8.
        test_labels: ``(N_test,)`` int64 class ids.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def __post_init__(self) -> None:
        _check_pair(self.train_images, self.train_labels, f"{self.name} train images", f"{self.name} train labels")
        _check_pair(self.test_images, self.test_labels, f"{self.name} test images", f"{self.name} test labels")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise UserError(f"{self.name}: train images are {tuple(self.train_images.shape[1:])} but test images "
                            f"{tuple(self.test_images.shape[1:])}")
        self.train_labels = self.train_labels.long()
        self.test_labels = self.test_labels.long()

    @property
    def num_classes(self) -> int:
        """Largest label + 1 over both splits (0 for an empty set)."""
        labels = torch.cat([self.train_labels, self.test_labels])
        return int(labels.max()) + 1 if len(labels) else 0

    def __repr__(self) -> str:
        h, w = self.train_images.shape[1:]
        return (f"ImageSet({self.name}: {self.num_classes} classes, {len(self.train_labels)} train / "
                f"{len(self.test_labels)} test images of {h}x{w})")


def _candidates(stem: str) -> list[str]:
    """File names one of the four files may have (``-idx3`` or ``.idx3``, plain or ``.gz``)."""
    names = [stem, stem.replace("-idx", ".idx", 1)]
    return [n + ext for n in names for ext in ("", ".gz")]


def _find_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The four files found in ``folder`` by role, and the standard names of the missing ones."""
    found, missing = {}, []
    for role, stem in _FILES.items():
        path = next((folder / n for n in _candidates(stem) if (folder / n).is_file()), None)
        if path is None:
            missing.append(stem)
        else:
            found[role] = path
    return found, missing


def read_image_set(folder: str | Path, *, name: str | None = None) -> ImageSet:
    """Read the four IDX files of an MNIST-format image set from ``folder``.

    Args:
        folder: holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or ``.gz``.
        name: the set's name; defaults to the folder's name.

    Returns:
        An :class:`ImageSet`.

    Raises:
        UserError: a missing folder or file (all missing files are named), or a file that is
            not a valid IDX file of images or labels.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"image set folder {folder} does not exist")
    found, missing = _find_files(folder)
    if missing:
        raise UserError(f"{folder} lacks {', '.join(missing)} (each may also end in .gz); an MNIST-format "
                        f"image set needs {', '.join(_FILES.values())}")
    t = {role: read_idx(path) for role, path in found.items()}
    for split in ("train", "test"):
        images, labels = f"{split}_images", f"{split}_labels"
        _check_pair(t[images], t[labels], str(found[images]), str(found[labels]))
    return ImageSet(name or folder.name, t["train_images"], t["train_labels"], t["test_images"], t["test_labels"])


def load_image_set(data: str | Path, cache_dir: str | Path | None = None, *, progress: bool = True) -> ImageSet:
    """An MNIST-format image set from a folder, or by name, downloaded the first time.

    Args:
        data: a folder of the four IDX files, or ``"fashion-mnist"`` / ``"mnist"`` (when no
            folder of that name exists) for the set in ``<data folder>/<name>``, downloaded
            from the official source if missing.
        cache_dir: the ``data_dir`` setting: folder of the downloaded sets (default:
            :func:`~fastbind.data.cache.default_data_dir`).
        progress: show download progress bars.

    Returns:
        An :class:`ImageSet`.

    Raises:
        UserError: ``data`` is neither a folder nor a known name, or the files are bad.
        DownloadError: the download failed; the message names the folder and the files.
    """
    path = Path(data).expanduser()
    if path.is_dir():
        return read_image_set(path)
    name = str(data).strip().lower()
    if name not in IMAGE_SETS:
        raise UserError(f"data={data} is neither a folder nor one of: {', '.join(IMAGE_SETS)}")
    folder = data_root(cache_dir) / name
    if _find_files(folder)[1]:  # a set put there by hand, in any accepted naming, is used as is
        fetch_dataset(name, folder, progress=progress)
    return read_image_set(folder, name=name)
