"""Download and extraction, against files served from tmp_path (file:// or a loopback server).

The ``http_root`` and ``closed_port_url`` fixtures live in ``tests/data/conftest.py``.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from fastbind.data import download as dl
from fastbind.data.download import DatasetSource, DownloadError, download, extract_members, fetch_dataset
from fastbind.errors import UserError


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith((".part", ".tmp"))]


def test_download_file_url_with_checksum(tmp_path):
    src = tmp_path / "src.bin"
    payload = b"fastbind" * 100_000
    src.write_bytes(payload)
    dest = tmp_path / "out" / "copy.bin"
    got = download(src.as_uri(), dest, sha256=hashlib.sha256(payload).hexdigest(), progress=False)
    assert got == dest and dest.read_bytes() == payload
    assert _leftovers(dest.parent) == []


def test_download_bad_checksum_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    dest = tmp_path / "out" / "copy.bin"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(src.as_uri(), dest, sha256="0" * 64, progress=False)
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_download_over_http(http_root, tmp_path):
    root, base = http_root
    (root / "data.txt").write_bytes(b"hello over http\n" * 1000)
    dest = download(f"{base}/data.txt", tmp_path / "data.txt", progress=False)
    assert dest.read_bytes() == (root / "data.txt").read_bytes()
    with pytest.raises(DownloadError, match="404"):
        download(f"{base}/missing.txt", tmp_path / "missing.txt", progress=False)
    assert not (tmp_path / "missing.txt").exists()


def test_download_unreachable_is_a_user_error(tmp_path, closed_port_url):
    with pytest.raises(UserError, match="could not download"):
        download(closed_port_url, tmp_path / "x.zip", progress=False, timeout=5)
    assert _leftovers(tmp_path) == []


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_extract_zip_selected_members_only(tmp_path):
    arc = _zip(tmp_path / "a.zip", {"ds/wiki.train.tokens": b"t", "ds/other.txt": b"o", "../evil.txt": b"e"})
    out = tmp_path / "out"
    written = extract_members(arc, {"ds/wiki.train.tokens": "wiki.train.tokens"}, out)
    assert written == [out / "wiki.train.tokens"] and written[0].read_bytes() == b"t"
    assert sorted(p.name for p in out.iterdir()) == ["wiki.train.tokens"]
    assert not (tmp_path / "evil.txt").exists()
    with pytest.raises(DownloadError, match="lacks ds/nope"):
        extract_members(arc, {"ds/nope": "nope"}, out)
    with pytest.raises(DownloadError, match="plain file name"):
        extract_members(arc, {"../evil.txt": "../evil.txt"}, out)


def test_extract_tar_refuses_links_and_strips_dot_slash(tmp_path):
    arc = tmp_path / "a.tgz"
    with tarfile.open(arc, "w:gz") as tf:
        data = b"ptb words\n"
        info = tarfile.TarInfo("./simple-examples/data/ptb.train.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./simple-examples/data/ptb.valid.txt")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    out = tmp_path / "out"
    extract_members(arc, {"simple-examples/data/ptb.train.txt": "ptb.train.txt"}, out)
    assert (out / "ptb.train.txt").read_bytes() == b"ptb words\n"
    with pytest.raises(DownloadError, match="not a regular file"):
        extract_members(arc, {"simple-examples/data/ptb.valid.txt": "ptb.valid.txt"}, out)
    assert not (out / "ptb.valid.txt").exists()
    (tmp_path / "junk.tgz").write_bytes(b"not an archive")
    with pytest.raises(DownloadError, match="neither a zip nor a tar"):
        extract_members(tmp_path / "junk.tgz", {"a": "a"}, out)


def _fake_source(urls, digests=None) -> DatasetSource:
    return DatasetSource(
        urls=tuple(urls),
        archive="fake.zip",
        members={f"fake/wiki.{s}.tokens": f"wiki.{s}.tokens" for s in ("train", "valid", "test")},
        digests=digests or {},
    )


def test_fetch_dataset_falls_back_to_mirror_and_checks_digests(http_root, tmp_path, monkeypatch, closed_port_url):
    root, base = http_root
    files = {f"fake/wiki.{s}.tokens": f" = {s} = \n words here \n".encode() for s in ("train", "valid", "test")}
    _zip(root / "fake.zip", files)
    digest = "sha256:" + hashlib.sha256(files["fake/wiki.train.tokens"]).hexdigest()
    monkeypatch.setitem(dl.SOURCES, "fake", _fake_source([closed_port_url, f"{base}/fake.zip"],
                                                         {"wiki.train.tokens": digest}))
    folder = tmp_path / "data" / "fake"
    assert fetch_dataset("fake", folder, progress=False) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["wiki.test.tokens", "wiki.train.tokens", "wiki.valid.tokens"]
    assert (folder / "wiki.valid.tokens").read_bytes() == files["fake/wiki.valid.tokens"]
    # Second call: files present, nothing fetched (the server could be gone).
    monkeypatch.setitem(dl.SOURCES, "fake", _fake_source([closed_port_url]))
    assert fetch_dataset("fake", folder, progress=False) == folder


def test_fetch_dataset_bad_digest_removes_files(http_root, tmp_path, monkeypatch):
    root, base = http_root
    _zip(root / "fake.zip", {f"fake/wiki.{s}.tokens": b"x\n" for s in ("train", "valid", "test")})
    bad = {"wiki.test.tokens": "sha1:" + "0" * 40}
    monkeypatch.setitem(dl.SOURCES, "fake", _fake_source([f"{base}/fake.zip"], bad))
    folder = tmp_path / "fake"
    with pytest.raises(DownloadError, match="wiki.test.tokens has sha1"):
        fetch_dataset("fake", folder, progress=False)
    assert list(folder.iterdir()) == []


def test_fetch_dataset_offline_names_folder_and_files(tmp_path, monkeypatch, closed_port_url):
    monkeypatch.setitem(dl.SOURCES, "fake", _fake_source([closed_port_url]))
    folder = tmp_path / "fake"
    with pytest.raises(UserError) as e:
        fetch_dataset("fake", folder, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and str(folder) in msg
    assert "wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens" in msg
    with pytest.raises(UserError, match="no download source"):
        fetch_dataset("nope", folder)


def test_known_sources_are_official():
    assert dl.SOURCES["wikitext-2"].urls[0] == "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip"
    assert dl.SOURCES["wikitext-103"].urls[0].endswith("/wikitext-103-v1.zip")
    assert dl.SOURCES["ptb"].urls[0] == "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
    assert dl.SOURCES["ptb"].files == ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")


def test_wikitext2_digests_match_shared_copy():
    """The pinned WikiText-2 digests are those of ../shared/data (same bytes as the zip)."""
    folder = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "wikitext-2"
    if not folder.is_dir():
        pytest.skip("../shared/data/wikitext-2 is not present")
    digests = dl.SOURCES["wikitext-2"].digests
    for split in ("valid", "test"):  # the small ones keep this fast
        algo, _, hexdigest = digests[f"wiki.{split}.tokens"].partition(":")
        assert dl.file_digest(folder / f"{split}.txt", algo) == hexdigest
