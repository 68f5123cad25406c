"""A cheap summary of the MuData a model was built on, so that changes made to it afterwards are noticed.

The model reads its training data once (``MultiModalData``); cells filtered out of the MuData, or values normalised
in place, after that would otherwise leave it training, embedding and reporting on data that no longer exist.
"""

from __future__ import annotations

import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp

from venncell.data.registry import select_matrix
from venncell.data.spec import ModalitySpec
from venncell.data.validate import VennCellInputError

# rows whose values are summed: enough that a normalisation or a replaced matrix changes the sum, few enough that
# a check costs nothing next to the call it guards
SAMPLED_ROWS = 64


def _same_names(a: pd.Index, b: pd.Index) -> bool:
    # the Index object itself is kept (immutable, shared with the data), so the usual case costs nothing
    return a is b or (len(a) == len(b) and a.equals(b))


def _value_sum(x, n_rows: int) -> float | None:
    if n_rows == 0:
        return 0.0
    rows = np.unique(np.linspace(0, n_rows - 1, min(SAMPLED_ROWS, n_rows)).astype(np.int64))
    try:
        part = x[rows]
    except (TypeError, IndexError, ValueError):  # an on-disk array that takes no row list
        return None
    part = abs(part) if sp.issparse(part) else np.abs(np.asarray(part, dtype=np.float64))
    total = float(part.sum())
    return total if np.isfinite(total) else None  # NaN would never equal itself


def source_fingerprint(mdata: md.MuData, specs: dict[str, ModalitySpec]) -> dict:
    """The cells' names and, per registered modality, its cells' names, its shape and the sum of ``|x|`` over a few
    evenly spaced rows of the matrix the model reads (image pixels and backed data: names and shape only)."""
    mods: dict = {}
    out = {
        "cells": mdata.obs_names,
        "modalities": mods,
    }  # modalities apart: one may be named "cells"
    backed = bool(getattr(mdata, "isbacked", False))
    for m, spec in specs.items():
        if m not in mdata.mod:
            mods[m] = None
            continue
        a = mdata.mod[m]
        values = None
        if spec.kind != "image" and not backed:
            try:
                values = _value_sum(select_matrix(a, spec), a.n_obs)
            except VennCellInputError:  # its layer is gone
                values = "no layer"
        mods[m] = (a.obs_names, a.n_vars, values)
    return out


def fingerprint_changes(before: dict, now: dict) -> list[str]:
    """What differs between two fingerprints, in words (empty: nothing noticed)."""
    changes = []
    if not _same_names(before["cells"], now["cells"]):
        n0, n1 = len(before["cells"]), len(now["cells"])
        changes.append(
            f"its cells: {n0} then, {n1} now"
            if n0 != n1
            else f"the names or order of its {n1} cells"
        )
    for m, old in before["modalities"].items():
        new = now["modalities"].get(m)
        if old is None or new is None:
            if (old is None) != (new is None):
                changes.append(f"modality '{m}' was {'added' if old is None else 'removed'}")
        elif not _same_names(old[0], new[0]) or old[1] != new[1]:
            changes.append(f"modality '{m}''s cells or features")
        elif old[2] != new[2]:
            changes.append(
                f"modality '{m}''s values (e.g. normalised in place, or its matrix replaced)"
            )
    return changes
