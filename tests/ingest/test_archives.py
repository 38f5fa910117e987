"""Dumps are listed and read without ever trusting a member name, a size or a link."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from ingest.archives import ArchiveError, ArchiveLimits, enumerate_dump, safe_name
from ingest.dump_reader import DumpReader


def _zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
    return path


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return path


def _errors(entries) -> dict[str, str]:  # noqa: ANN001
    return {e.path: e.error for e in entries if e.error}


def _ok(entries) -> list[str]:  # noqa: ANN001
    return [e.path for e in entries if e.error is None]


@pytest.mark.parametrize("name", ["../evil.md", "a/../../evil.md", "/etc/passwd", "C:/win.ini", "..\\x.md"])
def test_safe_name_refuses_escapes(name: str) -> None:
    with pytest.raises(ValueError):
        safe_name(name)


def test_safe_name_normalises() -> None:
    assert safe_name("./a//b/./c.md") == "a/b/c.md"


def test_zip_refuses_malicious_members_file_by_file(tmp_path: Path) -> None:
    bomb = b"\0" * (4 * 1024 * 1024)
    dump = _zip(
        tmp_path / "dump.zip",
        {
            "good/a.md": b"# A\n\nalpha",
            "../escape.md": b"evil",
            "/abs.md": b"evil",
            "bomb.txt": bomb,
            "big.txt": b"x" * 2000,
            ".hidden": b"skipped",
        },
        symlinks={"link.md": "/etc/passwd"},
    )
    limits = ArchiveLimits(max_file_bytes=5 * 1024 * 1024, max_ratio=100, max_total_bytes=10**9)
    entries = enumerate_dump(dump, limits)
    errors = _errors(entries)
    assert _ok(entries) == ["good/a.md", "big.txt"]
    assert "traversal" in errors["../escape.md"]
    assert "absolute" in errors["/abs.md"]
    assert "symlink" in errors["link.md"]
    assert "compression ratio" in errors["bomb.txt"]
    with DumpReader(dump, limits) as reader:
        got = dict(reader.read_many(["good/a.md", "big.txt", "bomb.txt"]))
    assert got["good/a.md"] == b"# A\n\nalpha" and got["big.txt"] == b"x" * 2000
    assert isinstance(got["bomb.txt"], ValueError)


def test_limits_on_file_size_total_and_count(tmp_path: Path) -> None:
    members = {f"f{i}.txt": os.urandom(1000) for i in range(6)} | {"huge.txt": os.urandom(5000)}
    dump = _zip(tmp_path / "d.zip", members)
    entries = enumerate_dump(dump, ArchiveLimits(max_file_bytes=4000, max_total_bytes=3500, max_files=100))
    errors = _errors(entries)
    assert "exceeds the limit of 4000" in errors["huge.txt"]
    assert _ok(entries) == ["f0.txt", "f1.txt", "f2.txt"]
    assert sum("total limit" in e for e in errors.values()) == 3
    entries = enumerate_dump(dump, ArchiveLimits(max_files=4))
    assert len(_ok(entries)) == 4 and "more than 4 files" in list(_errors(entries).values())[0]


def test_tar_gz_refuses_links_traversal_and_reads_members(tmp_path: Path) -> None:
    dump = _tar(
        tmp_path / "d.tar.gz",
        {"docs/a.md": b"alpha", "../../x.md": b"evil", "docs/b.txt": b"bravo"},
        links={"docs/link": "/etc/shadow"},
    )
    entries = enumerate_dump(dump)
    assert _ok(entries) == ["docs/a.md", "docs/b.txt"]
    errors = _errors(entries)
    assert "traversal" in errors["../../x.md"] and "link" in errors["docs/link"]
    with DumpReader(dump) as reader:
        got = dict(reader.read_many(["docs/b.txt", "docs/a.md"]))
    assert got == {"docs/b.txt": b"bravo", "docs/a.md": b"alpha"}


def test_tar_gz_bomb_stops_listing(tmp_path: Path) -> None:
    members = {"ok.txt": b"fine", "zeros.bin": b"\0" * (8 * 1024 * 1024), "after.txt": b"x"}
    dump = _tar(tmp_path / "bomb.tar.gz", members)
    entries = enumerate_dump(dump, ArchiveLimits(max_ratio=50))
    assert _ok(entries) == ["ok.txt"]
    assert "compression ratio" in _errors(entries)["zeros.bin"]


def test_nested_archives_one_level(tmp_path: Path) -> None:
    inner2 = io.BytesIO()
    with zipfile.ZipFile(inner2, "w") as zf:
        zf.writestr("deep.md", "too deep")
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("inner.md", "# Inner\n\nnested text")
        zf.writestr("deeper.zip", inner2.getvalue())
    dump = _zip(tmp_path / "outer.zip", {"top.md": b"top", "att/inner.zip": inner.getvalue()})
    entries = enumerate_dump(dump)
    assert _ok(entries) == ["top.md", "att/inner.zip!/inner.md"]
    assert "nested archive deeper than 1" in _errors(entries)["att/inner.zip!/deeper.zip"]
    with DumpReader(dump) as reader:
        got = dict(reader.read_many(["att/inner.zip!/inner.md", "top.md"]))
    assert got == {"att/inner.zip!/inner.md": b"# Inner\n\nnested text", "top.md": b"top"}
    assert _ok(enumerate_dump(dump, ArchiveLimits(max_depth=0))) == ["top.md"]


def test_folder_refuses_symlinks_and_reads_through_no_link(tmp_path: Path) -> None:
    root = tmp_path / "dump"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.md").write_text("alpha")
    (root / ".git").mkdir()
    (root / ".git" / "x").write_text("hidden")
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (root / "leak.txt").symlink_to(secret)
    (root / "linked_dir").symlink_to(tmp_path)
    entries = enumerate_dump(root)
    assert _ok(entries) == ["sub/a.md"]
    errors = _errors(entries)
    assert errors == {"leak.txt": "symlink refused", "linked_dir": "symlink refused"}
    with DumpReader(root) as reader:
        got = dict(reader.read_many(["sub/a.md", "leak.txt", "linked_dir/secret.txt", "../secret.txt"]))
    assert got["sub/a.md"] == b"alpha"
    assert all(isinstance(got[k], ValueError) for k in ("leak.txt", "linked_dir/secret.txt", "../secret.txt"))


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x.pdf").write_bytes(b"%PDF-1.4 nope")
    with pytest.raises(ArchiveError, match="not a folder, zip"):
        enumerate_dump(tmp_path / "x.pdf")
    with pytest.raises(ArchiveError, match="no such"):
        enumerate_dump(tmp_path / "missing")
