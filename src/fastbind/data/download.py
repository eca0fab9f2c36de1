"""Downloading the public language-modelling benchmarks from their official sources.

:func:`download` streams one URL into a temp file beside the destination (with a tqdm
bar), checks its SHA-256 when one is given, and renames it into place, so an interrupted
download never leaves a half-written file under the final name.

:func:`fetch_dataset` knows where WikiText-2/103, Penn Treebank, Fashion-MNIST and MNIST
live. For a set published as one archive it downloads the archive, extracts only the split
files it needs (by exact member name, regular files only, each written under a fixed file
name in the target folder, so a hostile archive cannot write elsewhere), checks the
extracted files against known digests where one is known, and deletes the archive. For a
set published as plain files (the IDX ``.gz`` files of the MNIST family) it downloads each
file from one mirror after another and checks it. Any failure is a :class:`DownloadError`
(a ``UserError``) whose one line names the folder and the files a user can put there by
hand instead.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from fastbind._io import atomic_write
from fastbind.errors import UserError

_CHUNK = 1 << 20


class DownloadError(UserError):
    """A download or extraction failed (offline, HTTP error, bad checksum, bad archive)."""


@dataclass(frozen=True)
class DatasetSource:
    """Where a data set comes from and what to keep from it.

    Attributes:
        urls: archive URLs, or with ``archive=None`` base URLs (folders) of the files, tried
            in order (the official one first).
        archive: file name to download the archive as; ``None`` for a set published as
            plain files, each fetched on its own.
        members: archive member path (without a leading ``./``) -> file name in the folder;
            with ``archive=None``, file name under each base URL -> file name in the folder.
        digests: file name -> ``"sha256:<hex>"``, ``"sha1:<hex>"`` or ``"md5:<hex>"`` for
            files whose content is known; files without an entry are not checked.
    """

    urls: tuple[str, ...]
    archive: str | None
    members: Mapping[str, str]
    digests: Mapping[str, str] = field(default_factory=dict)

    @property
    def files(self) -> tuple[str, ...]:
        """The file names this source puts in the folder."""
        return tuple(self.members.values())


def _wikitext(name: str, digests: Mapping[str, str]) -> DatasetSource:
    return DatasetSource(
        urls=(
            f"https://s3.amazonaws.com/research.metamind.io/wikitext/{name}-v1.zip",
            # The S3 bucket has been retired at times; the dataset author's mirror has the same zip.
            f"https://wikitext.smerity.com/{name}-v1.zip",
        ),
        archive=f"{name}-v1.zip",
        members={f"{name}/wiki.{s}.tokens": f"wiki.{s}.tokens" for s in ("train", "valid", "test")},
        digests=digests,
    )


_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _idx_files(urls: tuple[str, ...], md5: tuple[str, ...]) -> DatasetSource:
    """An MNIST-format set: the four IDX ``.gz`` files under each base URL, kept compressed."""
    return DatasetSource(urls=urls, archive=None, members={f: f for f in _MNIST_FILES},
                         digests={f: f"md5:{h}" for f, h in zip(_MNIST_FILES, md5, strict=True)})


#: Official sources of the named data sets. Tests (and users behind a mirror) may replace
#: entries; the digests pin the extracted files, so any mirror serving the same data works.
SOURCES: dict[str, DatasetSource] = {
    "wikitext-2": _wikitext(
        "wikitext-2",
        {
            "wiki.train.tokens": "sha256:9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
            "wiki.valid.tokens": "sha256:f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
            "wiki.test.tokens": "sha256:d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
        },
    ),
    "wikitext-103": _wikitext(
        "wikitext-103",
        {
            "wiki.train.tokens": "sha1:b7497e2dfe77e72cfef5e3dbc61b7b53712ac211",
            "wiki.valid.tokens": "sha1:c326ac59dc587676d58c422eb8a03e119582f92b",
            "wiki.test.tokens": "sha1:8a5befc548865cec54ed4273cf87dbbad60d1e47",
        },
    ),
    # Mikolov's preprocessing; no independently published digest of the tarball's members
    # is known to us, so they are not checked (the reader still checks they are non-empty).
    "ptb": DatasetSource(
        urls=("http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",),
        archive="simple-examples.tgz",
        members={f"simple-examples/data/ptb.{s}.txt": f"ptb.{s}.txt" for s in ("train", "valid", "test")},
    ),
    # The md5s of the .gz files published in zalandoresearch/fashion-mnist's README.
    "fashion-mnist": _idx_files(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
         "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
    # LeCun's page is the original; the PyTorch CI mirror serves the same files more reliably.
    # The md5s are those torchvision pins for these files.
    "mnist": _idx_files(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
         "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
}


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (``algorithm``: any ``hashlib`` name)."""
    # md5 and sha1 only identify published files here; they guard against no attacker.
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _one_line(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        text = f"HTTP {err.code} {err.reason}"
    else:
        text = str(getattr(err, "reason", None) or err) or type(err).__name__
    return " ".join(text.split())


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Stream ``url`` to ``dest`` atomically.

    The body goes to a temp file in ``dest``'s folder while its SHA-256 is computed on the
    fly; only a complete body with the right checksum is renamed to ``dest``.

    Args:
        url: any URL ``urllib`` opens (``https://``, ``http://``, ``file://``).
        dest: the final file path; its folder is created.
        sha256: expected hex digest, or ``None`` to skip the check.
        progress: show a tqdm progress bar (on stderr).
        timeout: socket timeout in seconds.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        DownloadError: network/HTTP failure, truncated body or checksum mismatch.
    """
    dest = Path(dest)
    h = hashlib.sha256()

    def fetch(out) -> None:
        received, total = 0, None
        req = urllib.request.Request(url, headers={"User-Agent": "fastbind"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                          disable=not progress, leave=False) as bar:
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:  # ValueError: bad URL
            raise DownloadError(f"could not download {url}: {_one_line(e)}") from None
        if total is not None and received != total:
            raise DownloadError(f"download of {url} was cut short ({received} of {total} bytes)")
        if sha256 is not None and h.hexdigest() != sha256.lower():
            raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {h.hexdigest()}")

    # A failed or corrupt download raises inside the write, so nothing lands at dest.
    atomic_write(dest, fetch)
    return dest


def _member_key(name: str) -> str:
    """Normalise an archive member name for exact matching (``./a/b`` -> ``a/b``)."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def _safe_target(folder: Path, file_name: str) -> Path:
    # Targets come from a fixed mapping, but check anyway: a bare file name, no traversal.
    if not file_name or Path(file_name).name != file_name or file_name in (".", ".."):
        raise DownloadError(f"refusing to extract to {file_name!r}: not a plain file name")
    return folder / file_name


def extract_members(archive: str | os.PathLike, members: Mapping[str, str], folder: str | os.PathLike) -> list[Path]:
    """Extract selected members of a zip or tar archive into ``folder``.

    Only members whose normalised name is a key of ``members`` are read; each is written
    to ``folder / members[name]``. Links, devices and directories are refused, so neither
    ``..`` names nor symlinks can reach outside ``folder``.

    Args:
        archive: path of a ``.zip`` or a (compressed) tar file.
        members: member name (``a/b.txt``; a leading ``./`` is ignored) -> target file name.
        folder: destination folder (created).

    Returns:
        The written paths, in the order of ``members``.

    Raises:
        DownloadError: unreadable archive, a wanted member missing or not a regular file.
    """
    archive, folder = Path(archive), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {_member_key(k): _safe_target(folder, v) for k, v in members.items()}
    done: set[str] = set()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    key = _member_key(info.filename)
                    if key in wanted and key not in done:
                        if info.is_dir():
                            raise DownloadError(f"archive member {info.filename} is a folder, expected a file")
                        with zf.open(info) as src:
                            atomic_write(wanted[key], lambda out, src=src: shutil.copyfileobj(src, out, _CHUNK))
                        done.add(key)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                for m in tf:
                    key = _member_key(m.name)
                    if key in wanted and key not in done:
                        if not m.isfile():
                            raise DownloadError(f"archive member {m.name} is not a regular file")
                        src = tf.extractfile(m)
                        assert src is not None  # regular files always have a stream
                        with src:
                            atomic_write(wanted[key], lambda out, src=src: shutil.copyfileobj(src, out, _CHUNK))
                        done.add(key)
        else:
            raise DownloadError(f"{archive} is neither a zip nor a tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise DownloadError(f"could not extract {archive}: {_one_line(e)}") from None
    missing = [k for k in wanted if k not in done]
    if missing:
        raise DownloadError(f"{archive} lacks {', '.join(missing)}")
    return [wanted[k] for k in wanted]


def _check_digest(path: Path, expected: str) -> None:
    """Compare ``path`` with ``"sha256:<hex>"``, ``"sha1:<hex>"`` or ``"md5:<hex>"``."""
    algo, _, hexdigest = expected.partition(":")
    if algo not in ("sha256", "sha1", "md5"):
        raise DownloadError(f"unknown digest {expected!r} for {path.name} (expected sha256:, sha1: or md5:)")
    got = file_digest(path, algo)
    if got != hexdigest.lower():
        raise DownloadError(f"{path.name} has {algo} {got}, expected {hexdigest}")


def _fetch_archive(src: DatasetSource, url: str, folder: Path, progress: bool) -> None:
    """Download ``src``'s archive from ``url``, extract and check its files, delete it.

    On any failure the set's files are removed: never a mix of files from different attempts.
    """
    assert src.archive is not None
    archive = folder / src.archive
    try:
        download(url, archive, progress=progress)
        written = extract_members(archive, src.members, folder)
        for path in written:
            if path.name in src.digests:
                _check_digest(path, src.digests[path.name])
    except DownloadError:
        for f in src.files:
            (folder / f).unlink(missing_ok=True)
        raise
    finally:
        archive.unlink(missing_ok=True)


def _fetch_files(src: DatasetSource, base: str, folder: Path, progress: bool) -> None:
    """Download the missing plain files of ``src`` from one base URL and check them.

    Files already in ``folder`` are kept; on any failure the files this call wrote are
    removed again, so the next mirror starts from the same state.
    """
    written: list[Path] = []
    try:
        for remote, name in src.members.items():
            path = _safe_target(folder, name)
            if path.is_file():
                continue
            written.append(path)
            download(f"{base.rstrip('/')}/{remote}", path, progress=progress)
            if name in src.digests:
                _check_digest(path, src.digests[name])
    except DownloadError:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def fetch_dataset(name: str, folder: str | os.PathLike, *, progress: bool = True) -> Path:
    """Download a named data set's split files into ``folder`` (no-op if all are there).

    Args:
        name: a key of :data:`SOURCES` (``"wikitext-2"``, ``"wikitext-103"``, ``"ptb"``,
            ``"fashion-mnist"``, ``"mnist"``).
        folder: where the split files go (created).
        progress: show a download progress bar.

    Returns:
        ``folder`` as a ``Path``.

    Raises:
        UserError: unknown name.
        DownloadError: every URL failed; the message names the folder and the files to put
            there by hand.
    """
    if name not in SOURCES:
        raise UserError(f"no download source for {name!r} (known: {', '.join(sorted(SOURCES))})")
    src = SOURCES[name]
    folder = Path(folder)
    if all((folder / f).is_file() for f in src.files):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    reasons: list[str] = []
    for url in src.urls:
        try:
            if src.archive is None:
                _fetch_files(src, url, folder, progress)
            else:
                _fetch_archive(src, url, folder, progress)
            return folder
        except DownloadError as e:
            reasons.append(str(e))
    raise DownloadError(
        f"could not download {name} into {folder} ({'; '.join(reasons)}); "
        f"put {', '.join(src.files)} there by hand (see {src.urls[0]})"
    )
