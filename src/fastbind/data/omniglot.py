"""Omniglot (Lake, Salakhutdinov, Tenenbaum 2015): handwritten characters of 50 alphabets.

:func:`load_omniglot` reads every Omniglot archive under a folder — the official zips
(``images_background.zip``, ``images_evaluation.zip``, the ``…_small1/2.zip`` subsets) or
their extracted folders, laid out ``<archive>/<alphabet>/<character>/<drawing>.png`` —
with one class per alphabet/character. A class present in two archives (the small
subsets share Greek and Latin) is counted once. Drawings are taken in file-name order;
the first ``test_per_class`` (5) of each class form the test set and the rest (15) the
training set, as in Rae et al. (2018), section 4.1. Images are resized to 28 × 28 once
(area averaging, ink = 255 on a 0 background) and kept as one uint8 tensor file in the
encoded-data cache (:mod:`fastbind.data.cache`), so later runs start in a second; the file
is rebuilt when the archives change.

``data="omniglot"`` downloads the two full archives (1,623 classes) from the official
repository into the data folder the first time; offline, the error names the folder to
put them in by hand.

Example::

    data = load_omniglot("../shared/data/omniglot")       # 242 classes from the small subsets
    idx = torch.randint(len(data.train_labels), (64,), generator=g)
    x = data.train_images[idx]                             # (64, 28, 28) uint8, labels data.train_labels[idx]
    x = augment(x.float().div(255).unsqueeze(1), generator=g)  # rotation and shift, batched
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastbind._io import atomic_write
from fastbind.data.cache import cached, data_root, entry
from fastbind.data.download import DownloadError, download
from fastbind.errors import UserError

__all__ = ["OMNIGLOT_SOURCES", "Omniglot", "augment", "load_omniglot", "read_omniglot"]

# The official archives (brendenlake/omniglot, python/), 964 + 659 classes.
OMNIGLOT_SOURCES = {
    "images_background.zip": "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_background.zip",
    "images_evaluation.zip": "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_evaluation.zip",
}
IMAGE_SIZE = 28


@dataclass
class Omniglot:
    """Omniglot images as uint8 tensors, split per class into test (first drawings) and train.

    Attributes:
        classes: ``"alphabet/character"`` names; class ``i`` is ``classes[i]`` (sorted).
        train_images: ``(N_train, 28, 28)`` uint8, ink 255, grouped by class.
        train_labels: ``(N_train,)`` int64 class ids.
        test_images: ``(N_test, 28, 28)`` uint8.
        test_labels: ``(N_test,)`` int64.
        sources: the archives (or folders) read, in the order they were read.
    """

    classes: list[str]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    sources: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def alphabets(self) -> list[str]:
        return sorted({c.split("/")[0] for c in self.classes})

    def __repr__(self) -> str:
        return (f"Omniglot({self.num_classes} classes from {len(self.alphabets)} alphabets, "
                f"{len(self.train_labels)} train / {len(self.test_labels)} test images)")


# --------------------------------------------------------------------------- reading


def _character_key(parts: list[str]) -> str | None:
    """``alphabet/character`` of a drawing's path parts (``…/alphabet/character/x.png``)."""
    if len(parts) < 3 or not parts[-1].lower().endswith(".png") or parts[-1].startswith("."):
        return None
    return f"{parts[-3]}/{parts[-2]}"


def _find_sources(root: Path) -> list[Path]:
    """Zips and extracted archive folders under ``root`` (a zip itself is one source)."""
    if root.is_file():
        if not zipfile.is_zipfile(root):
            raise UserError(f"{root} is not a zip archive of Omniglot images")
        return [root]
    if not root.is_dir():
        raise UserError(f"Omniglot folder {root} does not exist")
    zips = sorted(root.rglob("*.zip"))
    # An extracted archive: a folder whose PNGs sit two levels below it (alphabet/character/).
    folders = sorted({p.parents[2] for p in root.rglob("*.png") if len(p.relative_to(root).parts) >= 3})
    return zips + folders


def _drawings(source: Path) -> dict[str, list[tuple[str, Callable[[], bytes]]]]:
    """Per class key, ``(file name, reader)`` of each drawing in one source."""
    out: dict[str, list[tuple[str, Callable[[], bytes]]]] = {}
    if source.is_file():
        zf = zipfile.ZipFile(source)
        for info in zf.infolist():
            parts = info.filename.replace("\\", "/").split("/")
            key = None if info.is_dir() else _character_key(parts)
            if key is not None:
                out.setdefault(key, []).append((parts[-1], lambda info=info: zf.read(info)))
    else:
        for p in source.rglob("*.png"):
            rel = p.relative_to(source).parts
            key = _character_key(list(rel)) if len(rel) == 3 else None
            if key is not None:
                out.setdefault(key, []).append((p.name, p.read_bytes))
    return out


def _source_key(sources: list[Path]) -> list[dict]:
    """What the cache depends on: each source's name, size and modification time."""
    key = []
    for s in sources:
        files = [s] if s.is_file() else sorted(s.rglob("*.png"))
        key.append({"source": s.name, "files": len(files), "bytes": sum(f.stat().st_size for f in files),
                    "mtime_ns": max((f.stat().st_mtime_ns for f in files), default=0)})
    return key


def _decode(blob: bytes, size: int) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        small = im.convert("L").resize((size, size), Image.Resampling.BOX)  # area average
        raw = torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8).view(size, size)
    return 255 - raw  # ink (black on white in the files) becomes 255 on a 0 background


def read_omniglot(root: str | Path, *, test_per_class: int = 5, progress: bool = True) -> Omniglot:
    """Read and resize every drawing under ``root`` (no cache; see :func:`load_omniglot`).

    Raises:
        UserError: No Omniglot images found, an unreadable archive or image, or a class with
            no more than ``test_per_class`` drawings.
    """
    root = Path(root)
    sources = _find_sources(root)
    per_class: dict[str, list[tuple[str, Callable[[], bytes]]]] = {}
    try:
        for source in sources:
            for key, drawings in _drawings(source).items():
                per_class.setdefault(key, drawings)  # a class in two archives counts once
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"cannot read the Omniglot archives under {root}: {e}") from None
    if not per_class:
        raise UserError(f"no Omniglot images under {root} (expected <archive>/<alphabet>/<character>/*.png, "
                        f"zipped or extracted)")
    classes = sorted(per_class)
    train, test, train_y, test_y = [], [], [], []
    total = sum(len(v) for v in per_class.values())
    with tqdm(total=total, desc="omniglot: resizing", disable=not progress, leave=False) as bar:
        for c, key in enumerate(classes):
            drawings = sorted(per_class[key], key=lambda d: d[0])
            if len(drawings) <= test_per_class:
                raise UserError(f"Omniglot class {key} has {len(drawings)} drawings; need more than "
                                f"test_per_class={test_per_class}")
            for i, (name, read) in enumerate(drawings):
                try:
                    img = _decode(read(), IMAGE_SIZE)
                except Exception as e:  # PIL raises many types for a damaged file
                    raise UserError(f"cannot decode Omniglot image {key}/{name}: {e}") from None
                (test if i < test_per_class else train).append(img)
                (test_y if i < test_per_class else train_y).append(c)
                bar.update(1)
    return Omniglot(classes, torch.stack(train), torch.tensor(train_y), torch.stack(test), torch.tensor(test_y),
                    [str(s) for s in sources])


def _fetch_full(folder: Path, progress: bool) -> None:
    """Download the two full archives into ``folder`` unless some Omniglot archive is there."""
    if folder.is_dir() and any(folder.glob("*.zip")):
        return
    reasons = []
    for name, url in OMNIGLOT_SOURCES.items():
        try:
            download(url, folder / name, progress=progress)
        except DownloadError as e:
            reasons.append(str(e))
    if reasons:
        for name in OMNIGLOT_SOURCES:  # never keep half of the set
            (folder / name).unlink(missing_ok=True)
        raise DownloadError(f"could not download Omniglot into {folder} ({reasons[0]}); put "
                            f"{' and '.join(OMNIGLOT_SOURCES)} there by hand (from "
                            f"https://github.com/brendenlake/omniglot/tree/master/python)")


def load_omniglot(data: str | Path, cache_dir: str | Path | None = None, *, test_per_class: int = 5,
                  progress: bool = True) -> Omniglot:
    """Omniglot from ``data`` (a folder of archives, one archive, or ``"omniglot"``), cached.

    Args:
        data: A folder holding Omniglot zips and/or extracted archives, a zip, or
            ``"omniglot"`` to download the full set into ``<data folder>/omniglot``.
        cache_dir: The ``data_dir`` setting: folder of the downloaded set and of the
            encoded-data cache (defaults: :func:`~fastbind.data.cache.default_data_dir`,
            :func:`~fastbind.data.cache.default_cache_dir`). ``data`` is never written to.
        test_per_class: Drawings per class in the test set (the first ones by file name).
        progress: Progress bars for downloading and resizing.

    Returns:
        An :class:`Omniglot`.
    """
    if str(data).strip().lower() == "omniglot":
        root = data_root(cache_dir) / "omniglot"
        _fetch_full(root, progress)
    else:
        root = Path(data).expanduser()
    sources = _find_sources(root)
    if not sources:
        raise UserError(f"no Omniglot archives or image folders under {root}")
    key = {"size": IMAGE_SIZE, "test_per_class": test_per_class, "sources": _source_key(sources)}
    return cached(entry(root, f"omniglot-{IMAGE_SIZE}", cache_dir), key,
                  lambda: read_omniglot(root, test_per_class=test_per_class, progress=progress), _write, _read)


def _write(slot: Path, data: Omniglot) -> dict:
    state = {"classes": data.classes, "sources": data.sources, "train_images": data.train_images,
             "train_labels": data.train_labels, "test_images": data.test_images, "test_labels": data.test_labels}
    atomic_write(slot / "omniglot.pt", lambda fh: torch.save(state, fh))
    return {}


def _read(slot: Path, meta: Mapping) -> Omniglot:
    s = torch.load(slot / "omniglot.pt", weights_only=True)
    return Omniglot(list(s["classes"]), s["train_images"], s["train_labels"], s["test_images"],
                    s["test_labels"], list(s["sources"]))


# --------------------------------------------------------------------------- augmentation


def augment(x: torch.Tensor, *, max_degrees: float = 30.0, max_shift: float = 0.1,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Random rotation in ``[-max_degrees, max_degrees]`` and shift, one affine warp per batch.

    Args:
        x: ``(B, C, H, W)`` float images (background 0, which fills the uncovered border).
        max_shift: largest shift as a fraction of the image size, per axis.
        generator: random source (e.g. the run's own, for exact resumes).

    Returns:
        ``(B, C, H, W)``, bilinear-resampled.
    """
    B = x.shape[0]
    u = torch.rand(B, 3, generator=generator, device="cpu").to(x.device, x.dtype) * 2 - 1  # (B, 3) in [-1, 1)
    angle = u[:, 0] * (max_degrees * torch.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    shift = u[:, 1:] * (2 * max_shift)  # affine_grid coordinates span 2 per image
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
