"""Reading a MuData from disk, with one-line errors for what users get wrong."""

from __future__ import annotations

import warnings
from pathlib import Path

import mudata as md

from venncell.data.validate import VennCellInputError


def read_h5mu(path: str | Path, backed: bool = False, build: str | None = None) -> md.MuData:
    """The MuData in ``path`` (``backed``: matrices stay on disk, read on demand); ``build``, the command that makes
    a missing file, goes into its error."""
    p = Path(path)
    if not p.exists():
        where = (
            ""
            if p.is_absolute()
            else f" (a relative path is read from the current folder, {Path.cwd()})"
        )
        how = f" Make it with `{build}`, run from the repository root." if build else ""
        raise VennCellInputError(f"data.path={path}: no such file{where}.{how}")
    if p.is_dir():
        raise VennCellInputError(f"data.path={path} is a folder; name the .h5mu file inside it.")
    if p.suffix == ".h5ad":
        raise VennCellInputError(
            f"data.path={path} is a single AnnData; VennCell needs a MuData (.h5mu) with two or "
            "more modalities (build one with `mudata.MuData({'rna': a, 'prot': b})`)."
        )
    try:
        with warnings.catch_warnings():
            # mudata's notes on its own update() while reading: nothing in the file or the call can change them
            warnings.filterwarnings(
                "ignore", message=r"From 0\.4 \.update\(\)", category=FutureWarning
            )
            warnings.filterwarnings("ignore", message="Cannot join columns with the same name")
            return md.read_h5mu(str(p), backed=backed)
    except Exception as e:  # h5py raises several types for damaged files
        raise VennCellInputError(
            f"data.path={path} could not be read as .h5mu (unreadable or truncated: {type(e).__name__}: {e})."
        ) from None
