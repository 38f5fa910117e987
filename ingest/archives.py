"""Safe enumeration and reading of a dump: a folder, a zip, a tar or a tar.gz.

Nothing is ever extracted to disk: members are listed, checked and later read
into memory one by one, so a hostile name cannot write anywhere. Each refusal
is an `Entry` with an `error` (path traversal, absolute name, symlink or other
non-regular member, encrypted member, oversize file, suspicious compression
ratio, total or file-count budget exhausted, archive nested too deep) while the
rest of the dump proceeds. Readers re-check every limit, because the dump may
have changed between listing and reading.

Entry paths are relative, '/'-separated; a member of a nested archive is
written `outer.zip!/inner/file.md`.
"""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

NEST = "!/"
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
# what zipfile/tarfile raise on a damaged or unsupported archive (NotImplementedError: a zip version or
# compression method zipfile cannot read); any of them fails that archive alone, with its reason
_UNREADABLE = (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, NotImplementedError)
_DRIVE = re.compile(r"^[A-Za-z]:")


class ArchiveError(Exception):
    """The dump as a whole cannot be read (not a folder/zip/tar, unreadable)."""


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_files: int = 100_000
    max_total_bytes: int = 2 * 1024**3
    max_file_bytes: int = 50 * 1024**2
    max_ratio: float = 200.0
    max_depth: int = 1  # nested archives expanded this many levels deep


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    size: int
    error: str | None = None


def dump_kind(path: Path) -> str:
    """'dir', 'zip' or 'tar' (plain or gzip); raises ArchiveError otherwise."""
    if path.is_symlink():
        raise ArchiveError(f"{path.name}: symlinks are not followed")
    if path.is_dir():
        return "dir"
    if not path.is_file():
        raise ArchiveError(f"{path.name}: no such file or folder")
    with path.open("rb") as f:
        kind = sniff_archive(f.read(512))
    if kind is None:
        raise ArchiveError(f"{path.name}: not a folder, zip, tar or tar.gz archive")
    return kind


def sniff_archive(head: bytes) -> str | None:
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tar"  # gzip; tarfile checks that a tar is inside
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def safe_name(name: str) -> str:
    """The normalised relative name, or raise ValueError saying why it is refused."""
    if "\x00" in name:
        raise ValueError("name contains a NUL byte")
    raw = name.replace("\\", "/")
    if raw.startswith("/") or _DRIVE.match(raw):
        raise ValueError("absolute path refused")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("path traversal ('..') refused")
    if not parts:
        raise ValueError("empty name")
    clean = "/".join(parts)
    if NEST in clean or clean.endswith("!"):
        raise ValueError("name contains the reserved '!/' separator")
    return clean


def _hidden(clean: str) -> bool:
    return any(p.startswith(".") for p in clean.split("/")) or clean.startswith("__MACOSX/")


def _is_archive_name(name: str) -> bool:
    return name.lower().endswith(_ARCHIVE_SUFFIXES)


class _Budget:
    """Running totals over the whole dump, nested archives included."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.files = 0
        self.bytes = 0
        self.exhausted = False

    def admit(self, path: str, size: int, compressed: int | None) -> Entry:
        lim = self.limits
        if size > lim.max_file_bytes:
            return Entry(path, size, f"file of {size} bytes exceeds the limit of {lim.max_file_bytes} bytes")
        if compressed is not None and size > 1024 * 1024 and size > lim.max_ratio * max(compressed, 1):
            return Entry(
                path, size, f"compression ratio {size / max(compressed, 1):.0f}:1 exceeds {lim.max_ratio:g}:1"
            )
        if self.bytes + size > lim.max_total_bytes:
            limit = lim.max_total_bytes
            return Entry(path, size, f"dump exceeds the total limit of {limit} uncompressed bytes")
        self.bytes += size
        return Entry(path, size)


def enumerate_dump(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[Entry]:
    """Every file of the dump, refused ones with their reason. Raises ArchiveError if unreadable."""
    kind = dump_kind(path)
    budget = _Budget(limits)
    out: list[Entry] = []
    try:
        if kind == "dir":
            listing: Iterable[_Member] = _dir_members(path)
        else:
            listing = _archive_members(path, kind, limits)
        _collect(listing, "", 0, budget, out)
    except (*_UNREADABLE, zlib.error) as exc:
        raise ArchiveError(f"{path.name}: cannot read the archive ({exc})") from exc
    return out


@dataclass(slots=True)
class _Member:
    name: str  # raw name as stored
    size: int
    compressed: int | None
    problem: str | None  # non-regular, encrypted, ...
    opener: object  # callable returning bytes (bounded), for nested archives


def _collect(members: Iterable[_Member], prefix: str, depth: int, budget: _Budget, out: list[Entry]) -> None:
    limits = budget.limits
    for m in members:
        try:
            clean = safe_name(m.name)
        except ValueError as exc:
            display = prefix + m.name.replace("\x00", "?")
            out.append(Entry(display, m.size, str(exc)))
            continue
        if _hidden(clean):
            continue
        path = prefix + clean
        if budget.files >= limits.max_files:
            why = f"more than {limits.max_files} files in the dump; the rest is skipped"
            out.append(Entry(path, m.size, why))
            budget.exhausted = True
            return
        budget.files += 1
        if m.problem is not None:
            out.append(Entry(path, m.size, m.problem))
            if m.problem in (_RATIO_STOP, _SIZE_STOP):
                return
            continue
        entry = budget.admit(path, m.size, m.compressed)
        if entry.error is None and _is_archive_name(clean):
            if depth >= limits.max_depth:
                why = f"nested archive deeper than {limits.max_depth} level(s) refused"
                out.append(Entry(path, m.size, why))
                continue
            try:
                data = m.opener()  # type: ignore[operator]
                kind = sniff_archive(data[:512])
                if kind is None:
                    out.append(Entry(path, m.size, "not a zip, tar or tar.gz archive"))
                    continue
                budget.files -= 1  # the archive itself is not a document
                budget.bytes -= m.size
                inner = _archive_members_from(io.BytesIO(data), kind, limits)
                _collect(inner, path + NEST, depth + 1, budget, out)
            except _UNREADABLE as exc:
                out.append(Entry(path, m.size, f"cannot read the nested archive ({exc})"))
            if budget.exhausted:
                return
            continue
        out.append(entry)


def _dir_members(root: Path) -> Iterator[_Member]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for d in list(dirnames):
            if (base / d).is_symlink():
                dirnames.remove(d)
                rel = (base / d).relative_to(root).as_posix()
                yield _Member(rel, 0, None, "symlink refused", None)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = base / name
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            problem = None
            if stat.S_ISLNK(st.st_mode):
                problem = "symlink refused"
            elif not stat.S_ISREG(st.st_mode):
                problem = "not a regular file"
            yield _Member(rel, st.st_size, None, problem, lambda rel=rel: read_dir_file(root, rel))


def _archive_members(path: Path, kind: str, limits: ArchiveLimits) -> Iterator[_Member]:
    with path.open("rb") as f:
        yield from _archive_members_from(f, kind, limits)


def _archive_members_from(f: BinaryIO, kind: str, limits: ArchiveLimits) -> Iterator[_Member]:
    if kind == "zip":
        with zipfile.ZipFile(f) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                yield _Member(
                    info.filename,
                    info.file_size,
                    info.compress_size,
                    zip_problem(info),
                    lambda info=info, zf=zf: read_zip_member(zf, info, 2**62),
                )
        return
    f.seek(0, os.SEEK_END)
    compressed_total = f.tell()
    f.seek(0)
    with tarfile.open(fileobj=f, mode="r:*") as tf:
        while True:
            m = tf.next()
            if m is None:
                return
            # tar.gz has no per-member compressed size: judge the stream read so far.
            expanded = tf.offset + m.size
            if expanded > 1024 * 1024 and expanded > limits.max_ratio * compressed_total:
                yield _Member(m.name, m.size, None, _RATIO_STOP, None)
                return
            if m.size > limits.max_total_bytes:
                yield _Member(m.name, m.size, None, _SIZE_STOP, None)
                return
            if m.isdir():
                continue
            reader = lambda m=m, tf=tf: read_tar_member(tf, m, 2**62)  # noqa: E731
            yield _Member(m.name, m.size, None, tar_problem(m), reader)


_RATIO_STOP = "compression ratio of the archive exceeds the limit; the rest of the archive is not read"
_SIZE_STOP = "member exceeds the total size limit; the rest of the archive is not read"


def _share(size: int, total: int, compressed_total: int | None) -> int | None:
    if compressed_total is None or total == 0:
        return None
    return max(1, int(compressed_total * size / total))


def zip_problem(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symlink refused"
    if mode and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        return "not a regular file"
    if info.flag_bits & 0x1:
        return "encrypted member refused"
    return None


def tar_problem(m: tarfile.TarInfo) -> str | None:
    if m.issym() or m.islnk():
        return "symlink or hard link refused"
    if not m.isfile():
        return "not a regular file (device, fifo, ...)"
    try:
        tarfile.data_filter(m, "/kb-nonexistent-destination")
    except tarfile.FilterError as exc:
        return f"refused by the tar data filter ({exc})"
    return None


def read_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes:
    if info.file_size > max_bytes:
        raise ValueError(f"file of {info.file_size} bytes exceeds the limit of {max_bytes} bytes")
    with zf.open(info) as member:
        data = member.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"file exceeds the limit of {max_bytes} bytes")
    return data


def read_tar_member(tf: tarfile.TarFile, m: tarfile.TarInfo, max_bytes: int) -> bytes:
    if m.size > max_bytes:
        raise ValueError(f"file of {m.size} bytes exceeds the limit of {max_bytes} bytes")
    member = tf.extractfile(m)
    if member is None:
        raise ValueError("not a regular file")
    data = member.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"file exceeds the limit of {max_bytes} bytes")
    return data


def read_dir_file(root: Path, rel: str, max_bytes: int = 2**62) -> bytes:
    """A regular file under root, never through a symlink (O_NOFOLLOW on every component check)."""
    clean = safe_name(rel)
    full = root / clean
    real_root = root.resolve()
    if not full.resolve().is_relative_to(real_root):
        raise ValueError("path leaves the dump folder")
    for parent in PurePosixPath(clean).parents:
        if str(parent) != "." and (root / parent).is_symlink():
            raise ValueError("symlink refused")
    fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > max_bytes:
            raise ValueError(f"file of {st.st_size} bytes exceeds the limit of {max_bytes} bytes")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"file exceeds the limit of {max_bytes} bytes")
    return data
