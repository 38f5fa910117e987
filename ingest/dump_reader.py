"""Reading members of a dump (folder, zip, tar, tar.gz, nested archives) into memory, one by one.

The listing side lives in `ingest.archives` (`enumerate_dump`); this side re-checks every limit while it
reads, because the dump may have changed since it was listed, and turns each member's failure (damaged
stream, oversize, vanished file) into that member's error while the rest of the dump is read.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ingest.archives import (
    NEST,
    ArchiveLimits,
    dump_kind,
    read_dir_file,
    read_tar_member,
    read_zip_member,
    safe_name,
    sniff_archive,
    tar_problem,
    zip_problem,
)


class DumpReader:
    """Reads entries of one dump by path, re-checking every limit. Use as a context manager."""

    def __init__(self, path: Path, limits: ArchiveLimits = ArchiveLimits()) -> None:
        self.path = path
        self.limits = limits
        self.kind = dump_kind(path)
        self._file: BinaryIO | None = None
        self._nested: dict[str, tuple[str, object]] = {}

    def __enter__(self) -> DumpReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    def read_many(self, paths: list[str]) -> Iterator[tuple[str, bytes | Exception]]:
        """(path, bytes or the per-file error) for each path, in a cheap order for the container."""
        wanted = list(dict.fromkeys(paths))
        if self.kind == "dir":
            for p in wanted:
                yield p, self._guard(lambda p=p: self._read_dir_path(p))
            return
        yield from self._read_from(self._open(), self.kind, wanted, depth=0)

    def _open(self) -> BinaryIO:
        if self._file is None:
            self._file = self.path.open("rb")
        self._file.seek(0)
        return self._file

    def _read_dir_path(self, p: str) -> bytes:
        if NEST in p:
            outer, inner = p.split(NEST, 1)
            data = read_dir_file(self.path, outer, self.limits.max_file_bytes)
            kind = sniff_archive(data[:512])
            if kind is None:
                raise ValueError("not a zip, tar or tar.gz archive")
            [(_, result)] = list(self._read_from(io.BytesIO(data), kind, [inner], depth=1))
            if isinstance(result, Exception):
                raise result
            return result
        return read_dir_file(self.path, p, self.limits.max_file_bytes)

    def _guard(self, fn: object) -> bytes | Exception:
        try:
            return fn()  # type: ignore[operator]
        # zlib.error: a damaged deflate stream inside a member (found by tests/ingest/test_fuzz.py).
        except (
            ValueError,
            OSError,
            zipfile.BadZipFile,
            tarfile.TarError,
            EOFError,
            RuntimeError,
            zlib.error,
        ) as exc:
            return exc if isinstance(exc, ValueError) else ValueError(f"cannot read: {exc}")

    def _read_from(
        self, f: BinaryIO, kind: str, wanted: list[str], depth: int
    ) -> Iterator[tuple[str, bytes | Exception]]:
        # Split into direct members and members of nested archives.
        direct = [p for p in wanted if NEST not in p]
        nested: dict[str, list[str]] = {}
        for p in wanted:
            if NEST in p:
                outer, inner = p.split(NEST, 1)
                nested.setdefault(outer, []).append(inner)
        targets = set(direct) | set(nested)
        found: dict[str, bytes | Exception] = {}
        limit = self.limits.max_file_bytes
        try:
            if kind == "zip":
                with zipfile.ZipFile(f) as zf:
                    by_name = {}
                    for info in zf.infolist():
                        try:
                            by_name.setdefault(safe_name(info.filename), info)
                        except ValueError:
                            continue
                    for t in targets:
                        info = by_name.get(t)
                        if info is None:
                            found[t] = ValueError("no longer in the archive")
                            continue
                        problem = zip_problem(info)
                        if problem is None and info.file_size > limit and t not in nested:
                            problem = f"file of {info.file_size} bytes exceeds the limit of {limit} bytes"
                        if (
                            problem is None
                            and info.file_size > 1024 * 1024
                            and (info.file_size > self.limits.max_ratio * max(info.compress_size, 1))
                        ):
                            problem = "compression ratio exceeds the limit"
                        found[t] = (
                            ValueError(problem)
                            if problem
                            else self._guard(lambda info=info: read_zip_member(zf, info, limit))
                        )
            else:
                with tarfile.open(fileobj=f, mode="r:*") as tf:
                    remaining = set(targets)
                    for m in tf:
                        if not remaining:
                            break
                        try:
                            name = safe_name(m.name)
                        except ValueError:
                            continue
                        if name not in remaining:
                            continue
                        remaining.discard(name)
                        problem = tar_problem(m)
                        found[name] = (
                            ValueError(problem)
                            if problem
                            else self._guard(lambda m=m: read_tar_member(tf, m, limit))
                        )
                    for name in remaining:
                        found[name] = ValueError("no longer in the archive")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            for t in targets:
                found.setdefault(t, ValueError(f"cannot read the archive ({exc})"))
        for p in direct:
            yield p, found[p]
        for outer, inners in nested.items():
            data = found[outer]
            if isinstance(data, Exception) or depth >= self.limits.max_depth:
                err = data if isinstance(data, Exception) else ValueError("nested archive too deep")
                for inner in inners:
                    yield outer + NEST + inner, err
                continue
            inner_kind = sniff_archive(data[:512])
            if inner_kind is None:
                for inner in inners:
                    yield outer + NEST + inner, ValueError("not a zip, tar or tar.gz archive")
                continue
            for inner, result in self._read_from(io.BytesIO(data), inner_kind, inners, depth + 1):
                yield outer + NEST + inner, result
