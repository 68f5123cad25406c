"""Every transform of a modality's values, in one place: the load-time transform of the data (``clr``), the
preprocessing in front of the encoders (``encoder_transform``, on torch tensors or on sparse matrices) and the
column statistics they are fitted from."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from venncell.data.spec import ModalitySpec
from venncell.data.validate import VennCellInputError


def column_mean_std(x) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation (float64) of a dense or sparse matrix, without densifying it."""
    mean = np.asarray(x.mean(0), dtype=np.float64).ravel()
    sq = np.asarray(
        (x.multiply(x) if sp.issparse(x) else np.square(x, dtype=np.float64)).mean(0)
    ).ravel()
    return mean, np.sqrt(np.maximum(sq - mean**2, 0.0))


def scale_columns(x, scale):
    """``x`` with each column divided by ``scale`` (float32, sparse kept sparse)."""
    inv = (1.0 / np.asarray(scale, dtype=np.float64)).astype(np.float32)
    if sp.issparse(x):
        return sp.csr_matrix(x.multiply(inv[None, :]), dtype=np.float32)
    return (np.asarray(x, dtype=np.float32) * inv[None, :]).astype(np.float32)


def clr_log_geomean(name: str, x) -> list[float]:
    """Per-feature mean of log1p(x) over the (training) cells: the statistic of the ``clr`` transform."""
    _check_clr_input(name, x)
    log1p = x.log1p() if sp.issparse(x) else np.log1p(x)
    return np.asarray(log1p.mean(0), dtype=np.float64).ravel().tolist()


def _check_clr_input(name: str, x) -> None:
    vals = x.data if sp.issparse(x) else np.asarray(x)
    if vals.size and vals.min() < 0:
        raise VennCellInputError(
            f"Modality '{name}': transform='clr' needs non-negative counts but the data has negative values "
            f"(min {vals.min():.3g}), so it is already normalised. Give raw counts (e.g. layer='counts') or drop "
            "transform='clr' and model the values as they are (likelihood='gaussian')."
        )


def apply_transform(spec: ModalitySpec, x):
    """The load-time transform ``spec.transform`` with the spec's fitted statistics.

    ``clr``: muon's ``prot.pp.clr(axis=0)`` formula, ``log1p(x_ij / exp(mean_i log1p(x_ij)))``, with the
    per-feature mean of the training cells (``spec.clr_log_geomean``). Zeros stay zeros (sparse kept).
    """
    if spec.transform != "clr":
        raise VennCellInputError(
            f"Modality '{spec.name}': unknown transform {spec.transform!r}; use 'clr' or null."
        )
    _check_clr_input(spec.name, x)
    scale = np.exp(-np.asarray(spec.clr_log_geomean, dtype=np.float64))
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32, copy=True)
        x.data = np.log1p(x.data * scale[x.indices]).astype(np.float32)
        return x
    return np.log1p(np.asarray(x, dtype=np.float64) * scale).astype(np.float32)


def encoder_transform(spec: ModalitySpec, x: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
    """The encoders' input: ``spec.encoder_transform`` of a batch (cells x features) with its library sizes."""
    if spec.encoder_transform == "none":
        return x
    if spec.encoder_transform == "log1p_cp10k":
        return torch.log1p(x / library * 1e4)
    if spec.encoder_transform == "binary":
        return (x > 0).to(x.dtype)
    if spec.encoder_transform == "standardise":
        mean = torch.as_tensor(spec.feature_mean, dtype=x.dtype, device=x.device)
        std = torch.as_tensor(spec.feature_std, dtype=x.dtype, device=x.device)
        return (x - mean) / std
    raise VennCellInputError(
        f"Modality '{spec.name}': unknown encoder_transform '{spec.encoder_transform}'."
    )


def encoder_input(spec: ModalitySpec, x, library: np.ndarray):
    """``encoder_transform`` on a scipy/numpy matrix (the spectral start's PCA input), sparse kept sparse (float64).

    ``library``: the rows' library sizes, already clipped to >= 1. On sparse data ``standardise`` only scales: PCA
    centres anyway, and the shift would densify the matrix."""
    if not sp.issparse(x):
        return encoder_transform(
            spec, torch.as_tensor(x), torch.as_tensor(library)[:, None]
        ).numpy()
    x = sp.csr_matrix(x, dtype=np.float64)
    if spec.encoder_transform == "log1p_cp10k":
        x = sp.csr_matrix(sp.diags(1e4 / library) @ x)
        x.data = np.log1p(x.data)
    elif spec.encoder_transform == "binary":
        x = (x > 0).astype(np.float64)
    elif spec.encoder_transform == "standardise":
        x = sp.csr_matrix(x @ sp.diags(1.0 / np.asarray(spec.feature_std, dtype=np.float64)))
    else:
        x = encoder_transform(
            spec, torch.as_tensor(x.toarray()), torch.as_tensor(library)[:, None]
        ).numpy()
    return x


def log_normalised(spec: ModalitySpec, x, library: np.ndarray):
    """The scale features are shown and probed on: log1p counts per 10k for count modalities, the values otherwise
    (sparse kept)."""
    if spec.encoder_transform != "log1p_cp10k":
        return x
    scale = 1e4 / np.maximum(library, 1.0)
    if sp.issparse(x):
        x = sp.csr_matrix(sp.diags(scale) @ x)
        x.data = np.log1p(x.data)
        return x
    return np.log1p(np.asarray(x) * scale[:, None])
