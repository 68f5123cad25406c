"""Keys VennCell writes into a user's MuData (``obsm["X_venn_*"]``, ``obs["venn_weight_*"]``, ``var["venn_*"]``,
``varm["venn_loadings"]``): each write records the keys it made, and the next write of the same kind removes
those it does not make again, so no key is left from another model beside this one's."""

from __future__ import annotations

import warnings

from venncell.data.validate import VennCellInputWarning, user_stacklevel


def recorded(uns, key: str) -> list[str]:
    """The keys an earlier write recorded under ``uns[key]`` (none before the first; h5 files give arrays back)."""
    value = uns.get(key)
    if isinstance(value, dict):
        value = value.get("keys")
    return [] if value is None else [str(k) for k in value]


def drop_stale_keys(store, previous, written, where: str) -> None:
    """Remove from ``store`` (an ``obsm``, ``varm``, ``obs`` or ``var``) the keys ``previous`` (an earlier write's)
    that this write, ``written``, does not make again, with a warning naming them: beside this write's keys they
    would read as its results."""
    keep = set(written)
    stale = [k for k in dict.fromkeys(previous) if k not in keep and k in store]
    for k in stale:
        del store[k]
    if stale:
        shown = ", ".join(map(repr, stale[:6])) + (", ..." if len(stale) > 6 else "")
        warnings.warn(
            f"Removed {where} {shown}: an earlier write (of another model, or of this one for other modalities) "
            "put them there, and this write does not replace them, so they would read as its results. To keep "
            "another model's, copy them under other names first (e.g. `mdata.obsm['B_shared'] = "
            "mdata.obsm['X_venn_shared'].copy()`).",
            VennCellInputWarning,
            stacklevel=user_stacklevel(),
        )
