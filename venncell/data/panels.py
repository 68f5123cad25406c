"""Features that some batches did not measure (antibody panels that differ between batches), found in the counts.

Joining batches with different panels (``anndata.concat(join="outer")``) fills each batch's unmeasured features
with zeros, which a count likelihood reads as measured zeros: the decoders learn that those batches lack the
protein, and its predictions, attribution and planning go wrong for every batch. A feature is taken as unmeasured
in a batch when that batch has no count of it at all although, at the rate the other batches show it, at least
``EXPECTED_NONZERO`` of its cells would have one (the chance of none is then below e^-10), or when all its cells
hold it as NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

from venncell.data.validate import (
    VennCellInputError,
    VennCellInputWarning,
    batch_label_strings,
    user_stacklevel,
)

EXPECTED_NONZERO = 10.0


def _per_batch(x, codes: np.ndarray, n_batches: int) -> tuple[np.ndarray, np.ndarray]:
    """(batches x features) numbers of cells with a non-zero finite value and with NaN, without a second copy of
    the matrix."""
    if sp.issparse(x):
        x = x.tocsr() if x.format != "csr" else x
        indicator = sp.csr_matrix(
            (np.ones(len(codes), dtype=np.float32), (codes, np.arange(len(codes)))),
            shape=(n_batches, len(codes)),
        )
        # the matrix's own index arrays, and one flag per stored value
        counts = [
            np.asarray(
                (
                    indicator
                    @ sp.csr_matrix((flag.astype(np.float32), x.indices, x.indptr), shape=x.shape)
                ).todense()
            )
            for flag in ((x.data != 0) & np.isfinite(x.data), np.isnan(x.data))
        ]
        return counts[0], counts[1]
    x = np.asarray(x)
    rows = [x[codes == b] for b in range(n_batches)]
    measured = np.stack([((r != 0) & np.isfinite(r)).sum(0) for r in rows]).astype(np.float64)
    return measured, np.stack([np.isnan(r).sum(0) for r in rows]).astype(np.float64)


def unmeasured_mask(x, codes: np.ndarray, n_batches: int) -> np.ndarray:
    """Which batches did not measure which features.

    A batch did not measure a feature that all its cells hold as NaN, or that none of its cells holds although
    the other batches' cells hold it often enough for its absence to be no chance (module docstring).

    Parameters
    ----------
    x
        Cells x features, dense or sparse, non-negative or NaN.
    codes
        Each cell's batch, 0 .. ``n_batches`` - 1.
    n_batches
        The number of batches.

    Returns
    -------
    numpy.ndarray
        Boolean, batches x features.
    """
    measured, nan = _per_batch(x, codes, n_batches)
    cells = np.bincount(codes, minlength=n_batches).astype(np.float64)[:, None]
    others = np.maximum(cells.sum() - cells, 1.0)
    others_rate = (measured.sum(0, keepdims=True) - measured) / others
    absent = (measured == 0) & (others_rate * cells >= EXPECTED_NONZERO)
    return absent | ((nan == cells) & (cells > 0))


def warn_unmeasured(
    name: str, x, batch_labels: pd.Series, features, layer: str | None = None
) -> None:
    """The warning for features of modality ``name`` that look unmeasured in some batches (none: no warning).
    ``batch_labels``: each of the modality's cells' batch, named by the batch column; ``layer``: where the
    counts are, named in the fix."""
    categories, codes = np.unique(batch_label_strings(batch_labels), return_inverse=True)
    if len(categories) < 2:
        return
    mask = unmeasured_mask(x, codes, len(categories))
    if not mask.any():
        return
    cols = np.flatnonzero(mask.any(0))
    batches = ", ".join(
        f"'{categories[b]}' ({int(mask[b].sum())})" for b in np.flatnonzero(mask.any(1))
    )
    shown = ", ".join(str(features[i]) for i in cols[:5]) + (", ..." if len(cols) > 5 else "")
    where = "" if layer is None else f", layer={layer!r}"
    warnings.warn(
        f"Modality '{name}': {len(cols)} feature(s) ({shown}) have no counts at all in batch(es) {batches}, "
        "though the other batches' cells hold them often. Unless those batches lack the cells that express "
        "them, they were not measured there (a panel without them, zeros filled in by joining the batches), "
        "and the model reads the zeros as measurements, which biases their predictions, attribution and plan in "
        "every batch. Give them a modality of their own that holds only the batches that measured them: "
        f"`mdata = venncell.data.split_panels(mdata, '{name}', '{batch_labels.name}'{where})` (cells without "
        f"it are then partially paired; venncell-train: data.split_panels=[{name}]), or drop them.",
        VennCellInputWarning,
        stacklevel=user_stacklevel(),
    )


def batch_labels(mdata, modality: str, batch_key: str) -> pd.Series:
    """The batch of each of ``modality``'s cells, from ``mdata.obs`` or else the modality's own ``.obs``."""
    adata = mdata.mod[modality]
    if batch_key in mdata.obs:
        labels = mdata.obs[batch_key].reindex(adata.obs_names)
    elif batch_key in adata.obs:
        labels = adata.obs[batch_key]
    else:
        raise VennCellInputError(
            f"split_panels: batch_key '{batch_key}' is neither a column of mdata.obs nor of "
            f"mdata['{modality}'].obs; name one of {sorted(map(str, mdata.obs.columns))[:10]}."
        )
    if labels.isna().any():
        raise VennCellInputError(
            f"split_panels: {int(labels.isna().sum())} cell(s) of modality '{modality}' have no '{batch_key}' "
            "label; give every cell its batch first."
        )
    return labels


def split_panels(
    mdata, modality: str, batch_key: str, layer: str | None = None, min_features: int = 1
):
    """Move the features of ``modality`` that some batches did not measure into modalities of their own.

    A feature counts as unmeasured in a batch when that batch holds none of it although the other batches'
    rate would give it at least ten non-zero cells (``venncell.data.panels``). Features are grouped by the set
    of batches that measured them; each group becomes ``<modality>_panel1``, ``<modality>_panel2``, ...
    (largest first) holding only those batches' cells, and the features every batch measured stay in
    ``modality`` (which is left out if none do). Register the new modalities with the same kind in
    ``setup_mudata``: cells without one are partially paired, so its decoder learns only from cells that
    measured it, and its predictions for the other cells come from their other modalities.

    Parameters
    ----------
    mdata
        The MuData; it is not changed.
    modality
        The modality to split, e.g. ``"adt"``.
    batch_key
        The batch column, in ``mdata.obs`` or the modality's ``.obs``.
    layer
        The layer holding the modality's counts, as registered (None: ``.X``).
    min_features
        A group of fewer features is dropped rather than made a modality.

    Returns
    -------
    mudata.MuData
        A new MuData with the other modalities, ``.obs`` columns, ``.uns`` and (when the cells are the same)
        ``.obsm`` / ``.obsp`` of ``mdata``. ``uns["venncell_panels"]`` maps each new modality to the batches
        that measured it; ``uns["venncell_panels_dropped"]`` lists the features left out.

    Notes
    -----
    Attribution probes markers, and the planner scores predictions, on the cells measured in every modality, so
    after a split they read only the batches that measured every panel: split only the modalities that need it.
    """
    import mudata as md

    if modality not in mdata.mod:
        raise VennCellInputError(
            f"split_panels: modality '{modality}' is not in the MuData (it has {list(mdata.mod)})."
        )
    adata = mdata.mod[modality]
    if layer is not None and layer not in adata.layers:
        raise VennCellInputError(
            f"split_panels: modality '{modality}' has no layer '{layer}' "
            f"(layers: {list(adata.layers) or 'none'})."
        )
    labels = batch_label_strings(batch_labels(mdata, modality, batch_key))
    categories, codes = np.unique(labels, return_inverse=True)
    mask = unmeasured_mask(
        adata.X if layer is None else adata.layers[layer], codes, len(categories)
    )
    everyone = frozenset(range(len(categories)))
    groups: dict[frozenset, list[int]] = {}
    for j in range(adata.n_vars):
        groups.setdefault(frozenset(np.flatnonzero(~mask[:, j])), []).append(j)
    if len(groups) == 1 and everyone in groups:
        warnings.warn(
            f"split_panels: every batch measured every feature of '{modality}'; nothing to split.",
            VennCellInputWarning,
            stacklevel=user_stacklevel(),
        )
    split = {}
    if everyone in groups:
        split[modality] = adata[:, groups.pop(everyone)].copy()
    panels, dropped = {}, []
    for batches, cols in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        if len(cols) < min_features or not batches:  # too few to model, or measured nowhere
            dropped += [str(adata.var_names[j]) for j in cols]
            continue
        name = f"{modality}_panel{len(panels) + 1}"
        split[name] = adata[np.isin(codes, sorted(batches)), cols].copy()
        panels[name] = sorted(str(categories[b]) for b in batches)
    # the split modality's place among the others keeps the MuData's order of cells where it can
    mods = {}
    for name, mod in mdata.mod.items():
        mods.update(split if name == modality else {name: mod})
    out = md.MuData(mods)
    out.obs = out.obs.join(mdata.obs.drop(columns=out.obs.columns, errors="ignore"))
    out.uns.update(mdata.uns)
    if set(out.obs_names) == set(mdata.obs_names):
        rows = mdata.obs_names.get_indexer(out.obs_names)
        for key, value in mdata.obsm.items():
            if (
                key not in mdata.mod and key not in out.mod
            ):  # MuData keeps each modality's cells there
                out.obsm[key] = value.iloc[rows] if hasattr(value, "iloc") else value[rows]
        for key, value in mdata.obsp.items():
            out.obsp[key] = value[rows][:, rows]
    out.uns["venncell_panels"] = panels
    out.uns["venncell_panels_dropped"] = dropped
    _register_panels(out, list(mdata.mod), modality, list(split))
    return out


def _register_panels(out, order: list[str], modality: str, parts: list[str]) -> None:
    """A MuData set up before the split keeps its setup: the split modality's entry goes to each of its parts, so
    ``VennCell(out)`` models the panels (a copied setup would name only the modality and leave them out)."""
    import json

    from venncell.data.registry import REGISTRY_KEY

    if REGISTRY_KEY not in out.uns:
        return
    stored = json.loads(out.uns[REGISTRY_KEY])
    known = stored.get("modalities", {})
    if modality not in known:
        return
    stored["modalities"] = {
        name: opts
        for m in order
        for name, opts in (
            [(p, dict(known[modality])) for p in parts] if m == modality else [(m, known.get(m))]
        )
        if opts is not None
    }
    out.uns[REGISTRY_KEY] = json.dumps(stored)
