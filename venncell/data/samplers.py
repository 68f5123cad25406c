"""Every mini-batch sampler: which cells make up each batch, in which order.

Each order is a pure function of ``(seed, epoch)``, so a run resumed from a checkpoint sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_CHUNK_SIZE = 1024  # cells per on-disk reader chunk of backed data
_ORDER_STREAM = 0x5EED0  # tags the batch-order streams (epoch_rng)


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The random stream of an epoch's batch order.

    Tagged so it never equals ``default_rng(seed)``, the validation split's draw: numpy pads short seeds with zeros,
    so ``default_rng((seed, 0))`` *is* ``default_rng(seed)``, and epoch 0 would walk the held-out cells first.
    """
    return np.random.default_rng((seed, epoch, _ORDER_STREAM))


def chunk_groups(cells: np.ndarray, chunk_size: int) -> list[np.ndarray]:
    """Sorted cell indices split into the runs that fall in one reader chunk each."""
    return np.split(cells, np.flatnonzero(np.diff(cells // chunk_size)) + 1)


def shuffle_chunks(groups: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The chunks in random order, each with its cells in random order (reads stay within one chunk)."""
    return [groups[g][rng.permutation(len(groups[g]))] for g in rng.permutation(len(groups))]


def owned_cells(n_cells: int, rank: int, world: int, chunk_size: int | None = None) -> np.ndarray:
    """The latent-table rows that DDP rank ``rank`` owns in stage 1: a fixed strided share of all cells.

    Fixed across epochs, so exactly one rank ever updates a row and the tables never need an all-reduce.
    Strided (not contiguous) so every rank gets a similar mix of training and held-out cells. Backed data
    (``chunk_size``): strided by whole chunks of the on-disk reader, so a rank reads only its own chunks.
    """
    if chunk_size and -(-n_cells // chunk_size) >= world:
        return np.flatnonzero((np.arange(n_cells) // chunk_size) % world == rank)
    return np.arange(rank, n_cells, world)


class CellBatches(torch.utils.data.Sampler):
    """Mini-batches of cell indices, shuffled afresh each epoch.

    Parameters
    ----------
    indices
        The cells to walk.
    batch_size
        Cells per batch (the last batch may be smaller).
    shuffle
        Random order (else ``indices`` as given).
    seed
        Seed of the order; Lightning calls ``set_epoch``.
    """

    def __init__(self, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0):
        self.indices = np.asarray(indices)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        return self.indices[epoch_rng(self.seed, self.epoch).permutation(len(self.indices))]

    def __iter__(self):
        order = self.order()
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size


class SplitCellBatches(CellBatches):
    """Mini-batches that each hold only cells on one side of ``split``: stage 1's training cells, or its held-out
    cells.

    A batch that mixed both would cost two passes through the model (the held-out cells' loss must not reach the
    networks); a batch of one kind costs one, so an epoch launches about half the kernels. Each side is shuffled and
    cut into batches of ``batch_size``, and the batches of both sides are walked in one random order, so held-out
    latents are fitted all through the epoch, as they would be in mixed batches.
    """

    def __init__(
        self, indices: np.ndarray, split: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0
    ):
        super().__init__(indices, batch_size, shuffle, seed)
        inside = np.asarray(split, dtype=bool)[self.indices]
        self.sides = (self.indices[inside], self.indices[~inside])

    def batches(self) -> list[np.ndarray]:
        rng = epoch_rng(self.seed, self.epoch) if self.shuffle else None
        out = []
        for side in self.sides:
            order = side[rng.permutation(len(side))] if rng is not None else side
            out += [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        if rng is not None:
            out = [out[i] for i in rng.permutation(len(out))]
        return out

    def __iter__(self):
        yield from self.batches()

    def __len__(self) -> int:
        return sum(-(-len(side) // self.batch_size) for side in self.sides)


class ChunkedCellBatches(CellBatches):
    """Mini-batches that walk backed data chunk by chunk: disk reads stay contiguous, order stays random.

    Each epoch shuffles the order of the aligned chunks of ``chunk_size`` cell indices (the reader's blocks) and the
    cells within each chunk, then cuts the stream into batches. A batch is drawn from at most two neighbouring
    chunks, so with a two-block cache every chunk is read from disk once per epoch.
    """

    def __init__(
        self,
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ):
        super().__init__(np.sort(np.asarray(indices)), batch_size, shuffle, seed)
        self.chunk_size = int(chunk_size)

    def order(self) -> np.ndarray:
        if not self.shuffle or len(self.indices) == 0:
            return self.indices
        rng = epoch_rng(self.seed, self.epoch)
        return np.concatenate(shuffle_chunks(chunk_groups(self.indices, self.chunk_size), rng))


class RankBatches(CellBatches):
    """One DDP rank's mini-batches. Every rank yields the same number of batches (DDP ranks must take the
    same number of steps, or they wait on each other's all-reduce forever).

    ``fixed_shard=True`` (stage 1): the rank always gets the same cells (``owned_cells``), so only it updates
    their latent rows. ``False`` (stage 2): a fresh global permutation per epoch is dealt out, like
    ``DistributedSampler``. ``chunk_size`` (backed data): cells are dealt by whole reader chunks and shuffled
    chunk by chunk, as ``ChunkedCellBatches`` does in one process, so each rank's disk reads stay contiguous.
    """

    def __init__(
        self,
        indices,
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int,
        world: int,
        fixed_shard: bool,
        chunk_size: int | None = None,
    ):
        super().__init__(indices, batch_size, shuffle, seed)
        self.rank, self.world, self.fixed_shard = rank, world, fixed_shard
        chunks = np.unique(self.indices // chunk_size) if chunk_size else np.array([])
        # dealing whole chunks needs at least one chunk per rank; fewer chunks than ranks deal cells instead
        self.chunk_size = chunk_size if chunk_size and len(chunks) >= world else None
        if self.chunk_size:  # a rank's share is at most ceil(chunks / world) full chunks
            largest_share = min(len(self.indices), -(-len(chunks) // world) * self.chunk_size)
        else:
            largest_share = -(-len(self.indices) // world)
        self.n_batches = max(1, -(-largest_share // self.batch_size))

    def __iter__(self):
        rng = epoch_rng(self.seed, self.epoch)
        if self.chunk_size:
            if self.fixed_shard:
                owned = owned_cells(len(self.indices), self.rank, self.world, self.chunk_size)
                groups = chunk_groups(self.indices[owned], self.chunk_size)
            else:
                groups = chunk_groups(self.indices, self.chunk_size)
                if self.shuffle:
                    groups = [groups[g] for g in rng.permutation(len(groups))]
                groups = groups[self.rank :: self.world]
            mine = np.concatenate(shuffle_chunks(groups, rng) if self.shuffle else groups)
        elif self.fixed_shard:
            mine = self.indices[owned_cells(len(self.indices), self.rank, self.world)]
            if self.shuffle:
                mine = mine[rng.permutation(len(mine))]
        else:
            order = (
                self.indices[rng.permutation(len(self.indices))] if self.shuffle else self.indices
            )
            mine = order[self.rank :: self.world]
        # array_split, not fixed-size chunks: shares differ by one cell, batch counts must not
        yield from np.array_split(mine, self.n_batches)

    def __len__(self) -> int:
        return self.n_batches
