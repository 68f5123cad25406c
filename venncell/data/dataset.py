"""Cells x modalities, aligned on one cell index, as a model reads them: ``MultiModalData`` (a read-only view of a
MuData through a ``DataRegistry``) and ``Batch`` (one mini-batch, densified)."""

from __future__ import annotations

import copy
import sys
import warnings
from dataclasses import dataclass, field, fields

import mudata as md
import numpy as np
import scipy.sparse as sp
import torch

from venncell.data.pairing import check_pairing, warn_unpaired_batches
from venncell.data.registry import DataRegistry, align_features, as_float32, select_matrix
from venncell.data.samplers import CellBatches, ChunkedCellBatches, SplitCellBatches
from venncell.data.spec import NONZERO_LIKELIHOODS, ModalitySpec
from venncell.data.transforms import apply_transform, scale_columns
from venncell.data.validate import (
    VennCellInputError,
    VennCellInputWarning,
    batch_label_strings,
    check_matrix,
    check_unique_obs_names,
    user_stacklevel,
)


@dataclass
class Batch:
    """One mini-batch: per modality the cells' data (``x``, cells x features, zeros where a cell lacks the
    modality), library sizes (``lib``, cells x 1, >= 1), presence (``mask``) and, for the heads that read them, the
    (row, column) positions of ``x``'s non-zeros (``nz``, 2 x nnz); plus the cells' indices and batch codes.
    ``n_present``: how many cells have each modality, counted on the host when the batch was assembled, so that the
    model branches on it without reading ``mask`` back from the device (a host sync per modality and step)."""

    idx: torch.Tensor
    x: dict[str, torch.Tensor] = field(default_factory=dict)
    lib: dict[str, torch.Tensor] = field(default_factory=dict)
    mask: dict[str, torch.Tensor] = field(default_factory=dict)
    nz: dict[str, torch.Tensor] = field(default_factory=dict)
    batch: torch.Tensor | None = None
    n_present: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    def count(self, m: str) -> int:
        """Cells of the batch that have modality ``m``."""
        n = self.n_present.get(m)
        return int(self.mask[m].sum()) if n is None else n

    def subset(self, keep: torch.Tensor) -> Batch:
        """The batch restricted to some of its cells: ``keep`` is a boolean mask or row indices (in the new order).
        The non-zero lists keep the kept rows' entries, renumbered, so the sparse likelihood path stays exact."""
        rows = keep.nonzero().squeeze(1) if keep.dtype == torch.bool else keep
        new_row = torch.full((len(self),), -1, dtype=torch.long, device=rows.device)
        new_row[rows] = torch.arange(rows.numel(), device=rows.device)
        nz = {}
        for m, v in self.nz.items():
            r = new_row[v[0]]
            nz[m] = torch.stack([r, v[1]])[:, r >= 0]
        return Batch(
            self.idx[rows],
            {m: v[rows] for m, v in self.x.items()},
            {m: v[rows] for m, v in self.lib.items()},
            {m: v[rows] for m, v in self.mask.items()},
            nz,
            None if self.batch is None else self.batch[rows],
        )

    def pin_memory(self) -> Batch:
        """Page-locked copies (the DataLoader calls this with ``pin_memory=True``)."""
        return _map(self, lambda t: t.pin_memory())

    def to(self, device) -> Batch:
        return _map(self, lambda t: t.to(device, non_blocking=True))


def _map(b: Batch, fn) -> Batch:
    out = {}
    for f in fields(b):
        v = getattr(b, f.name)
        if f.name == "n_present":
            out[f.name] = dict(v)
            continue
        out[f.name] = (
            {k: fn(t) for k, t in v.items()}
            if isinstance(v, dict)
            else (None if v is None else fn(v))
        )
    return Batch(**out)


def _warn_unknown_modalities(mdata: md.MuData, known: list[str]) -> None:
    """New data's modalities are matched to the model's by name: one under another name (``adt`` for the model's
    ``protein``) would be dropped without a word and its cells embedded from the other modalities alone. Extra
    modalities beside all of the model's are left out quietly (a model trained on some of a MuData's modalities)."""
    unknown = [m for m in mdata.mod if m not in known]
    missing = [m for m in known if m not in mdata.mod]
    if not unknown or not missing:
        return
    warnings.warn(
        f"The new data lack the model's modality {missing} and have {unknown}, which the model does not know and "
        f"ignores. If '{unknown[0]}' is '{missing[0]}' under another name, rename it: "
        f"`mdata.mod['{missing[0]}'] = mdata.mod.pop('{unknown[0]}'); mdata.update()`.",
        VennCellInputWarning,
        stacklevel=user_stacklevel(),
    )


class MultiModalData:
    """Every registered modality of a MuData, validated and aligned to the registry, plus presence and batches.

    Cells are the rows of ``mdata.obs``; a cell absent from a modality (partially paired data) has
    ``present(m)[i] == False`` and its row is never used for that modality. The view reads the registry and never
    changes it.

    Parameters
    ----------
    mdata
        The MuData.
    registry
        What the model knows about each modality (``venncell.data.registry.fit_registry``).
    training
        The data the registry was fitted on (features in registry order, every modality present). False: new data,
        aligned to the registry's features by name; modalities may be missing.
    backed
        Read each modality's rows from the .h5mu on disk per chunk (``venncell.data.backed``).
    chunk_size
        Rows per disk read when backed; also switches the loaders to chunk-wise batches.
    optional
        New data: modalities the caller does not read from (it embeds or predicts from the others); one whose data
        cannot be used as they are (missing features, no counts, NaN) is left out with a warning, not refused.
    """

    def __init__(
        self,
        mdata: md.MuData,
        registry: DataRegistry,
        training: bool = True,
        backed: bool = False,
        chunk_size: int | None = None,
        optional: tuple[str, ...] = (),
    ):
        self.registry = registry
        self.backed = backed
        self.chunk_size = chunk_size
        if backed:
            from venncell.data.backed import backed_path
            from venncell.data.samplers import DEFAULT_CHUNK_SIZE

            path = backed_path(mdata)
            self.chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
        self.obs_names = np.asarray(mdata.obs_names).astype(str)
        self.n_cells = len(self.obs_names)
        if self.n_cells == 0:
            raise VennCellInputError("The MuData has zero cells; nothing to embed or train on.")
        # cells are paired across modalities by name: a repeated name makes the pairing (and every latent) ambiguous
        for where, names in [
            ("The MuData", self.obs_names),
            *(
                (f"Modality '{m}'", np.asarray(mdata.mod[m].obs_names))
                for m in self.specs
                if m in mdata.mod
            ),
        ]:
            check_unique_obs_names(where, names)
        if not training:
            _warn_unknown_modalities(mdata, list(self.specs))
        self.x: dict = {}
        self.row: dict[str, np.ndarray] = {}  # global cell -> row in the modality, -1 when absent
        self._library: dict[str, np.ndarray] = {}
        for name, spec in self.specs.items():
            # new cells: a modality left with no cells (a subset of the training MuData) is as good as absent
            if name not in mdata.mod or (not training and mdata.mod[name].n_obs == 0):
                if not training:
                    self.row[name] = np.full(self.n_cells, -1)
                    continue
                raise VennCellInputError(
                    f"Modality '{name}' is registered but not in the MuData (it has {list(mdata.mod)})."
                )
            try:
                self._read(mdata, name, spec, training, path if backed else None)
            except VennCellInputError as err:
                if training or name not in optional:
                    raise
                # the caller embeds or predicts from other modalities: this one's data need not be usable
                problem = str(err).split(". ")[0].removeprefix(f"Modality '{name}': ")
                warnings.warn(
                    f"Modality '{name}' is left out ({problem}): it is not among the modalities named, so its "
                    "cells are read without it and its own latent blocks are NaN.",
                    VennCellInputWarning,
                    stacklevel=user_stacklevel(),
                )
                self.row[name] = np.full(self.n_cells, -1)
                self.x.pop(name, None)
        if not any((self.row[n] >= 0).any() for n in self.specs):
            raise VennCellInputError(
                f"None of the model's modalities ({', '.join(self.specs)}) has a cell in this MuData, whose "
                f"modalities are {list(mdata.mod)}. Name them as in training (e.g. `mdata.mod['"
                f"{next(iter(self.specs))}'] = mdata.mod.pop('<yours>')`, then `mdata.update()`)."
            )
        empty = ~np.any([self.row[n] >= 0 for n in self.specs], axis=0)
        # in mdata.obs through another modality only: nothing to learn or embed them from
        if empty.any():
            warnings.warn(
                f"{int(empty.sum())} of {self.n_cells} cells have none of the model's modalities "
                f"({', '.join(self.specs)}): their latents will be NaN. Leave them out: `mdata = mdata[mdata."
                f"obs_names.isin(np.concatenate([mdata[m].obs_names for m in {list(self.specs)}]))].copy()`.",
                VennCellInputWarning,
                stacklevel=user_stacklevel(),
            )
        # setup warned about renamed barcodes; here the row maps answer whether any cell pairs, and the names are
        # read only to say why none does
        if training and not any(
            ((self.row[n] >= 0) & (self.row[k] >= 0)).any()
            for n in self.specs
            for k in self.specs
            if n < k
        ):
            check_pairing({n: mdata.obs_names[self.row[n] >= 0] for n in self.specs}, warn=False)
        self.batch = registry.batch_codes(mdata.obs, unseen_ok=not training)
        # new cells' batches the model never saw, or no batch column (code -1): the encoders embed them, refinement
        # learns new batches (``with_new_batch_codes``), prediction is batch-neutral for them
        self.batch_missing = self.batch is not None and registry.batch_key not in mdata.obs
        # the modalities whose own .obs has the column (the fix copies it up)
        self.batch_holders = (
            [m for m in mdata.mod if registry.batch_key in mdata.mod[m].obs]
            if self.batch_missing
            else []
        )
        self.obs_columns = mdata.obs.columns
        self.unseen_batches: list[str] = []
        self.unseen_sizes: list[int] = []  # cells of each of unseen_batches
        if not (self.batch is None or self.batch_missing or (self.batch >= 0).all()):
            # read as the registry reads them (2 and 2.0 are one batch)
            labels = batch_label_strings(mdata.obs[registry.batch_key])
            unseen, sizes = np.unique(labels[self.batch < 0].astype(str), return_counts=True)
            self.unseen_batches = [str(u) for u in unseen]
            self.unseen_sizes = [int(n) for n in sizes]
            # refinement codes them after the trained batches (``with_new_batch_codes``)
            self._new_codes = np.where(
                self.batch < 0,
                registry.n_batches + np.searchsorted(self.unseen_batches, labels),
                self.batch,
            )
        if training and self.batch is not None and not self.batch_missing:
            measured = {n: self.row[n] >= 0 for n in self.specs}
            warn_unpaired_batches(measured, self.batch, registry.batch_categories)

    def _read(self, mdata, name: str, spec: ModalitySpec, training: bool, path) -> None:
        """Modality ``name``'s rows, data and library sizes, checked and aligned to the registry (``path``: the
        .h5mu to read per chunk when backed)."""
        a = mdata.mod[name]
        self.row[name] = _rows(mdata, name)
        if spec.kind == "image":  # read lazily per batch; see venncell.data.images
            from venncell.data.images import image_source

            self.x[name] = image_source(spec, a, training)
            self._library[name] = np.ones(a.n_obs, dtype=np.float32)
            return
        # by name for the training data too: a saved model loaded with them (VennCell.load(path, mdata))
        # may meet its genes in another order
        cols = align_features(spec, a.var_names)
        if path is not None:
            from venncell.data.backed import open_backed

            self.x[name] = open_backed(spec, path, cols, self.chunk_size)
            return
        x = select_matrix(a, spec)
        if cols is not None:
            x = x[:, cols]
        if not training:  # the training data were checked when the registry was fitted
            check_matrix(
                name,
                x,
                spec.likelihood,
                spec.features,
                spec.binarize,
                "keep",
                spec.layer,
                trained=True,
            )
        x = as_float32(x, spec)
        if spec.transform is not None:
            x = apply_transform(spec, x)
        if spec.data_scale is not None:
            x = scale_columns(x, spec.data_scale)
        self.x[name] = x
        self._library[name] = np.asarray(x.sum(1)).ravel().astype(np.float32)

    def with_new_batch_codes(self) -> MultiModalData:
        """A shallow copy whose cells of batches the model never saw (``unseen_batches``) have codes after the
        trained batches', ``n_batches + i`` for the i-th of ``unseen_batches``, instead of -1."""
        out = copy.copy(self)
        if self.unseen_batches:
            out.batch = self._new_codes
        return out

    @property
    def specs(self) -> dict[str, ModalitySpec]:
        return self.registry.specs

    @property
    def n_batches(self) -> int:
        return self.registry.n_batches

    def library_sizes(self, name: str) -> np.ndarray:
        """Modality ``name``'s library size of each of its rows (float32, not clipped)."""
        return self._library[name]

    def present(self, name: str) -> np.ndarray:
        return self.row[name] >= 0

    def rows(self, name: str, cells: np.ndarray):
        """Modality ``name``'s data for ``cells`` (which must have it), as stored (CSR, ndarray, or standardised
        pixels), and their library sizes (float32, not clipped)."""
        r = self.row[name][np.asarray(cells)]
        src = self.x[name]
        if isinstance(src, (np.ndarray, sp.spmatrix, sp.sparray)):
            return src[r], self._library[name][r]
        x = src[r]
        lib = (
            self._library[name][r]
            if name in self._library
            else np.asarray(x.sum(1)).ravel().astype(np.float32)
        )
        return x, lib

    def get(self, idx: np.ndarray) -> Batch:
        """The cells ``idx`` of every modality, densified (see ``Batch``)."""
        idx = np.asarray(idx)
        out = Batch(torch.as_tensor(idx, dtype=torch.long))
        if self.batch is not None:
            out.batch = torch.as_tensor(self.batch[idx], dtype=torch.long)
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
                if name in self._library:
                    present_lib = np.asarray(self._library[name][rows[mask]], dtype=np.float32)
                else:  # backed: the library is the row sum of what was just read
                    present_lib = dense.sum(1, dtype=np.float32)
            if (
                dense is not None and mask.all()
            ):  # every cell has the modality: no zero-filled frame to copy into
                x, lib = dense, present_lib
            else:
                x = np.zeros((len(idx), spec.n_features), dtype=np.float32)
                lib = np.ones(len(idx), dtype=np.float32)
                if dense is not None:
                    x[mask], lib[mask] = dense, present_lib
            if spec.likelihood in NONZERO_LIKELIHOODS:
                if nonzeros is None:  # dense source, or no cell of the batch has the modality
                    nonzeros = np.stack(np.nonzero(x)).astype(np.int64)
                out.nz[name] = torch.from_numpy(nonzeros)
            out.x[name] = torch.from_numpy(x)
            out.mask[name] = torch.from_numpy(mask)
            out.n_present[name] = int(mask.sum())
            out.lib[name] = torch.from_numpy(lib).clamp_min(1.0).unsqueeze(1)
        return out


def _rows(mdata: md.MuData, name: str) -> np.ndarray:
    """Each cell's row in modality ``name`` (-1: absent), from mdata's map of cells, checked against the
    modality's own cell names: a modality replaced, reordered or filtered without ``mdata.update()`` would be
    paired with the wrong cells."""
    if name not in mdata.obsmap:
        return np.arange(mdata.n_obs)
    rows = np.asarray(mdata.obsmap[name]).astype(np.int64) - 1  # mudata stores 1-based, 0 = absent
    own = np.asarray(mdata.mod[name].obs_names)
    present = rows >= 0
    if (
        len(rows) != mdata.n_obs
        or rows.max(initial=-1) >= len(own)
        or (own[rows[present]] != np.asarray(mdata.obs_names)[present]).any()
    ):
        raise VennCellInputError(
            f"Modality '{name}': its cells no longer match the MuData's map of cells (mdata.obsmap['{name}']): it "
            "was replaced, reordered or filtered after the MuData was built. Call `mdata.update()` (and set the "
            "data up again if it was set up before) so that each cell is paired with its own rows."
        )
    return rows


def _csr_rows(x: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a canonical CSR matrix densified (float32), and their non-zeros' (row among ``rows``, column), 2 x nnz.
    Explicit zeros may be listed (every term they enter is 0).

    The same as ``x[rows].toarray()`` and its non-zeros, straight from ``indptr`` / ``indices`` / ``data``:
    scipy's fancy row indexing builds an intermediate matrix and validates it, most of the cost of a batch.
    ``get`` relies on scipy's cached ``has_canonical_format``: the matrices of a ``MultiModalData`` are never edited
    in place."""
    starts = x.indptr[rows].astype(np.int64)
    counts = x.indptr[rows + 1] - starts
    batch_row = np.repeat(np.arange(len(rows), dtype=np.int64), counts)
    # position of every listed entry in indices / data: its row's start plus its rank within the row
    pos = np.arange(len(batch_row), dtype=np.int64) + np.repeat(
        starts - (np.cumsum(counts) - counts), counts
    )
    cols = x.indices[pos].astype(np.int64)
    dense = np.zeros(len(rows) * x.shape[1], dtype=np.float32)
    dense[batch_row * x.shape[1] + cols] = x.data[
        pos
    ]  # one flat index: cheaper than a 2-D fancy assignment
    return dense.reshape(len(rows), x.shape[1]), np.stack([batch_row, cols])


class _BatchFetcher(torch.utils.data.Dataset):
    def __init__(self, data: MultiModalData, split: np.ndarray | None = None):
        self.data = data
        self.split = split

    def __len__(self):
        return self.data.n_cells

    def __getitem__(self, idx):
        if self.split is None:
            return self.data.get(idx)
        return split_batch(self.data.get, idx, self.split)


def split_batch(get, idx: np.ndarray, split: np.ndarray) -> tuple[Batch | None, Batch | None]:
    """``idx``'s cells as two batches, those with ``split`` True and the others (None where there are none), each
    in ``idx``'s order. Stage 1 fits training and held-out cells differently; splitting where the indices are on
    the host spares the training step a boolean mask of the batch (and the host syncs that reading it costs)."""
    return tuple(get(cells) if len(cells) else None for cells in split_cells(idx, split))


def split_cells(idx: np.ndarray, split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``idx``'s cells with ``split`` True, then the others, each in ``idx``'s order."""
    idx = np.asarray(idx)
    inside = split[idx]
    return idx[inside], idx[~inside]


def make_loader(
    data: MultiModalData,
    indices,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    split: np.ndarray | None = None,
):
    """A DataLoader of ``Batch`` objects over ``indices``: chunk-wise for backed data, so reads stay contiguous."""
    return batch_loader(
        data,
        cell_batches(data, indices, batch_size, shuffle, seed),
        num_workers,
        pin_memory,
        split,
    )


def cell_batches(
    data: MultiModalData,
    indices,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    split: np.ndarray | None = None,
):
    """The sampler of ``make_loader``: chunk-wise for backed data. With ``split`` (stage 1's training cells), each
    in-memory batch holds cells of one side only (``SplitCellBatches``); backed data keep chunk-wise batches, whose
    reads stay contiguous, and split each batch in two instead (``split_batch``)."""
    if data.chunk_size:
        return ChunkedCellBatches(indices, batch_size, shuffle, seed, data.chunk_size)
    if split is not None:
        return SplitCellBatches(indices, split, batch_size, shuffle, seed)
    return CellBatches(indices, batch_size, shuffle, seed)


def batch_loader(
    data: MultiModalData,
    sampler,
    num_workers: int = 0,
    pin_memory: bool = False,
    split: np.ndarray | None = None,
):
    """The DataLoader over a batch sampler (each item one batch of cell indices).

    ``num_workers > 0`` assembles batches in worker processes, overlapping the CPU work of densifying rows with the
    training step; the sampler stays in this process, so the batches and their order are the same for any number of
    workers. On Linux the workers are forked, so they share the in-memory matrices instead of a pickled copy each.
    ``split`` (one boolean per cell): each item is a pair of batches instead (``split_batch``).
    """
    extra = {}
    if num_workers:
        extra = {"persistent_workers": True, "prefetch_factor": 4}
        if sys.platform.startswith("linux"):
            extra["multiprocessing_context"] = "fork"
    return torch.utils.data.DataLoader(
        _BatchFetcher(data, split),
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=_identity,
        # each pass draws a seed for its workers; from a generator of its own, not the caller's global one (the
        # batches come from the sampler's seed, and the workers draw nothing)
        generator=torch.Generator(),
        **extra,
    )


def _identity(batch: Batch) -> Batch:
    return batch
