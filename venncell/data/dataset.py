"""Cells x modalities in memory: sparse matrices aligned on one cell index, densified per mini-batch."""

from __future__ import annotations

import sys
import warnings

import mudata as md
import numpy as np
import scipy.sparse as sp
import torch

from venncell.data.spec import ModalitySpec
from venncell.data.validate import VennCellInputError, check_matrix, check_unique_obs_names
from venncell.nn.likelihoods import LIKELIHOODS


def _select_matrix(a, spec: ModalitySpec):
    if spec.layer is None:
        return a.X
    if spec.layer not in a.layers:
        raise VennCellInputError(
            f"Modality '{spec.name}': layer '{spec.layer}' does not exist (layers: {list(a.layers) or 'none'}). "
            "Set layer=null to use .X or name an existing layer."
        )
    return a.layers[spec.layer]


def _align_features(spec: ModalitySpec, var_names) -> np.ndarray | None:
    """Column indices that put the data's features in the registered order (None = already in order)."""
    var_names = list(map(str, var_names))
    if var_names == spec.features:
        return None
    pos = {f: i for i, f in enumerate(var_names)}
    missing = [f for f in spec.features if f not in pos]
    if missing:
        extra = [f for f in var_names if f not in set(spec.features)]
        raise VennCellInputError(
            f"Modality '{spec.name}': {len(missing)} feature(s) the model was trained on are missing from the data "
            f"(first: {missing[:5]}); {len(extra)} extra feature(s) (first: {extra[:5]}). Give the data the "
            "model's features (model.registry) — e.g. reindex and fill with zeros — or retrain."
        )
    if len(var_names) != len(spec.features) and not set(var_names) - set(spec.features) <= set(spec.dropped_features):
        warnings.warn(
            f"Modality '{spec.name}': the data has {len(var_names) - len(spec.features)} extra feature(s); "
            "using the model's features only, in the model's order.",
            stacklevel=3,
        )
    elif set(var_names) == set(spec.features):
        warnings.warn(f"Modality '{spec.name}': features reordered to the model's order.", stacklevel=3)
    return np.array([pos[f] for f in spec.features])


class MultiModalData:
    """Aligned, validated matrices for every modality, plus presence masks and batch codes.

    Cells are the rows of ``mdata.obs``; a cell absent from a modality (partially paired data) has
    ``present[m][i] == False`` and its row is never used for that modality.
    """

    def __init__(
        self,
        mdata: md.MuData,
        specs: dict[str, ModalitySpec],
        batch_key: str | None = None,
        batch_categories: list[str] | None = None,
        fit_transform: bool = True,
        allow_missing_modalities: bool = False,
        backed: bool = False,
        chunk_size: int | None = None,
    ):
        self.specs = specs
        # backed: rows are read from the .h5mu on disk per chunk (venncell.data.backed); chunk_size also
        # switches make_loader to the chunk-wise sampler (set it on in-memory data to get the same batches)
        self.backed = backed
        self.chunk_size = chunk_size
        if backed:
            from venncell.data.backed import DEFAULT_CHUNK_SIZE, backed_path, open_backed_modality

            path = backed_path(mdata)
            self.chunk_size = chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
        self.obs_names = np.asarray(mdata.obs_names).astype(str)
        self.n_cells = len(self.obs_names)
        if self.n_cells == 0:
            raise VennCellInputError("The MuData has zero cells; nothing to train on.")
        # cells are paired across modalities by name: a repeated name makes the pairing (and every latent) ambiguous
        for where, names in [("The MuData", self.obs_names),
                             *((f"Modality '{m}'", np.asarray(mdata.mod[m].obs_names)) for m in specs if m in mdata.mod)]:
            check_unique_obs_names(where, names)
        self.x: dict[str, sp.csr_matrix | np.ndarray] = {}
        self.row: dict[str, np.ndarray] = {}  # global cell -> row in the modality, -1 when absent
        self.library: dict[str, np.ndarray] = {}
        for name, spec in specs.items():
            if name not in mdata.mod:
                if allow_missing_modalities:
                    self.row[name] = np.full(self.n_cells, -1)
                    continue
                raise VennCellInputError(
                    f"Modality '{name}' is registered but not in the MuData (it has {list(mdata.mod)})."
                )
            a = mdata.mod[name]
            if spec.kind == "image":  # read lazily per batch; see venncell.data.images
                from venncell.data.images import image_source

                self.x[name] = image_source(spec, a, fit_transform)
                self.row[name] = self._rows(mdata, name)
                self.library[name] = np.ones(a.n_obs, dtype=np.float32)
                continue
            if backed and spec.transform is not None:
                raise VennCellInputError(f"Modality '{name}': transform={spec.transform!r} is not supported for backed "
                                         "data; load the MuData into memory or drop the transform.")
            if backed:
                if fit_transform:
                    spec.features = list(map(str, a.var_names))
                cols = None if fit_transform else _align_features(spec, a.var_names)
                self.x[name], self.library[name] = open_backed_modality(path, spec, fit_transform, cols, chunk_size)
                self.row[name] = self._rows(mdata, name)
                continue
            x = _select_matrix(a, spec)
            if not fit_transform:
                cols = _align_features(spec, a.var_names)
                if cols is not None:
                    x = x[:, cols]
            var_names = list(map(str, a.var_names))
            const = check_matrix(name, x, spec.likelihood, spec.features or var_names, spec.binarize,
                                 spec.zero_variance if fit_transform else "keep")
            if fit_transform and spec.zero_variance == "drop" and const.size:
                keep = np.setdiff1d(np.arange(x.shape[1]), const)
                if keep.size == 0:
                    raise VennCellInputError(
                        f"Modality '{name}': every feature has zero variance, so zero_variance='drop' leaves nothing."
                    )
                spec.dropped_features = [var_names[i] for i in const]
                var_names = [var_names[i] for i in keep]
                x = x[:, keep]
            x = sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) or spec.likelihood != "gaussian" else np.asarray(x, dtype=np.float32)
            if spec.binarize:
                x = (x > 0).astype(np.float32)
            if spec.transform is not None:
                x = apply_transform(spec, x, fit=fit_transform)
            if fit_transform:
                spec.features = var_names
                if spec.encoder_transform == "standardise":
                    mean, std = _column_mean_std(x)  # sparse-aware: never densify a whole modality
                    spec.feature_mean = mean.tolist()
                    spec.feature_std = (std + 1e-6).tolist()
            self.x[name] = x
            self.row[name] = self._rows(mdata, name)
            self.library[name] = np.asarray(x.sum(1)).ravel().astype(np.float32)
        present = [n for n in specs if (self.row[n] >= 0).any()]
        if not present:
            raise VennCellInputError("None of the registered modalities has a cell in this MuData.")
        if fit_transform and len(specs) >= 2:
            paired = any(((self.row[n] >= 0) & (self.row[k] >= 0)).any() for n in specs for k in specs if n < k)
            if not paired:
                raise VennCellInputError(
                    "No cell is measured in more than one modality: the modalities' obs_names do not overlap "
                    f"({', '.join(f'{n}: {self.row[n].__ge__(0).sum()} cells' for n in specs)}). Check that the "
                    "cell barcodes use the same naming in every modality."
                )
        self.batch_key = batch_key
        self.batch_categories = batch_categories
        self.batch = None
        if batch_key is not None:
            if batch_key not in mdata.obs:
                raise VennCellInputError(f"batch_key '{batch_key}' is not a column of mdata.obs.")
            values = mdata.obs[batch_key].astype(str).to_numpy()
            if batch_categories is None:
                self.batch_categories = sorted(set(values))
            lookup = {c: i for i, c in enumerate(self.batch_categories)}
            unknown = sorted(set(values) - set(lookup))
            if unknown:
                raise VennCellInputError(f"Batch categories {unknown[:5]} were not seen in training.")
            self.batch = np.array([lookup[v] for v in values])

    @staticmethod
    def _rows(mdata: md.MuData, name: str) -> np.ndarray:
        if name in mdata.obsmap:
            return np.asarray(mdata.obsmap[name]).astype(np.int64) - 1  # mudata stores 1-based, 0 = absent
        return np.arange(mdata.n_obs)

    @property
    def n_batches(self) -> int:
        return len(self.batch_categories) if self.batch_categories else 0

    def present(self, name: str) -> np.ndarray:
        return self.row[name] >= 0

    def get(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Densify the rows of the given cells for every modality.

        For likelihoods that read them (``Likelihood.uses_nonzeros``), ``nz:<modality>`` holds the (row, column)
        indices of ``x:<modality>``'s non-zeros, 2 x nnz; whoever edits ``x`` in a batch must drop it.
        """
        idx = np.asarray(idx)
        out: dict[str, torch.Tensor] = {"idx": torch.as_tensor(idx, dtype=torch.long)}
        if self.batch is not None:
            out["batch"] = torch.as_tensor(self.batch[idx], dtype=torch.long)
        for name, spec in self.specs.items():
            rows = self.row[name][idx]
            mask = rows >= 0
            nonzeros = dense = None
            if mask.any() and name in self.x:
                src, take = self.x[name], rows[mask]
                if not (sp.issparse(src) and src.format == "csr" and src.has_canonical_format):
                    # backed readers, dense arrays, image stores, non-canonical CSR: their rows are read first (a
                    # canonical in-memory CSR is read in place)
                    src, take = src[take], np.arange(len(take))
                    if sp.issparse(src):
                        src = sp.csr_matrix(src)
                        src.sum_duplicates()  # a listed position must appear once
                if sp.issparse(src):
                    dense, nonzeros = _csr_rows(src, take)
                    nonzeros[0] = np.flatnonzero(mask)[nonzeros[0]]
                else:
                    dense = np.asarray(src, dtype=np.float32)
                present_lib = np.asarray(self.library[name][rows[mask]], dtype=np.float32)
            if dense is not None and mask.all():  # every cell has the modality: no zero-filled frame to copy into
                x, lib = dense, present_lib
            else:
                x = np.zeros((len(idx), spec.n_features), dtype=np.float32)
                lib = np.ones(len(idx), dtype=np.float32)
                if dense is not None:
                    x[mask], lib[mask] = dense, present_lib
            if getattr(LIKELIHOODS.get(spec.likelihood), "uses_nonzeros", False):
                if nonzeros is None:  # dense source, or no cell of the batch has the modality
                    nonzeros = np.stack(np.nonzero(x)).astype(np.int64)
                out[f"nz:{name}"] = torch.from_numpy(nonzeros)
            out[f"x:{name}"] = torch.from_numpy(x)
            out[f"mask:{name}"] = torch.from_numpy(mask)
            out[f"lib:{name}"] = torch.from_numpy(lib).clamp_min(1.0).unsqueeze(1)
        return out


def _csr_rows(x: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a canonical CSR matrix densified (float32), and their non-zeros' (row among ``rows``, column), 2 x nnz.
    Explicit zeros may be listed (every term they enter is 0).

    The same as ``x[rows].toarray()`` and its non-zeros, straight from ``indptr`` / ``indices`` / ``data``:
    scipy's fancy row indexing builds an intermediate matrix and validates it, most of the cost of a batch.
    ``get`` relies on scipy's cached ``has_canonical_format``: the matrices in ``MultiModalData.x`` are never edited
    in place."""
    starts = x.indptr[rows].astype(np.int64)
    counts = x.indptr[rows + 1] - starts
    batch_row = np.repeat(np.arange(len(rows), dtype=np.int64), counts)
    # position of every listed entry in indices / data: its row's start plus its rank within the row
    pos = np.arange(len(batch_row), dtype=np.int64) + np.repeat(starts - (np.cumsum(counts) - counts), counts)
    cols = x.indices[pos].astype(np.int64)
    dense = np.zeros(len(rows) * x.shape[1], dtype=np.float32)
    dense[batch_row * x.shape[1] + cols] = x.data[pos]  # one flat index: cheaper than a 2-D fancy assignment
    return dense.reshape(len(rows), x.shape[1]), np.stack([batch_row, cols])


def subset_batch(batch: dict, keep: torch.Tensor) -> dict:
    """The batch restricted to some of its cells: ``keep`` is a boolean mask or row indices (in the new order).

    Per-cell tensors are indexed; the non-zero lists (``nz:``, 2 x nnz of (row, column)) keep the kept rows'
    entries, renumbered, so the likelihoods' sparse path stays exact.
    """
    n = batch["idx"].shape[0]
    rows = keep.nonzero().squeeze(1) if keep.dtype == torch.bool else keep
    new_row = torch.full((n,), -1, dtype=torch.long, device=rows.device)
    new_row[rows] = torch.arange(rows.numel(), device=rows.device)
    out = {}
    for k, v in batch.items():
        if k.startswith("nz:"):
            r = new_row[v[0]]
            out[k] = torch.stack([r, v[1]])[:, r >= 0]
        else:
            out[k] = v[rows]
    return out


def _column_mean_std(x) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(x.mean(0), dtype=np.float64).ravel()
    sq = np.asarray((x.multiply(x) if sp.issparse(x) else np.square(x, dtype=np.float64)).mean(0)).ravel()
    return mean, np.sqrt(np.maximum(sq - mean**2, 0.0))


def apply_transform(spec: ModalitySpec, x, fit: bool):
    """The load-time transform of the data itself (``spec.transform``); ``fit`` records its parameters.

    ``clr``: muon's ``prot.pp.clr(axis=0)`` formula, ``log1p(x_ij / exp(mean_i log1p(x_ij)))``, with the
    per-feature mean taken over the training cells and reused for new cells. Zeros stay zeros (sparse kept).
    """
    if spec.transform != "clr":
        raise VennCellInputError(f"Modality '{spec.name}': unknown transform {spec.transform!r}; use 'clr' or null.")
    vals = x.data if sp.issparse(x) else np.asarray(x)
    if vals.size and vals.min() < 0:
        raise VennCellInputError(
            f"Modality '{spec.name}': transform='clr' needs non-negative counts but the data has negative values "
            f"(min {vals.min():.3g}), so it is already normalised. Give raw counts (e.g. layer='counts') or drop "
            "transform='clr' and model the values as they are (likelihood='gaussian')."
        )
    if fit:
        log1p = x.log1p() if sp.issparse(x) else np.log1p(x)
        spec.clr_log_geomean = np.asarray(log1p.mean(0), dtype=np.float64).ravel().tolist()
    scale = np.exp(-np.asarray(spec.clr_log_geomean, dtype=np.float64))
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32, copy=True)
        x.data = np.log1p(x.data * scale[x.indices]).astype(np.float32)
        return x
    return np.log1p(np.asarray(x, dtype=np.float64) * scale).astype(np.float32)


def encoder_transform(spec: ModalitySpec, x: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
    if spec.encoder_transform == "none":
        return x
    if spec.encoder_transform == "log1p_cp10k":
        return torch.log1p(x / library * 1e4)
    if spec.encoder_transform == "binary":
        return (x > 0).float()
    if spec.encoder_transform == "standardise":
        mean = torch.as_tensor(spec.feature_mean, dtype=x.dtype)
        std = torch.as_tensor(spec.feature_std, dtype=x.dtype)
        return (x - mean) / std
    raise ValueError(f"Modality '{spec.name}': unknown encoder_transform '{spec.encoder_transform}'.")


class CellBatches(torch.utils.data.Sampler):
    """Mini-batches of cell indices whose order depends only on (seed, epoch).

    Lightning calls ``set_epoch``; because the permutation is a pure function of the epoch, a run
    resumed from a checkpoint sees exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0):
        self.indices = np.asarray(indices)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = self.indices
        if self.shuffle:
            order = order[np.random.default_rng((self.seed, self.epoch)).permutation(len(order))]
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size


class _BatchFetcher(torch.utils.data.Dataset):
    def __init__(self, data: MultiModalData):
        self.data = data

    def __len__(self):
        return self.data.n_cells

    def __getitem__(self, idx):
        return self.data.get(idx)


def make_loader(data: MultiModalData, indices, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                pin_memory: bool = False):
    """A DataLoader yielding densified mini-batches; ``batch_size=None`` because the sampler batches."""
    if data.chunk_size:  # backed data: walk the cells chunk by chunk so disk reads stay contiguous
        from venncell.data.backed import ChunkedCellBatches

        sampler = ChunkedCellBatches(indices, batch_size, shuffle, seed, data.chunk_size)
    else:
        sampler = CellBatches(indices, batch_size, shuffle, seed)
    return batch_loader(data, sampler, num_workers, pin_memory)


def batch_loader(data: MultiModalData, sampler, num_workers: int = 0, pin_memory: bool = False):
    """The DataLoader over a batch sampler (each item one batch of cell indices).

    ``num_workers > 0`` assembles batches in worker processes, overlapping the CPU work of densifying rows with the
    training step (on a GPU that work is a large share of a step); the sampler stays in this process, so the batches
    and their order are the same for any number of workers. On Linux the workers are forked, so they share the
    in-memory matrices instead of receiving a pickled copy each (elsewhere fork is unsafe, and the default applies).
    """
    extra = {}
    if num_workers:
        extra = {"persistent_workers": True, "prefetch_factor": 4}
        if sys.platform.startswith("linux"):
            extra["multiprocessing_context"] = "fork"
    return torch.utils.data.DataLoader(_BatchFetcher(data), sampler=sampler, batch_size=None, num_workers=num_workers,
                                       pin_memory=pin_memory, **extra)
