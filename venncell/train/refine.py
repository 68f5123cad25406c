"""Test-time refinement: fit new cells' latents against the frozen trained decoders (stage-1 style).

The encoders give a fast amortised guess; stage 1's own objective, with every network frozen, then moves each
new cell's latents to where the decoders explain that cell best. It reuses ``Stage1Plan`` (every cell is a
"held-out" cell, so its loss reaches only its own latent rows) rather than a second hand-written loop.
"""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import torch
from torch import nn

from venncell.data.dataset import MultiModalData, make_loader
from venncell.module.regions import block_key
from venncell.module.venn import VennModule
from venncell.train.plans import Stage1Plan
from venncell.train.schedule import quiet_trainer


def frozen_view(module: VennModule, n_cells: int, modalities: list[str]) -> VennModule:
    """A VennModule for ``n_cells`` new cells whose networks *are* the trained ones (shared objects, not
    copies), restricted to ``modalities`` so that only their likelihood terms drive the latents."""
    specs = {m: module.specs[m] for m in modalities}
    regions = {r: ms for r, ms in module.regions.items() if set(ms) & set(modalities)}
    view = VennModule(specs, n_cells, module.cfg, module.n_batches, regions=regions)
    view.weights = {
        m: module.weights[m] for m in modalities
    }  # the trained model's weights, not the subset's rule
    for name in ("decoders", "shared_decoders", "encoders"):
        trained = getattr(module, name)
        setattr(view, name, nn.ModuleDict({m: trained[m] for m in modalities}))
    return view


def refine_latents(
    module: VennModule,
    data: MultiModalData,
    start: dict[str, np.ndarray],
    modalities: list[str],
    epochs: int,
    batch_size: int = 256,
    lr_latent: float = 5e-2,
    seed: int = 0,
    trainer_kwargs: dict | None = None,
) -> dict[str, np.ndarray]:
    """Refined latents (same keys as ``start``: ``shared``, ``private:<m>``). Private blocks of modalities not
    in ``modalities`` are returned as given; NaN (cell lacks the data) stays NaN."""
    view = frozen_view(module, data.n_cells, modalities)
    with torch.no_grad():
        # NaN rows (no data for that block) get no loss term; 0 keeps them finite inside the table.
        view.shared_table.weight.copy_(
            torch.as_tensor(np.nan_to_num(start["shared"]), dtype=torch.float32)
        )
        for m in modalities:
            view.private_tables[m].weight.copy_(
                torch.as_tensor(np.nan_to_num(start[f"private:{m}"]), dtype=torch.float32)
            )
        for r in view.regions:
            view.region_tables[r].weight.copy_(
                torch.as_tensor(np.nan_to_num(start[block_key(r)]), dtype=torch.float32)
            )
    before = [p.detach().clone() for p in view.network_parameters()]
    L.seed_everything(seed, workers=True, verbose=False)
    plan = Stage1Plan(
        view,
        lr_network=0.0,
        lr_latent=lr_latent,
        grad_clip=0.0,
        seed=seed,
    )
    kwargs = dict(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    kwargs.update(trainer_kwargs or {})
    with warnings.catch_warnings():
        # the trained networks stay in eval mode on purpose (frozen: no dropout); Lightning warns about it
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        quiet_trainer(**kwargs).fit(
            plan,
            # every cell as held out: the networks stay frozen, only the latent rows move
            train_dataloaders=make_loader(
                data,
                np.arange(data.n_cells),
                batch_size,
                True,
                seed,
                split=np.zeros(data.n_cells, dtype=bool),
            ),
        )
    module.eval()
    after = view.network_parameters()
    if any(
        not torch.equal(a, b) for a, b in zip(before, after)
    ):  # a broken freeze would corrupt the model
        raise RuntimeError(
            "Refinement changed network weights; the trained networks must stay frozen."
        )

    out = dict(start)
    shared = view.shared_table.weight.detach().cpu().numpy().copy()
    shared[np.isnan(start["shared"]).any(1)] = np.nan
    out["shared"] = shared
    for m in modalities:
        z = view.private_tables[m].weight.detach().cpu().numpy().copy()
        z[np.isnan(start[f"private:{m}"]).any(1)] = np.nan
        out[f"private:{m}"] = z
    for r in view.regions:
        z = view.region_tables[r].weight.detach().cpu().numpy().copy()
        z[np.isnan(start[block_key(r)]).any(1)] = np.nan
        out[block_key(r)] = z
    return out


@torch.no_grad()
def reconstruction_nll(
    module: VennModule,
    data: MultiModalData,
    latents: dict[str, np.ndarray],
    modalities: list[str] | None = None,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Per-modality mean NLL (per feature, as in training) of the full decoders at the given latents, without
    latent noise: the quantity refinement lowers, for comparing encoder and refined embeddings."""
    module.eval()
    use = modalities or module.modalities
    sums = {m: 0.0 for m in use}
    counts = {m: 0 for m in use}
    for batch in make_loader(data, np.arange(data.n_cells), batch_size, shuffle=False):
        idx = batch.idx.cpu().numpy()
        zs = torch.as_tensor(latents["shared"][idx])
        for m in use:
            mask = batch.mask[m]
            if not mask.any():
                continue
            zp = torch.as_tensor(latents[f"private:{m}"][idx])
            zr = {r: torch.as_tensor(latents[block_key(r)][idx]) for r in module.regions_of[m]}
            nll = module.nll(m, module.decode_raw(m, zs, zp, batch, z_regions=zr), batch)
            sums[m] += float(nll[mask].sum())
            counts[m] += int(mask.sum())
    return {m: sums[m] / max(counts[m], 1) for m in use}
