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
