"""Out-of-core training: read each modality's rows from the .h5mu on disk, one contiguous chunk at a time.

A backed ``MultiModalData`` keeps a ``BackedMatrix`` per modality instead of an in-memory CSR. Rows are
read in aligned blocks of ``chunk_size`` rows and the last two blocks are cached, so a sampler that walks
the cells chunk by chunk (``ChunkedCellBatches``) reads every block once per epoch, sequentially within the
block, instead of one random row per cell. Library sizes, feature statistics and input validation are
computed in one streaming pass over the blocks; nothing of size cells x features is ever held in memory.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import anndata as ad
import h5py
import numpy as np
import scipy.sparse as sp

from venncell.data.samplers import DEFAULT_CHUNK_SIZE
from venncell.data.spec import BINARY_LIKELIHOODS, COUNT_LIKELIHOODS, ModalitySpec
from venncell.data.validate import VennCellInputError, check_matrix, column_range

log = logging.getLogger(__name__)
_PASS_ROWS = 16_384  # rows per read in the streaming statistics pass (bigger = fewer, longer sequential reads)


def _sparse_dataset(group):
    # anndata moved this helper between releases; both spellings read a CSR/CSC group lazily
    fn = getattr(getattr(ad, "io", None), "sparse_dataset", None) or ad.experimental.sparse_dataset
    return fn(group)


def backed_path(mdata) -> str:
    """The file behind a MuData opened with ``mudata.read_h5mu(path, backed=True)``."""
    path = getattr(mdata, "filename", None)
    if not getattr(mdata, "isbacked", False) or not path:
        raise VennCellInputError(
            "backed=True needs a MuData opened from disk in backed mode: "
            "`mudata.read_h5mu(path, backed=True)` (or pass the .h5mu path itself)."
        )
    return str(path)


def head_rows(x, n: int = 5000):
    """The first ``n`` rows of a backed matrix (for guessing a likelihood) without reading the rest."""
    if sp.issparse(x) or isinstance(x, np.ndarray):
        return x
    return x[: min(n, x.shape[0])]


class BackedMatrix:
    """Rows of one modality's matrix, read from disk in aligned, cached blocks of ``chunk_size`` rows.

    ``m[rows]`` returns a float32 CSR (sparse on disk) or ndarray (dense on disk) in the order of ``rows``.
    ``reads`` records every ``(start, stop)`` read from disk, so tests can check that reads are contiguous.
    """

    def __init__(
        self,
        path: str,
        key: str,
        name: str,
        binarize: bool,
        cols: np.ndarray | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        cache_blocks: int = 2,
    ):
        self.path, self.key, self.name, self.binarize, self.cols = path, key, name, binarize, cols
        self.scale = None  # Gaussian modalities: per-feature divisor (ModalitySpec.data_scale)
        self.chunk_size = int(chunk_size)
        self.cache_blocks = cache_blocks
        self._file = None
        self._ds = None
        self._cache: OrderedDict[int, sp.csr_matrix | np.ndarray] = OrderedDict()
        self.reads: list[tuple[int, int]] = []
        ds = self._dataset()
        self.shape = (ds.shape[0], ds.shape[1] if cols is None else len(cols))
        self.sparse = not isinstance(ds, h5py.Dataset)

    # h5py handles are not picklable and must not cross a fork: open lazily, drop on pickling
    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_file=None, _ds=None, _cache=OrderedDict())
        return state

    def _dataset(self):
        if self._ds is None:
            self._file = h5py.File(self.path, "r")
            if self.key not in self._file:
                raise VennCellInputError(
                    f"Modality '{self.name}': '{self.key}' is not in {self.path}."
                )
            node = self._file[self.key]
            if isinstance(node, h5py.Dataset):
                self._ds = node
            else:
                enc = node.attrs.get("encoding-type", "")
                if enc not in ("csr_matrix", "csc_matrix"):
                    raise VennCellInputError(
                        f"Modality '{self.name}': '{self.key}' has encoding '{enc}'; "
                        "backed training reads dense arrays or CSR matrices."
                    )
                if enc == "csc_matrix":
                    where = _matrix_expression(self.name, self.key)
                    raise VennCellInputError(
                        f"Modality '{self.name}' is stored column-wise (CSC) in {self.path} ('{self.key}'): reading "
                        f"cells would touch the whole matrix. Rewrite it as CSR (`{where} = {where}.tocsr(); "
                        "mdata.write(path)`)."
                    )
                self._ds = _sparse_dataset(node)
        return self._ds

    def read(self, start: int, stop: int, binarize: bool = True):
        """Rows [start, stop) straight from disk, aligned to the registered features, float32, binarised
        when the modality is (``binarize=False`` gives the raw values, for validation)."""
        self.reads.append((int(start), int(stop)))
        x = self._dataset()[start:stop]
        if self.cols is not None:
            x = x[:, self.cols]
        if sp.issparse(x):
            x = sp.csr_matrix(x, dtype=np.float32)
            if self.binarize and binarize:
                x.data = (x.data > 0).astype(np.float32)
                x.eliminate_zeros()
        else:
            x = np.asarray(x, dtype=np.float32)
            if self.binarize and binarize:
                x = (x > 0).astype(np.float32)
        if self.scale is not None and binarize:  # raw reads (validation) keep the stored values
            from venncell.data.transforms import scale_columns

            x = scale_columns(x, self.scale)
        return x

    def _block(self, b: int):
        if b in self._cache:
            self._cache.move_to_end(b)
            return self._cache[b]
        start = b * self.chunk_size
        block = self.read(start, min(self.shape[0], start + self.chunk_size))
        self._cache[b] = block
        while len(self._cache) > self.cache_blocks:
            self._cache.popitem(last=False)
        return block

    def __getitem__(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        blocks = srt // self.chunk_size
        cuts = np.flatnonzero(np.diff(blocks)) + 1
        parts = []
        for seg in np.split(np.arange(len(srt)), cuts):
            if len(seg):
                b = int(blocks[seg[0]])
                parts.append(self._block(b)[srt[seg] - b * self.chunk_size])
        out = sp.vstack(parts, format="csr") if self.sparse else np.concatenate(parts)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return out[inverse]

    def iter_pass(self, rows: int = _PASS_ROWS):
        """(start, raw block) over the whole matrix, each read once and not cached."""
        for start in range(0, self.shape[0], rows):
            yield start, self.read(start, min(self.shape[0], start + rows), binarize=False)


def _matrix_key(spec: ModalitySpec) -> str:
    return f"mod/{spec.name}/" + ("X" if spec.layer is None else f"layers/{spec.layer}")


def open_backed(
    spec: ModalitySpec, path: str, cols: np.ndarray | None, chunk_size: int
) -> BackedMatrix:
    """A modality's rows on disk, aligned to ``cols`` of the stored matrix (None = every column)."""
    m = BackedMatrix(path, _matrix_key(spec), spec.name, spec.binarize, cols, chunk_size)
    m.scale = spec.data_scale
    return m


def fit_backed_spec(
    spec: ModalitySpec, mdata, var_names: list[str], chunk_size: int | None
) -> ModalitySpec:
    """The spec of a backed modality from one streaming, validating pass over its rows: zero-variance features,
    ``standardise`` statistics (from streamed float64 sums, matching the in-memory mean/std to rounding) and the
    median library size. Nothing of size cells x features is held in memory."""
    from venncell.data.registry import drop_zero_variance

    path = backed_path(mdata)
    if spec.transform is not None:
        raise VennCellInputError(
            f"Modality '{spec.name}': transform={spec.transform!r} is not supported for backed "
            "data; load the MuData into memory or drop the transform."
        )
    m = open_backed(spec, path, None, chunk_size or DEFAULT_CHUNK_SIZE)
    n, p = m.shape
    library = np.empty(n, dtype=np.float32)
    s1, s2 = np.zeros(p), np.zeros(p)
    lo, hi = (
        np.full(p, np.inf),
        np.full(p, -np.inf),
    )  # column ranges: constant columns, as check_matrix finds them
    n_empty = 0
    for start, x in m.iter_pass():
        stop = start + x.shape[0]
        try:
            # the checks that need all cells at once (zero variance, all-zero cells) are done below
            check_matrix(
                spec.name,
                x,
                spec.likelihood,
                var_names,
                spec.binarize,
                zero_variance="keep",
                layer=spec.layer,
            )
        except VennCellInputError as e:
            if "all-zero" not in str(e):
                raise VennCellInputError(
                    f"{e} (found in rows {start}-{stop - 1} of the backed file {path})"
                ) from None
        x_lo, x_hi = column_range(x)  # raw values, as check_matrix sees them
        lo, hi = np.minimum(lo, x_lo), np.maximum(hi, x_hi)
        if spec.binarize:
            x = (x > 0).astype(np.float32)
        library[start:stop] = np.asarray(x.sum(1)).ravel()
        n_empty += int((library[start:stop] == 0).sum())
        s1 += np.asarray(x.sum(0), dtype=np.float64).ravel()
        s2 += np.asarray(
            (x.multiply(x) if sp.issparse(x) else x * x).sum(0), dtype=np.float64
        ).ravel()
    if spec.likelihood in (*COUNT_LIKELIHOODS, *BINARY_LIKELIHOODS) and n_empty:
        if n_empty == n:
            raise VennCellInputError(
                f"Modality '{spec.name}': every cell is all-zero; there is nothing to learn from."
            )
        if spec.likelihood in COUNT_LIKELIHOODS:
            raise VennCellInputError(
                f"Modality '{spec.name}': {n_empty} cell(s) are all-zero (first: row {int(np.argmax(library == 0))}), "
                "so their library size is 0 and the count likelihood is undefined. Filter them "
                "(e.g. `sc.pp.filter_cells(adata, min_counts=1)`), or keep the cells without this modality: drop them "
                f"from it only (`keep = np.asarray(mdata['{spec.name}'].X.sum(1)).ravel() > 0`, `mdata.mod['{spec.name}'] = "
                f"mdata['{spec.name}'][keep].copy()`, `mdata.update()`; they then use their other modalities)."
            )
    mean = s1 / n
    var = np.maximum(s2 / n - mean**2, 0.0)
    const = np.flatnonzero(lo == hi) if n > 1 else np.array([], dtype=np.int64)
    spec = drop_zero_variance(spec, const, var_names)
    if spec.dropped_features:
        keep = np.setdiff1d(np.arange(p), const)
        # a constant column adds its value to every cell's library; without it the library is what the in-memory
        # reader computes after dropping the column
        library -= np.float32((lo[const] > 0 if spec.binarize else lo[const]).sum())
        mean, var = mean[keep], var[keep]
    if spec.likelihood == "gaussian":  # unit-scale data, as in memory (ModalitySpec.data_scale)
        sd = np.sqrt(var)
        scale = np.where(sd > 0, sd, 1.0)
        spec.data_scale = scale.tolist()
        mean, var = mean / scale, var / scale**2
    if spec.encoder_transform == "standardise":
        spec.feature_mean, spec.feature_std = mean.tolist(), (np.sqrt(var) + 1e-6).tolist()
    spec.median_library = float(np.median(library))
    return spec


def _matrix_expression(name: str, key: str) -> str:
    """The Python expression of the matrix at ``key`` in an .h5mu file (``mod/<m>/X``, ``mod/<m>/layers/<l>``)."""
    parts = key.strip("/").split("/")
    if parts[-2:-1] == ["layers"]:
        return f"mdata['{name}'].layers['{parts[-1]}']"
    return f"mdata['{name}'].X"
