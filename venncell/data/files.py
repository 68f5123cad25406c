"""Files written whole: each goes to a temporary name beside its target and is then renamed over it, so a reader
(or a resumed run) sees the old file or the new one, never half of one, and a failed write leaves nothing behind."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import warnings
from pathlib import Path

import anndata as ad
import mudata as md

from venncell.data.validate import VennCellInputError


def output_folder(path: str | Path, what: str) -> Path:
    """``path`` made as a folder for ``what`` (its parents too), or a clear error naming the file in the way."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # mkdir says "File exists" or "Not a directory"
        blocking = next((q for q in (path, *path.parents) if q.is_file()), None)
        raise VennCellInputError(
            f"Cannot write {what} to {path}: "
            + (f"{blocking} is a file, not a folder." if blocking else f"{e.strerror or e}.")
        ) from None
    return path


def file_part(name: str, limit: int = 80) -> str:
    """``name`` (a modality's) as part of a file name: as it is where it can be one; else with path separators and
    control characters replaced, cut to ``limit`` bytes, and a short hash of the whole name added, so that two
    names stay two files ('ADT/HTO' would name a folder; a long one exceeds the file system's 255 bytes)."""
    safe = re.sub(r"[/\\\x00-\x1f]", "_", name)
    if safe == name and len(name.encode()) <= limit:
        return name
    cut = safe.encode()[:limit].decode(errors="ignore")
    return f"{cut}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole; returns the path."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        tmp.write_text(text, encoding="utf-8")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def atomic_write(data: md.MuData | ad.AnnData, path: str | Path) -> None:
    """Write a MuData (.h5mu) or AnnData (.h5ad) to ``path`` whole; a failed write raises a
    ``VennCellInputError`` that names the entry HDF5 could not hold."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data.write(str(tmp))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise VennCellInputError(f"Cannot write {path}: {e.strerror or e}.") from None
    except Exception as e:
        tmp.unlink(missing_ok=True)
        # anndata refuses what HDF5 cannot hold (e.g. an arbitrary Python object in .uns); its note names the key
        what = " ".join([str(e).rstrip("."), *getattr(e, "__notes__", [])])
        raise VennCellInputError(
            f"Cannot write {path}: {what}. Remove or convert the entry it names (an .uns value or an .obs/.var "
            "column of Python objects) and write again."
        ) from None
    os.replace(tmp, path)


@functools.cache
def package_version() -> str:
    """The installed VennCell's version, recorded in every saved model and checkpoint."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("venncell")
    except PackageNotFoundError:  # a source tree that is not installed
        return "0+unknown"
