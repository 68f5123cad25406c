"""Training batches assembled on the device: every modality held there once, no DataLoader, no per-step copies.

``ResidentCells`` moves each modality's rows (CSR arrays, or a dense matrix), library sizes, cell-to-row maps and
batch codes to the device once. ``ResidentBatches`` is the iterable the trainer reads: per epoch its sampler's order
is sent to the device in one copy, and what needs counting (cells per modality, non-zeros per batch) is counted on
the host from the same order, so a step gathers and densifies its batch with device kernels alone and never waits
for the device to answer. Batches are the same as ``MultiModalData.get`` builds (same rows, same order, same
non-zero lists), so a run gives the same numbers either way. On a CPU "the device" is host memory and the arrays
are shared with ``MultiModalData``, not copied.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from venncell.data.dataset import Batch, MultiModalData, split_cells
from venncell.data.spec import NONZERO_LIKELIHOODS

# Data may take at most this share of an accelerator's free memory; the rest is the model's and the batches'.
DEVICE_SHARE = 0.5


def _canonical_csr(x) -> sp.csr_matrix:
    x = sp.csr_matrix(x)
    if (
        not x.has_canonical_format
    ):  # each listed position once, columns sorted: the non-zero lists need it
        x = x.copy()
        x.sum_duplicates()
    return x


def resident_bytes(data: MultiModalData) -> int | None:
    """Bytes the modalities take on the device, or None where a modality cannot be held there (backed data, image
    pixels read per batch)."""
    if data.backed:
        return None
    total = 0
    for name in data.specs:
        x = data.x.get(name)
        if x is None:  # registered but absent from this MuData
            continue
        if sp.issparse(x):
            total += x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
        elif isinstance(x, np.ndarray):
            total += x.nbytes
        else:
            return None
        total += data.row[name].nbytes + data.library_sizes(name).nbytes
    return total


def fits_on(data: MultiModalData, device: torch.device) -> bool:
    """Whether ``data`` can be held on ``device``: in memory, no per-batch image reads and, on an accelerator,
    within ``DEVICE_SHARE`` of its free memory."""
    need = resident_bytes(data)
    if need is None:
        return False
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return need <= DEVICE_SHARE * free
    return True


class ResidentCells:
    """Every modality of ``data`` on ``device``, and the batches of any cells gathered there (see the module)."""

    def __init__(self, data: MultiModalData, device: torch.device | str):
        self.device = torch.device(device)
        self.specs = data.specs
        put = lambda a, dtype=None: torch.as_tensor(a, dtype=dtype).to(self.device)  # noqa: E731
        self.row = {m: np.asarray(data.row[m], dtype=np.int64) for m in self.specs}
        self._row = {m: put(r) for m, r in self.row.items()}
        self._csr: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._dense: dict[str, torch.Tensor] = {}
        self._lib: dict[str, torch.Tensor] = {}
        self.row_nnz: dict[str, np.ndarray] = {}  # non-zeros per row of a CSR modality (host)
        for m, spec in self.specs.items():
            if m not in data.x:
                continue
            x = data.x[m]
            if sp.issparse(x) or spec.likelihood in NONZERO_LIKELIHOODS:
                # a dense matrix whose head reads non-zero lists is held as CSR: its lists then come from indptr
                x = _canonical_csr(x)
                self.row_nnz[m] = np.diff(x.indptr)
                # kept in scipy's index dtype: on a CPU the arrays are shared, not copied
                self._csr[m] = (put(x.indptr), put(x.indices), put(x.data))
            else:
                self._dense[m] = put(np.asarray(x, dtype=np.float32))
            self._lib[m] = put(data.library_sizes(m))
        self.batch = None if data.batch is None else put(data.batch, torch.long)

    def host_counts(self, idx: np.ndarray) -> tuple[dict[str, int], dict[str, int]]:
        """For cells ``idx`` (host): how many have each modality, and the non-zeros of each CSR modality."""
        present, nnz = {}, {}
        for m in self.specs:
            rows = self.row[m][idx]
            has = rows >= 0
            present[m] = int(has.sum())
            if m in self.row_nnz:
                nnz[m] = int(self.row_nnz[m][rows[has]].sum())
        return present, nnz

    def gather(self, idx: torch.Tensor, present: dict[str, int], nnz: dict[str, int]) -> Batch:
        """The batch of cells ``idx`` (on the device), given their host counts (``host_counts``)."""
        n = idx.shape[0]
        out = Batch(idx)
        if self.batch is not None:
            out.batch = self.batch[idx]
        for m, spec in self.specs.items():
            rows = self._row[m][idx]
            mask = rows >= 0
            safe = rows.clamp_min(0)
            f = spec.n_features
            if present[m] == 0 or m not in self._lib:
                x = torch.zeros(n, f, device=self.device)
                lib = torch.ones(n, device=self.device)
                if spec.likelihood in NONZERO_LIKELIHOODS:
                    out.nz[m] = torch.zeros(2, 0, dtype=torch.long, device=self.device)
            elif m in self._csr:
                indptr, indices, values = self._csr[m]
                starts = indptr[safe].long()
                counts = torch.where(mask, indptr[safe + 1].long() - starts, 0)
                k = nnz[m]
                batch_row = torch.repeat_interleave(
                    torch.arange(n, device=self.device), counts, output_size=k
                )
                # position of every entry in indices / values: its row's start plus its rank within the row
                offset = starts - (torch.cumsum(counts, 0) - counts)
                pos = torch.arange(k, device=self.device) + torch.repeat_interleave(
                    offset, counts, output_size=k
                )
                cols = indices[pos].long()
                x = torch.zeros(n * f, device=self.device)
                x[batch_row * f + cols] = values[pos]
                x = x.view(n, f)
                lib = torch.where(mask, self._lib[m][safe], 1.0)
                if spec.likelihood in NONZERO_LIKELIHOODS:
                    out.nz[m] = torch.stack([batch_row, cols])
            else:
                x = self._dense[m][safe]
                if present[m] < n:
                    x = torch.where(mask.unsqueeze(1), x, 0.0)
                lib = torch.where(mask, self._lib[m][safe], 1.0)
            out.x[m] = x
            out.mask[m] = mask
            out.lib[m] = lib.clamp_min(1.0).unsqueeze(1)
            out.n_present[m] = present[m]
        return out


class ResidentBatches:
    """The trainer's batches from ``ResidentCells``: the batches ``sampler`` lists (it keeps the order and its epoch,
    which Lightning sets through ``.sampler``), or with ``split`` (one boolean per cell) a pair per batch, as
    ``venncell.data.dataset.split_batch`` gives."""

    def __init__(self, cells: ResidentCells, sampler, split: np.ndarray | None = None):
        self.cells = cells
        self.sampler = sampler
        self.split = None if split is None else np.asarray(split, dtype=bool)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        parts = []  # (offset, size, present, nnz) per batch or per half of a split batch, on the host
        order, offset = [], 0
        for b in self.sampler:
            b = np.asarray(b, dtype=np.int64)
            halves = [b] if self.split is None else split_cells(b, self.split)
            entry = []
            for h in halves:
                if len(h) == 0:
                    entry.append(None)
                    continue
                entry.append((offset, len(h), *self.cells.host_counts(h)))
                order.append(h)
                offset += len(h)
            parts.append(entry)
        if not order:
            return
        idx = torch.as_tensor(np.concatenate(order)).to(self.cells.device)  # the epoch's one copy
        for entry in parts:
            got = [
                None if e is None else self.cells.gather(idx[e[0] : e[0] + e[1]], e[2], e[3])
                for e in entry
            ]
            yield got[0] if self.split is None else tuple(got)
