import os
from pathlib import Path

import pytest
import torch

# Keep CPU runs reproducible and light on the 2-core CI machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _encoded_cache(tmp_path_factory):
    """Encoded-data caches of the whole run go to a temp folder, never the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTBIND_CACHE", str(tmp_path_factory.mktemp("fastbind-cache")))
        yield


@pytest.fixture
def shared_data() -> Path:
    """The real data sets beside the repository (../shared/data); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def rank_batches():
    """The function :func:`unequal_rank_batches` (the Hebbian layers' 2-rank tests share it)."""
    return unequal_rank_batches


def unequal_rank_batches(n_classes: int, dim: int, *, seed: int = 9) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Three steps of per-rank ``(h, y)`` batches for two ranks: unequal sizes, one empty local
    batch, and every fourth label ``-100`` (ignored)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for sizes in [(5, 9), (0, 3), (7, 1)]:
        step = []
        for n in sizes:
            y = torch.randint(0, n_classes, (n,), generator=g)
            y[::4] = -100
            step.append((torch.randn(n, dim, generator=g), y))
        batches.append(step)
    return batches


@pytest.fixture(scope="session")
def omniglot_zip():
    """The function :func:`write_omniglot_zip` (tests build tiny Omniglot archives with it)."""
    return write_omniglot_zip


def write_omniglot_zip(path: Path, root: str, alphabets: dict[str, int], *, drawings: int = 20, seed: int = 0,
                       start: int = 0) -> Path:
    """A zip laid out like the official Omniglot archives: ``root/alphabet/characterNN/XXXX_DD.png``.

    Each class's drawings are blobs at a class-specific place (so a convnet can tell them
    apart), 105 × 105, black ink on white like the originals. ``start`` offsets the
    character ids' seeds so two archives can share identical classes.
    """
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{root}/", b"")
        for alphabet, n_chars in alphabets.items():
            for c in range(1, n_chars + 1):
                rng = np.random.default_rng([seed, sum(map(ord, alphabet)), c])
                cy, cx = rng.integers(20, 85, size=2)
                for d in range(1, drawings + 1):
                    img = np.full((105, 105), 255, dtype=np.uint8)
                    jy, jx = rng.integers(-4, 5, size=2)
                    img[cy + jy - 12 : cy + jy + 12, cx + jx - 5 : cx + jx + 5] = 0
                    buf = io.BytesIO()
                    Image.fromarray(img).convert("1").save(buf, format="PNG")
                    zf.writestr(f"{root}/{alphabet}/character{c:02d}/{c + start:04d}_{d:02d}.png", buf.getvalue())
    return path
