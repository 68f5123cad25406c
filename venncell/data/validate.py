"""Input checks that run before any training: every error names the modality, the problem and the fix."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from venncell.data.spec import BINARY_LIKELIHOODS, COUNT_LIKELIHOODS, rounding_fix

# float32 (the training precision) holds integers exactly up to 2^24; larger counts lose the NB likelihood's
# precision (its log-gamma terms cancel), so they are refused rather than trained on silently
# The fewest cells any estimate is made from (a start, a held-out split, a batch's variance, a probe's folds, a
# plan's bootstrap, a Venn region's block): below it the numbers mean nothing, so it is refused or skipped.
MIN_CELLS = 10
MAX_COUNT = 2.0**24
FLOAT32_MAX = float(np.finfo(np.float32).max)


class VennCellInputError(ValueError):
    """Raised for data or configuration that VennCell cannot train on."""


class VennCellInputWarning(UserWarning):
    """Data VennCell can train on but the user should know about."""


class VennCellTrainingWarning(VennCellInputWarning):
    """Training ran to its end but failed (e.g. diverged): its latents are not to be trusted. A subclass of
    ``VennCellInputWarning``, so a filter on that class covers it too."""


def _values(x) -> np.ndarray:
    return x.data if sp.issparse(x) else np.asarray(x)


ZERO_VARIANCE_POLICIES = ("warn", "drop", "keep")


def check_zero_variance_policy(name: str, policy: str) -> None:
    if policy not in ZERO_VARIANCE_POLICIES:
        raise VennCellInputError(
            f"Modality '{name}': zero_variance={policy!r} is not one of {ZERO_VARIANCE_POLICIES}."
        )


def _drop_setup(name: str, setup: dict | None) -> str:
    """The setup_mudata call that registers the data as before, with ``zero_variance='drop'`` for ``name``: a dict
    of modalities registers only those named, so every one is written out."""
    if not setup:
        return f"`setup_mudata(mdata, modalities={{'{name}': {{..., 'zero_variance': 'drop'}}, ...}})`, every modality"
    entries = {}
    for m, opts in setup["modalities"].items():
        # None and False are the options' defaults; a weight of 0.0 is not
        entry = {
            k: v
            for k, v in opts.items()
            if v is not None and v is not False and k != "zero_variance"
        }
        zv = "drop" if m == name else opts.get("zero_variance", "warn")
        entries[m] = {**entry, **({"zero_variance": zv} if zv != "warn" else {})}
    batch = f", batch_key={setup['batch_key']!r}" if setup.get("batch_key") else ""
    return f"`VennCell.setup_mudata(mdata, modalities={entries!r}{batch})`"


def column_range(x) -> tuple[np.ndarray, np.ndarray]:
    """Each column's minimum and maximum, for a dense or sparse matrix."""
    if sp.issparse(x):
        return x.min(0).toarray().ravel(), x.max(0).toarray().ravel()
    x = np.asarray(x)
    return x.min(0), x.max(0)


def warn_zero_variance(
    name: str, const: np.ndarray, features, stacklevel: int = 2, setup: dict | None = None
) -> None:
    """The ``zero_variance='warn'`` policy's warning for the zero-variance columns ``const`` (none: no warning);
    ``setup``: the data's setup options, from which the fix's ``setup_mudata`` call is written whole."""
    if not len(const):
        return
    names = ", ".join(str(features[i]) for i in const[:5])
    warnings.warn(
        f"Modality '{name}': {len(const)} feature(s) have zero variance ({names}"
        f"{', ...' if len(const) > 5 else ''}); they carry no information. Set zero_variance='drop' in this modality's "
        f"registry entry ({_drop_setup(name, setup)}, or the same key in `data.register`) to drop them, or 'keep' "
        "to silence this warning.",
        VennCellInputWarning,
        stacklevel=stacklevel,
    )


def warn_outlier_columns(name: str, x, features) -> None:
    """Warn about Gaussian columns that a handful of far-off values dominate: the most extreme max(3, 0.1 %) cells
    hold over half of the column's variance and lie over 100 robust SDs (MAD) from its median. The standardised
    scale is then theirs, every other cell sits near the mean, and the decoders cannot learn the column
    (measurement outliers, e.g. a segmentation error's area). Moderately skewed or heavy-tailed columns
    (log-normal of sigma 1, Student t of 3 degrees of freedom) rarely reach both bars, strongly skewed ones do (and
    fit better log-transformed); columns with a tied majority (MAD 0: rare events) and sparse or small (< 100
    cells) data are left alone."""
    if sp.issparse(x) or x.shape[0] < 100:
        return
    n = x.shape[0]
    k = max(3, int(np.ceil(0.001 * n)))
    bad = []
    # a few columns at a time: no float64 copy of the whole matrix
    for start in range(0, x.shape[1], 256):
        c = np.asarray(x[:, start : start + 256], dtype=np.float64)
        med = np.median(c, 0)
        mad = 1.4826 * np.median(np.abs(c - med), 0)
        dev = (c - c.mean(0)) ** 2
        total = dev.sum(0)
        top = np.partition(dev, n - k, axis=0)[-k:].sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(total > 0, top / total, 0.0)
        far = np.abs(c - med).max(0) > 100 * mad
        bad += list(start + np.flatnonzero((mad > 0) & far & (share > 0.5)))
    if not bad:
        return
    names = ", ".join(str(features[i]) for i in bad[:5])
    warnings.warn(
        f"Modality '{name}': in {len(bad)} feature(s) ({names}{', ...' if len(bad) > 5 else ''}) the {k} most "
        "extreme cells hold over half of the variance, so they set its standardised scale and the model learns "
        "little of it from the other cells. Clip measurement outliers before setup_mudata, e.g. each feature to "
        f"its median ± 50 median absolute deviations: `x = np.asarray(mdata['{name}'].X); med = np.median(x, 0); "
        f"mad = np.median(np.abs(x - med), 0); mdata['{name}'].X = np.where(mad > 0, np.clip(x, med - 50 * mad, "
        "med + 50 * mad), x).astype(np.float32)` (on the layer instead where you set one up); or log-transform "
        "strongly skewed features.",
        VennCellInputWarning,
        stacklevel=user_stacklevel(),
    )


def _held(name: str, layer: str | None) -> str:
    """Where a modality's matrix is, as code the user can run on their MuData."""
    return f"mdata['{name}'].layers[{layer!r}]" if layer else f"mdata['{name}'].X"


def check_numeric(name: str, x, layer: str | None = None) -> None:
    """Numbers (bool included: binarised peaks are often stored as X > 0), or an error with the conversion."""
    vals = _values(x)
    numeric = np.issubdtype(vals.dtype, np.number) or vals.dtype == np.bool_
    if not numeric or np.issubdtype(vals.dtype, np.complexfloating):
        held = _held(name, layer)
        raise VennCellInputError(
            f"Modality '{name}' holds non-numeric values (dtype {vals.dtype}); convert it to "
            f"float (`{held} = {held}.astype(np.float32)`)."
        )


def check_matrix(
    name: str,
    x,
    likelihood: str,
    features,
    binarize: bool = False,
    zero_variance: str = "warn",
    layer: str | None = None,
    trained: bool = False,
    setup: dict | None = None,
) -> np.ndarray:
    """Validate one modality's matrix against its likelihood.

    Returns the column indices of zero-variance features; ``zero_variance`` says whether they are
    reported (``warn``), dropped by the caller (``drop``) or silently kept (``keep``). ``layer``: where the
    matrix was read (None = ``.X``), named in the fixes. ``trained``: new cells for a trained model, whose
    likelihood is fixed (the fixes do not offer another). ``setup``: the data's setup options (``setup_options``),
    written into the fixes.
    """
    held = _held(name, layer)
    batch_key = (setup or {}).get("batch_key")
    check_zero_variance_policy(name, zero_variance)
    n_cells, n_features = x.shape
    if n_cells == 0:
        raise VennCellInputError(
            f"Modality '{name}' has zero cells. Remove it from the MuData or supply cells for it."
        )
    if n_features == 0:
        raise VennCellInputError(
            f"Modality '{name}' has zero features. Remove it from the MuData or check the feature filter; if it "
            f"holds images (cells x C x H x W in .obsm or a file), register it as one: setup_mudata(modalities="
            f"{{'{name}': {{'kind': 'image', 'obsm_key': ...}}}}) or {{..., 'store': 'crops.npy'}}."
        )
    if getattr(x, "dtype", None) == np.float16:
        # float16 cannot hold float32's limit or a cell's total above 65504: checked as the model reads it
        x = x.astype(np.float32)
    vals = _values(x)
    check_numeric(name, vals, layer)
    finite = np.isfinite(vals)
    if not finite.all():
        bad = _first_bad(x, finite)
        n_bad = int((~finite).sum())
        block = None if trained else _missing_block(x)
        panel = (
            f" They fill {block[1]} feature(s) for the same {block[0]} cells, as joining batches stained with "
            "different panels leaves them: rather than dropping the cells, give those features a modality of "
            "their own that holds only the cells that measured them "
            f"(`mdata = venncell.data.split_panels(mdata, '{name}', "
            + (f"{batch_key!r}" if batch_key else "'<the .obs column of batches>'")
            + ("" if layer is None else f", layer={layer!r}")
            + ")`, which reads NaN as not measured)."
            if block
            else ""
        )
        raise VennCellInputError(
            f"Modality '{name}' contains {n_bad} NaN/inf value(s){bad}. Impute or drop those cells/features "
            "before training or embedding (e.g. keep the cells whose values are all finite, dense or sparse: "
            f"`mdata.mod['{name}'] = mdata['{name}'][np.isfinite(np.asarray({held}.sum(1))).ravel()].copy()`, "
            f"then `mdata.update()`).{panel}"
        )
    if vals.size and np.abs(vals).max() > FLOAT32_MAX:
        raise VennCellInputError(
            f"Modality '{name}' has values up to {np.abs(vals).max():.3g}, beyond float32 (the training precision, "
            f"max {FLOAT32_MAX:.3g}). Rescale or log-transform that modality before training."
        )
    if likelihood in COUNT_LIKELIHOODS:
        if vals.size and vals.max() > MAX_COUNT:
            raise VennCellInputError(
                f"Modality '{name}' uses a count likelihood ('{likelihood}') but has a count of {vals.max():.3g}, "
                f"above 2^24 = {MAX_COUNT:.0f}, the largest integer float32 holds exactly; no sequencing count is "
                "that large. Check that modality for corrupt values"
                + (
                    "."
                    if trained
                    else ", or model it as likelihood='gaussian' after a log transform."
                )
            )
        if vals.size and not np.allclose(vals, np.round(vals)):
            rounding = rounding_fix(name, x, layer, trained)
            detail = (
                f".{rounding}" if rounding else f" (it looks normalised). {_counts_fix(trained)}"
            )
            raise VennCellInputError(
                f"Modality '{name}' uses a negative binomial (count) likelihood ('{likelihood}') but has "
                f"non-integer values{detail}"
            )
    if (likelihood in COUNT_LIKELIHOODS or binarize) and vals.size and vals.min() < 0:
        # counts cannot be negative; binarising would quietly read them as 0
        read = "binarised counts" if binarize else "counts"
        corrupt = (
            " A few negative entries among whole numbers are corrupt counts: fix them, or drop those cells."
            if np.allclose(vals, np.round(vals))
            else ""
        )
        raise VennCellInputError(
            f"Modality '{name}' is read as {read} ('{likelihood}') but has {int((vals < 0).sum())} negative "
            f"value(s) (min {vals.min():.3g}){_first_bad(x, vals >= 0)}. {_counts_fix(trained)}{corrupt}"
        )
    if likelihood in BINARY_LIKELIHOODS and not binarize:
        if vals.size and not np.isin(np.unique(vals[:1_000_000]), (0, 1)).all():
            raise VennCellInputError(
                f"Modality '{name}' uses the Bernoulli likelihood but has values other than 0/1. "
                + (
                    "Give the 0/1 data the model was trained on."
                    if trained
                    else "Set binarize=true for this modality (counts > 0 become 1) or choose another likelihood."
                )
            )
    if likelihood in COUNT_LIKELIHOODS + BINARY_LIKELIHOODS:
        totals = np.asarray(x.sum(1)).ravel()
        n_empty = int((totals == 0).sum())
        if n_empty == n_cells:
            raise VennCellInputError(
                f"Modality '{name}': every cell is all-zero; there is nothing to learn from."
                if not trained
                else f"Modality '{name}': every cell is all-zero, which is no measurement. For new cells without "
                f"'{name}', leave it out of the MuData (or embed with modalities=[...]); VennCell reads a "
                "missing modality as missing, not as zeros."
            )
        if n_empty and likelihood in COUNT_LIKELIHOODS:
            raise VennCellInputError(
                f"Modality '{name}': {n_empty} cell(s) are all-zero (first: row {int(np.argmax(totals == 0))}), so "
                "their library size is 0 and the count likelihood is undefined. Filter them "
                f"(e.g. `sc.pp.filter_cells(mdata['{name}'], min_counts=1)`, then `mdata.update()`), or keep the "
                "cells without this modality: drop them "
                f"from it only (`keep = np.asarray(mdata['{name}'].X.sum(1)).ravel() > 0`, `mdata.mod['{name}'] = "
                f"mdata['{name}'][keep].copy()`, `mdata.update()`; they then use their other modalities)."
            )
    const = np.array([], dtype=np.int64)
    if n_cells > 1:
        # constant = max equals min: exact, where a float32 E[x^2] - E[x]^2 leaves a constant non-zero column
        # a small positive "variance"
        lo, hi = column_range(x)
        const = np.flatnonzero(lo == hi)
        if zero_variance == "warn":
            warn_zero_variance(name, const, features, stacklevel=6, setup=setup)
    return const


def _counts_fix(trained: bool) -> str:
    """The fix for data that are not counts where counts are modelled: at training another likelihood is one."""
    if trained:
        return "Give the raw counts, as the model was trained on (e.g. `layer='counts'`)."
    return "Give raw counts (e.g. `layer='counts'`) or choose likelihood='gaussian' for normalised data."


def _missing_block(x) -> tuple[int, int] | None:
    """(cells, features) when the non-finite values fill whole features for one set of cells, some but not all
    (features a batch's panel lacked, filled with NaN); else None."""
    if sp.issparse(x):
        coo = x.tocoo()
        bad = ~np.isfinite(coo.data)
        rows, cols = coo.row[bad], coo.col[bad]
    else:
        rows, cols = np.nonzero(~np.isfinite(np.asarray(x)))
    n_rows, n_cols = len(np.unique(rows)), len(np.unique(cols))
    if 1 < n_rows < x.shape[0] and len(rows) == n_rows * n_cols:
        return n_rows, n_cols
    return None


def _first_bad(x, finite_values: np.ndarray) -> str:
    """Locate the first bad entry (False in ``finite_values``, one per stored value) as ' (first at cell row i,
    feature column j)'."""
    k = int(np.argmin(finite_values.ravel()))
    # k indexes the stored values in the matrix's own order (``_values``): read its position the same way
    if sp.issparse(x) and x.format in ("csr", "csc"):
        major = int(np.searchsorted(x.indptr, k, side="right") - 1)
        row, col = (major, int(x.indices[k])) if x.format == "csr" else (int(x.indices[k]), major)
    elif sp.issparse(x) and x.format == "coo":
        row, col = int(x.row[k]), int(x.col[k])
    elif sp.issparse(x):
        return ""
    else:
        row, col = np.unravel_index(k, x.shape)
    return f" (first at cell row {row}, feature column {col})"


def did_you_mean(unknown: list[str], known) -> str:
    """`` (did you mean 'x' -> 'y'?)`` for the unknown names close to a valid one, else an empty string."""
    from difflib import get_close_matches

    close = {u: get_close_matches(u, sorted(known), n=1) for u in unknown}
    hints = [f"{u!r} -> {c[0]!r}" for u, c in close.items() if c]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def config_from(cls, values: dict, what: str):
    """``cls(**values)`` for a dataclass of settings, refusing unknown keys with the valid ones listed; ``what``
    names the settings in the message (``model``, ``attribution``, ...)."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise VennCellInputError(
            f"Unknown {what} option(s) {unknown}{did_you_mean(unknown, known)}; valid: {sorted(known)}."
        )
    return cls(**values)


def check_range(
    name: str, value, low=None, high=None, integer: bool = False, finite: bool = True
) -> None:
    """Validate a configuration value; ``name`` is the config key the user would edit."""
    if integer and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)):
        raise VennCellInputError(f"Config value {name}={value!r} must be an integer.")
    if not integer and (
        isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
    ):
        raise VennCellInputError(f"Config value {name}={value!r} must be a number.")
    if finite and not np.isfinite(value):
        raise VennCellInputError(f"Config value {name}={value!r} must be a finite number.")
    if low is not None and value < low:
        raise VennCellInputError(
            f"Config value {name}={value!r} is out of range: it must be >= {low}."
        )
    if high is not None and value > high:
        raise VennCellInputError(
            f"Config value {name}={value!r} is out of range: it must be <= {high}."
        )


def check_image_array(name: str, arr, channels, n_obs: int) -> None:
    """Shape, dtype and channel checks of an image modality's cells x C x H x W array (pixels: see images.py)."""
    shape = tuple(getattr(arr, "shape", ()))
    dtype = np.dtype(getattr(arr, "dtype", object))
    if len(shape) != 4:
        raise VennCellInputError(
            f"Modality '{name}': the image array has shape {shape} (rank {len(shape)}) but must be 4-D, cells x "
            "channels x height x width. Add a channel axis for single-channel images (`images[:, None]`) or move a "
            "channels-last axis first (`images.transpose(0, 3, 1, 2)`)."
        )
    if (
        dtype == np.bool_
        or not np.issubdtype(dtype, np.number)
        or np.issubdtype(dtype, np.complexfloating)
    ):
        raise VennCellInputError(
            f"Modality '{name}': the image array has dtype {dtype}; pixels must be real numbers. Convert it "
            "(`images.astype(np.float32)`)."
        )
    # a crop at most 4 pixels wide but tall and with many channels is a channels-last stack, channels= or not
    if shape[3] <= 4 < min(shape[1], shape[2]):
        raise VennCellInputError(
            f"Modality '{name}': the image array has shape {shape}, which looks channels-last (cells x height x "
            f"width x channels); VennCell reads cells x channels x height x width. Move the channel axis first "
            "(`images.transpose(0, 3, 1, 2)`)."
        )
    if shape[0] != n_obs:
        raise VennCellInputError(
            f"Modality '{name}': the image array has {shape[0]} rows but the modality has {n_obs} cells. Row i of "
            "the array must be the modality's cell i (same order as its obs_names)."
        )
    if min(shape[1:]) == 0:
        raise VennCellInputError(
            f"Modality '{name}': the image array has an empty axis (shape {shape})."
        )
    if channels is not None:
        bad = [
            c for c in channels if not isinstance(c, (int, np.integer)) or not 0 <= c < shape[1]
        ]
        if bad or not len(channels):
            raise VennCellInputError(
                f"Modality '{name}': channels {list(channels)} are out of range; the image array has {shape[1]} "
                f"channel(s), so pick indices in 0..{shape[1] - 1} (or channels=null for all)."
            )
        if len(set(int(c) for c in channels)) < len(channels):
            raise VennCellInputError(
                f"Modality '{name}': channels {list(channels)} name a channel twice; list each channel once."
            )


def check_unique_obs_names(where: str, names: np.ndarray) -> None:
    """Cells are matched across modalities by obs_names, so each name must occur once."""
    index = pd.Index(names)
    if index.is_unique:  # a hash check; sorting millions of names would cost seconds
        return
    dup = index[index.duplicated()].unique()
    raise VennCellInputError(
        f"{where} has {len(dup)} repeated cell name(s) in obs_names (e.g. {', '.join(repr(str(d)) for d in dup[:3])}); cells "
        "are paired across modalities by name, so each must be unique. Fix the barcodes, or call "
        "`.obs_names_make_unique()` on each modality (the same cells must get the same names in every modality)."
    )


def check_unique_names(name: str, features) -> None:
    """A modality's feature names must be unique: new data are aligned to the model's features by name."""
    index = pd.Index([str(f) for f in features])
    if index.is_unique:
        return
    dup = index[index.duplicated()].unique()
    raise VennCellInputError(
        f"Modality '{name}' has {len(dup)} repeated feature name(s) in var_names (e.g. "
        f"{', '.join(repr(str(d)) for d in dup[:3])}); features are matched to new data by name, so each must be "
        f"unique. Call `mdata['{name}'].var_names_make_unique()` (or drop the duplicates) before setup."
    )


def check_batch_labels(key: str, values, training: bool = True, warn: bool = True) -> np.ndarray:
    """The batch labels of ``.obs[key]`` as strings (whole numbers stored as floats read as integers, so ``1.0``
    and ``1`` are one batch), refusing what cannot be a batch: missing labels, continuous numbers, or, in training
    data, about one label per cell (new cells may be a few from many batches); ``warn``: about training labels
    that read as missing values written as text, and about many tiny batches."""
    s = pd.Series(values)
    if s.isna().any():
        raise VennCellInputError(
            f"batch_key '{key}': {int(s.isna().sum())} cell(s) have no batch label (NaN). Give every cell a batch "
            f"(e.g. `mdata.obs['{key}'] = mdata.obs['{key}'].astype(object).fillna('unknown')` makes them one "
            "batch, if that is what they are) or drop those cells."
        )
    if pd.api.types.is_float_dtype(s) and not np.allclose(s, np.round(s)):
        raise VennCellInputError(
            f"batch_key '{key}' holds continuous numbers (e.g. {s.iloc[0]!r}); a batch is a category such as a "
            "sample, donor or run. Name a categorical column, or convert this one if its values are codes."
        )
    labels = batch_label_strings(s)
    n_cat = len(set(labels))
    if training and len(labels) >= 4 and n_cat > len(labels) / 2:
        raise VennCellInputError(
            f"batch_key '{key}' has {n_cat} distinct values for {len(labels)} cells, about one per cell: that is "
            "an identifier or a measurement, not a batch. Name the column of samples, donors or runs."
        )
    if training and warn:
        _warn_odd_batches(key, labels)
    return labels


# what R, pandas and spreadsheets write for a missing value when a column is saved as text
_MISSING_AS_TEXT = {"NA", "<NA>", "N/A", "NULL", "None", "nan", "NaN", ""}


def _warn_odd_batches(key: str, labels: np.ndarray) -> None:
    """Warn about batch labels that read as a missing value written out as text, and about batches too small to
    learn a batch effect from: each batch's effect is fitted from its own cells."""
    names, sizes = np.unique(labels, return_counts=True)
    text = [str(n) for n in names if str(n).strip() in _MISSING_AS_TEXT]
    if text:
        warnings.warn(
            f"batch_key '{key}': label(s) {text} read like a missing value written as text (R writes NA so); "
            "those cells form a batch of their own. If their batch is unknown, give them the batch they came "
            "from, or drop them.",
            VennCellInputWarning,
            stacklevel=user_stacklevel(),
        )
    small = sizes < MIN_CELLS
    if sizes[small].sum() >= 0.1 * len(labels):
        warnings.warn(
            f"batch_key '{key}': {int(small.sum())} of {len(names)} batches have fewer than {MIN_CELLS} cells, "
            f"and they hold {int(sizes[small].sum())} of {len(labels)} cells. Each batch's effect is learned from "
            "its own cells, and from so few it takes up their biology too. Use a coarser batch (e.g. the run or "
            "the site rather than the sample) or merge the small batches.",
            VennCellInputWarning,
            stacklevel=user_stacklevel(),
        )


def batch_label_strings(values) -> np.ndarray:
    """Batch labels as strings, whole-number floats written as integers (``1.0`` -> ``"1"``) whatever the column's
    dtype (float, object, categorical): codes read back from a file as floats then match the integers a user types.
    Only exact whole numbers below 2**53 are rewritten, so no two distinct numbers become one label."""
    s = pd.Series(values)
    uniques = pd.unique(s.to_numpy(dtype=object))
    return s.map({u: _label_string(u) for u in uniques}).to_numpy(dtype=str)


def _label_string(v) -> str:
    if isinstance(v, (float, np.floating)) and np.isfinite(v) and v == int(v) and abs(v) < 2**53:
        return str(int(v))
    return str(v)


def user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning raised by its caller at the first frame outside the venncell
    package (the user's line, however deep in venncell the warning starts)."""
    root = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(root):
        frame, level = frame.f_back, level + 1
    return level
