"""Latents of cells as numpy arrays: what the model returns to users and what analyses probe."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from venncell.data.dataset import Batch, MultiModalData, make_loader
from venncell.module.regions import block_key
from venncell.module.venn import VennModule


@torch.no_grad()
def embed_cells(
    module: VennModule,
    data: MultiModalData,
    cells: np.ndarray | None = None,
    modalities: list[str] | None = None,
    batch_size: int = 2048,
    edit: Callable[[Batch], None] | None = None,
) -> dict[str, np.ndarray]:
    """Encoder latents of ``cells`` (default: all) of ``data``: ``shared`` and ``private:<m>`` (NaN where a cell
    lacks the data).

    Parameters
    ----------
    module
        A trained module.
    data
        The cells' data.
    cells
        Which cells, in order.
    modalities
        The modalities whose encoders give the shared block (default: every one a cell has).
    batch_size
        Cells per forward pass.
    edit
        Applied to each batch before encoding (e.g. to hide one feature from the encoders).
    """
    module.eval()
    cells = np.arange(data.n_cells) if cells is None else np.asarray(cells)
    chunks: dict[str, list] = {}
    for batch in make_loader(data, cells, batch_size, shuffle=False):
        if edit is not None:
            edit(batch)
        for k, v in module.embed(batch, modalities).items():
            chunks.setdefault(k, []).append(v.cpu().numpy())
    if not chunks:  # no cells: empty blocks of the right widths
        return {
            "shared": np.zeros((0, module.cfg.shared_dim), np.float32),
            **{
                f"private:{m}": np.zeros((0, d), np.float32)
                for m, d in module.private_dims.items()
            },
            **{block_key(r): np.zeros((0, d), np.float32) for r, d in module.region_dims.items()},
        }
    return {k: np.concatenate(v) for k, v in chunks.items()}


def stage1_latents(module: VennModule, data: MultiModalData) -> dict[str, np.ndarray]:
    """The optimised per-cell latents of the training cells (means of q when variational); NaN in a private block
    where the cell lacks that modality."""
    out = {"shared": module.shared_table.weight.detach().cpu().numpy().copy()}
    for m, t in module.private_tables.items():
        z = t.weight.detach().cpu().numpy().copy()
        z[~data.present(m)] = np.nan
        out[f"private:{m}"] = z
    for r, t in module.region_tables.items():
        z = t.weight.detach().cpu().numpy().copy()
        z[~np.logical_or.reduce([data.present(m) for m in module.regions[r]])] = np.nan
        out[block_key(r)] = z
    return out


def average_latents(
    stage1: dict[str, np.ndarray], encoder: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The mean of the stage-1 and the encoder latents, block by block: the training cells' default latents."""
    return {k: 0.5 * (v + encoder[k]) for k, v in stage1.items()}


def obsm_names(module: VennModule) -> dict[str, str]:
    """Each latent block's ``.obsm`` key: ``X_venn_shared``, ``X_venn_shared_<region>``, ``X_venn_private_<m>``."""
    out = {"shared": "X_venn_shared"}
    out.update({block_key(r): f"X_venn_shared_{r}" for r in module.regions})
    out.update({f"private:{m}": f"X_venn_private_{m}" for m in module.modalities})
    return out


def pick_block(
    latents: dict[str, np.ndarray],
    block: str,
    modalities: list[str],
    regions: list[str] = (),
) -> np.ndarray:
    """One block of ``embed_cells``' output: ``shared``, ``shared:<region>``, ``private:<m>`` or ``all`` (shared,
    the regions, then every private)."""
    names = ["shared", *(block_key(r) for r in regions), *(f"private:{m}" for m in modalities)]
    if block == "all":
        return np.hstack([latents[k] for k in names])
    if block in names and block in latents:
        return latents[block]
    from venncell.data.validate import VennCellInputError

    raise VennCellInputError(f"block must be 'all' or one of {names}; got {block!r}.")


def min_variance_weights(gram: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """Weights on the simplex that minimise ``w' gram w``: the least-error average of estimates whose errors have
    second moments ``gram`` (correlated errors included). Solved exactly over the supports (a few modalities);
    ``floor`` keeps every member in, so that a cell measured only in a down-weighted modality still gets a block.
    """
    k = len(gram)
    best, best_val = np.full(k, 1.0 / k), np.inf
    for support in range(1, 2**k):
        idx = [i for i in range(k) if support >> i & 1]
        try:
            w_s = np.linalg.solve(gram[np.ix_(idx, idx)], np.ones(len(idx)))
        except np.linalg.LinAlgError:
            continue
        if w_s.sum() <= 0 or (w_s < 0).any():
            continue
        w = np.zeros(k)
        w[idx] = w_s / w_s.sum()
        if (val := float(w @ gram @ w)) < best_val:
            best, best_val = w, val
    return (1 - floor * k) * best + floor if k > 1 else best


@torch.no_grad()
def fit_mix_weights(
    module: VennModule,
    data: MultiModalData,
    cells: np.ndarray,
    max_cells: int = 20_000,
    seed: int = 0,
) -> np.ndarray:
    """Set ``module.mix_weights``: for the shared block and each region, the average of its members' encoder
    estimates that best reproduces the stage-1 latents of ``cells`` measured in every member (the training cells:
    the weights describe how well each encoder learnt the latents it was trained on; new cells get the same ones).

    Where one modality's encoder reproduces the shared latents much better than another's (sci-CAR's RNA against
    its sparse ATAC), an equal mean pulls every cell towards the worse estimate; the minimum-variance weights
    (``min_variance_weights`` on the errors' second moments) do not. Blocks with fewer than 50 such cells keep
    equal weights. At most ``max_cells`` cells (a fixed-seed subsample) are read. Returns the weights.
    """
    module.eval()
    cells = np.asarray(cells)
    if len(cells) > max_cells:
        cells = np.sort(np.random.default_rng(seed).choice(cells, max_cells, replace=False))
    blocks = module.mix_blocks()
    mods = module.modalities
    gram = {b: np.zeros((len(mods), len(mods))) for b in blocks}
    n = dict.fromkeys(blocks, 0)
    device = module.shared_table.weight.device
    for batch in make_loader(data, cells, 2048, shuffle=False):
        batch = batch.to(device)
        z_s, _ = module.latents(batch.idx)
        targets = {"shared": z_s, **module.region_latents(batch.idx)}
        est = {b: {} for b in blocks}
        for m in mods:
            s_hat, _, r_hat = module.encode_regions(m, batch)
            est["shared"][m] = s_hat
            for r, z in r_hat.items():
                est[r][m] = z
        for b in blocks:
            members = module.block_members(b)
            every = torch.stack([batch.mask[m] for m in members]).all(0)
            if not bool(every.any()):
                continue
            # members x cells x dims
            err = torch.stack([(est[b][m] - targets[b])[every] for m in members])
            g = torch.einsum("icd,jcd->ij", err, err).double().cpu().numpy()
            ix = [mods.index(m) for m in members]
            gram[b][np.ix_(ix, ix)] += g
            n[b] += int(every.sum())
    weights = module.equal_mix_weights().numpy()
    for i, b in enumerate(blocks):
        if n[b] >= 50:
            ix = [mods.index(m) for m in module.block_members(b)]
            weights[i, ix] = min_variance_weights(gram[b][np.ix_(ix, ix)] / n[b])
    module.mix_weights.copy_(torch.as_tensor(weights, dtype=torch.float32))
    return weights
