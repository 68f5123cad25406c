"""How the modalities' cells pair up by name, and the two ways that pairing goes wrong unnoticed: barcodes that
differ between modalities by a suffix (one side of an R merge renamed), and a batch none of whose cells is
measured in more than one modality."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd

from venncell.data.validate import VennCellInputError, VennCellInputWarning, user_stacklevel

# a trailing "-1", "_2", ".3" or "-s1d2": what Cell Ranger, Seurat's add.cell.ids and anndata's concat append
_SUFFIX = re.compile(r"[-_.][0-9A-Za-z]{1,12}$")
_PREFIX = re.compile(r"^[0-9A-Za-z]{1,12}[-_.:]")
# unpaired cells whose names match another modality's once a suffix or prefix goes: enough to be no accident
MIN_MATCHES = 10


# unpaired names cut per side at most: the share that match is estimated from them, so a million cells cost what
# five thousand do
SAMPLE = 5000


def _cut(name: str, patterns: tuple[re.Pattern, ...]) -> str:
    for pattern in patterns:
        name = pattern.sub("", name, count=1)
    return name


def _matching(
    src: pd.Index, other: pd.Index, patterns: tuple[re.Pattern, ...]
) -> tuple[int, str, str]:
    """How many of ``src``'s names are names of ``other`` once ``patterns`` are cut (estimated from a sample of
    ``SAMPLE``), with one such pair as an example."""
    take = src
    if len(src) > SAMPLE:
        take = src[np.sort(np.random.default_rng(0).choice(len(src), SAMPLE, replace=False))]
    names = [str(n) for n in take]
    cut = pd.Index([_cut(n, patterns) for n in names])
    hit = np.flatnonzero(cut.isin(other.astype(str)))
    if not len(hit):
        return 0, "", ""
    return int(round(len(hit) * len(src) / len(take))), names[hit[0]], str(cut[hit[0]])


def renamed_pairs(cells: dict[str, pd.Index]) -> tuple[str, str, str, str, int] | None:
    """The first pair of modalities (``cells``: each one's obs_names) whose cells missing from the other match the
    other's once a suffix, a prefix or both are removed from one side: ``(modality a, example a, modality b,
    example b, matches)``. Distinct cells share a barcode by chance between 10x lanes, so a match needs a fifth
    of the smaller side."""
    mods = list(cells)
    for i, a in enumerate(mods):
        for b in mods[i + 1 :]:
            only_a, only_b = cells[a].difference(cells[b]), cells[b].difference(cells[a])
            smaller = min(len(only_a), len(only_b))
            if not smaller:
                continue
            needed = max(min(MIN_MATCHES, smaller), -(-smaller // 5))
            # one side renamed; cutting both sides would match legitimately unpaired cells named in sequence
            # ("0-1" in one batch, "0-2" in another)
            for patterns in ((_SUFFIX,), (_PREFIX,), (_PREFIX, _SUFFIX)):
                n, ex_a, ex_b = _matching(only_a, only_b, patterns)
                if n >= needed:
                    return a, ex_a, b, ex_b, n
                n, ex_b, ex_a = _matching(only_b, only_a, patterns)
                if n >= needed:
                    return a, ex_a, b, ex_b, n
    return None


def renamed_message(found) -> str:
    a, ex_a, b, ex_b, n = found
    return (
        f"{n} cells of '{a}' that are not in '{b}' match cells of '{b}' that are not in '{a}' once a suffix or "
        "prefix is removed "
        f"(e.g. {ex_a!r} in {a}, {ex_b!r} in {b}): the same cells seem to be named differently in the two "
        "modalities, and cells are paired by name. Give each cell the same obs_name in every modality, then "
        "`mdata.update()`."
    )


def check_pairing(cells: dict[str, pd.Index], warn: bool = True) -> None:
    """Refuse modalities (``cells``: each one's obs_names) that share no cell, and (``warn``) warn where many
    unpaired cells would pair but for a renamed barcode."""
    mods = list(cells)
    paired = any(
        len(cells[a].intersection(cells[b])) for i, a in enumerate(mods) for b in mods[i + 1 :]
    )
    found = renamed_pairs(cells) if warn or not paired else None
    if not paired:
        examples = "; ".join(
            f"{m}: {len(n)} cells, e.g. {str(n[0])!r}" for m, n in cells.items() if len(n)
        )
        raise VennCellInputError(
            f"No cell is measured in more than one modality: the modalities' obs_names do not overlap ({examples}). "
            + (
                renamed_message(found)
                if found
                else "Check that the cell barcodes use the same naming in every modality."
            )
        )
    if found and warn:
        warnings.warn(renamed_message(found), VennCellInputWarning, stacklevel=user_stacklevel())
    if warn and len(mods) > 1 and all(_default_names(cells[m]) for m in mods):
        warnings.warn(
            "Every modality's cells are named '0', '1', ..., anndata's default for a matrix without cell names. "
            "Cells are paired across modalities by name, so row i of each modality is taken for the same cell. If "
            "the modalities' rows are not in one cell order (read from separate files, say), give each cell its "
            "barcode in every modality (`mdata.mod[m].obs_names = barcodes`), then `mdata.update()`.",
            VennCellInputWarning,
            stacklevel=user_stacklevel(),
        )


def _default_names(names: pd.Index) -> bool:
    """``names`` are '0'..'n-1' in order (checked at the ends first: a full comparison only for likely ones)."""
    n = len(names)
    return (
        n > 1
        and str(names[0]) == "0"
        and str(names[-1]) == str(n - 1)
        and bool((np.asarray(names).astype(str) == np.arange(n).astype(str)).all())
    )


def warn_unpaired_batches(measured: dict[str, np.ndarray], batch: np.ndarray, categories) -> None:
    """Warn about batches whose cells lie in two or more modalities but none in two at once (``measured``: per
    modality, which cells it has; ``batch``: codes into ``categories``): nothing links those batches' modalities,
    so their cells are placed by each modality alone, usually because their barcodes differ between modalities."""
    n_batches = len(categories)
    coded = batch >= 0
    paired = np.bincount(
        batch[coded & (np.sum(list(measured.values()), axis=0) >= 2)], minlength=n_batches
    )
    per_mod = {
        m: np.bincount(batch[coded & has], minlength=n_batches) for m, has in measured.items()
    }
    lonely = []
    for code, name in enumerate(categories):
        held = {m: int(c[code]) for m, c in per_mod.items() if c[code]}
        if len(held) >= 2 and not paired[code]:
            lonely.append(f"'{name}' ({', '.join(f'{m}: {c}' for m, c in held.items())})")
    if lonely:
        warnings.warn(
            f"Batch(es) {', '.join(lonely[:5])}{' ...' if len(lonely) > 5 else ''} have cells in several modalities "
            "but none measured in more than one: nothing links their modalities, so partial pairing places them "
            "by each modality alone. If they are the same cells, their barcodes differ between modalities: give "
            "each cell the same obs_name in every modality, then `mdata.update()`.",
            VennCellInputWarning,
            stacklevel=user_stacklevel(),
        )
