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
from venncell.nn import ExtendedLinear
from venncell.train.plans import Stage1Plan
from venncell.train.progress import progress_bars
from venncell.train.schedule import lightning_info_off, quiet_trainer


def frozen_view(
    module: VennModule, n_cells: int, modalities: list[str], new_batches: int = 0
) -> VennModule:
    """A VennModule for ``n_cells`` new cells whose networks *are* the trained ones (shared objects, not
    copies), restricted to ``modalities`` so that only their likelihood terms drive the latents. With
    ``new_batches``, its decoders are copies that also read that many batches after the trained ones, each
    with a one-hot column of its own, the only network weight left to train (``Decoder.with_new_batches``)."""
    specs = {m: module.specs[m] for m in modalities}
    regions = {r: ms for r, ms in module.regions.items() if set(ms) & set(modalities)}
    view = VennModule(specs, n_cells, module.cfg, module.n_batches + new_batches, regions=regions)
    view.weights = {
        m: module.weights[m] for m in modalities
    }  # the trained model's weights, not the subset's rule
    for name in ("decoders", "shared_decoders", "encoders"):
        trained = getattr(module, name)
        nets = {m: trained[m] for m in modalities}
        if new_batches and name != "encoders":  # the encoders do not read the batch
            nets = {m: net.with_new_batches(new_batches) for m, net in nets.items()}
        setattr(view, name, nn.ModuleDict(nets))
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
    new_batches: int = 0,
    lr_new_batches: float = 1e-1,
) -> dict[str, np.ndarray]:
    """Refined latents (same keys as ``start``: ``shared``, ``private:<m>``). Private blocks of modalities not
    in ``modalities`` are returned as given; NaN (cell lacks the data) stays NaN.

    ``new_batches``: how many batches the cells hold that the model never saw (``data.batch`` codes them after the
    trained ones). Each one's effect on every decoder (its one-hot column) is fitted at ``lr_new_batches``, for
    ``epochs`` with the latents fixed and then for ``epochs`` with them, so that the latents are freed of it as
    the training batches' are (query mapping, as in scArches); every trained weight stays frozen.
    """
    view = frozen_view(module, data.n_cells, modalities, new_batches)
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
    # only the new batches' columns train: every other network weight (the trained ones, shared with the model)
    # is frozen for the fit and its flag restored after
    new_columns = [layer.extra for layer in view.modules() if isinstance(layer, ExtendedLinear)]
    frozen = [p for p in view.network_parameters() if not any(p is q for q in new_columns)]
    flags = [p.requires_grad for p in frozen]
    # the model's weights and the decoder copies' (each tensor once: without new batches they are the same)
    guarded = list({id(p): p for p in [*module.network_parameters(), *frozen]}.values())
    before = [p.detach().clone() for p in guarded]
    # with new batches, their columns are first fitted alone, to the encoders' latents, and then with the latents:
    # a shift common to the new batch's cells is then the batch's, not each cell's (fitted together from the start,
    # the faster-moving latents take it)
    phases = (
        [(lr_new_batches, 0.0), (lr_new_batches, lr_latent)] if new_batches else [(0.0, lr_latent)]
    )
    kwargs = dict(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        # a minute or more on large queries: the epochs are shown as training's are (bars per phase, below)
        enable_progress_bar=True,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    kwargs.update(trainer_kwargs or {})
    try:
        for p in frozen:
            p.requires_grad_(False)
        for phase, (lr_network, lr_rows) in enumerate(phases, 1):
            L.seed_everything(seed, workers=True, verbose=False)
            plan = Stage1Plan(
                view, lr_network=lr_network, lr_latent=lr_rows, grad_clip=0.0, seed=seed
            )
            plan.progress_label = (
                "Refinement" if len(phases) == 1 else f"Refinement {phase}/{len(phases)}"
            )
            with warnings.catch_warnings(), lightning_info_off():
                # the trained networks stay in eval mode on purpose (frozen: no dropout); Lightning warns about it
                warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
                # Lightning's own use of a torch API torch deprecates: nothing a user can change
                warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
                quiet_trainer(**{"callbacks": progress_bars("rich"), **kwargs}).fit(
                    plan,
                    # without new batches every cell counts as held out (only the latent rows move); with them
                    # as training cells, so that the new columns, the one network weight not frozen, learn too
                    train_dataloaders=make_loader(
                        data,
                        np.arange(data.n_cells),
                        batch_size,
                        True,
                        seed,
                        split=np.full(data.n_cells, bool(new_batches)),
                    ),
                )
    finally:
        for p, flag in zip(frozen, flags):
            p.requires_grad_(flag)
    module.eval()
    # a broken freeze would corrupt the model
    if any(not torch.equal(a, b) for a, b in zip(before, guarded)):
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
