"""Lightning training plans: what is optimised in each stage. The model maths lives in ``VennModule``."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from venncell.model.venn import VennModule


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf; the message names the term and the last good checkpoint."""


def subset_batch(batch: dict, keep: torch.Tensor) -> dict:
    return {k: v[keep] for k, v in batch.items()}


def _step_seed(seed: int, stage: int, step: int) -> int:
    # Reseeding from (seed, stage, step) makes noise identical whether or not the run was resumed.
    return (seed * 1_000_003 + stage * 10_007 + step) % (2**63 - 1)


class _Plan(L.LightningModule):
    stage = 0

    def __init__(self, module: VennModule, seed: int = 0):
        super().__init__()
        self.module = module
        self.seed = seed

    def on_train_batch_start(self, batch, batch_idx):
        torch.manual_seed(_step_seed(self.seed, self.stage, self.global_step))

    def _check_finite(self, terms: dict[str, torch.Tensor], where: str) -> None:
        bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
        if not bad:
            return
        culprit = [k for k in bad if k != "loss"] or bad
        saver = self.trainer.checkpoint_callback if self._trainer is not None else None
        ckpt = (saver.last_model_path if saver is not None else "") or "none saved yet"
        raise NonFiniteLossError(
            f"Stage {self.stage} {where} loss became non-finite at step {self.global_step} in term(s) "
            f"{culprit} (the part after '/' is the modality). Last good checkpoint: {ckpt}. Usual fixes: lower "
            "the learning rates, check that modality's data for extreme values, or raise latent_l2."
        )

    def _log_terms(self, terms: dict, prefix: str, batch_size: int, on_step: bool) -> None:
        for k, v in terms.items():
            self.log(f"{prefix}/{k}", v.detach(), on_step=on_step, on_epoch=True, batch_size=batch_size,
                     prog_bar=(k == "loss"))

    def on_save_checkpoint(self, checkpoint):
        checkpoint["venncell_stage"] = self.stage


class Stage1Plan(_Plan):
    """Latent optimisation: decoders (+ consistency encoders) and per-cell latents, jointly.

    Held-out cells are in the same latent table; their latents are fitted in the same steps but their
    loss never reaches the networks, so their reconstruction is an honest held-out score for stage 1
    and their latents are honest targets for judging stage-2 encoders.
    """

    stage = 1

    def __init__(self, module: VennModule, is_train: np.ndarray, lr_network: float = 1e-3,
                 lr_latent: float = 1e-2, grad_clip: float = 10.0, seed: int = 0):
        super().__init__(module, seed)
        self.automatic_optimization = False
        self.register_buffer("is_train", torch.as_tensor(is_train, dtype=torch.bool), persistent=False)
        self.lr_network = lr_network
        self.lr_latent = lr_latent
        self.grad_clip = grad_clip

    def configure_optimizers(self):
        nets = torch.optim.Adam(self.module.network_parameters(), lr=self.lr_network, foreach=True)
        # SparseAdam: only the rows of this batch's cells get moment updates (no dense O(cells) state walk).
        latents = torch.optim.SparseAdam(self.module.latent_parameters(), lr=self.lr_latent)
        return [nets, latents]

    def training_step(self, batch, batch_idx):
        opt_net, opt_lat = self.optimizers()
        train = self.is_train[batch["idx"]]
        total = torch.zeros((), device=self.device)
        if train.any():
            terms = self.module.stage1_loss(subset_batch(batch, train))
            self._check_finite(terms, "training")
            self._log_terms(terms, "stage1/train", int(train.sum()), on_step=True)
            total = total + terms["loss"] * train.float().mean()
        if (~train).any():
            with self.module.networks_frozen():
                terms_v = self.module.stage1_loss(subset_batch(batch, ~train))
            self._check_finite(terms_v, "held-out")
            self._log_terms(terms_v, "stage1/val", int((~train).sum()), on_step=False)
            total = total + terms_v["loss"] * (~train).float().mean()
        opt_net.zero_grad()
        opt_lat.zero_grad()
        self.manual_backward(total)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.module.network_parameters(), self.grad_clip)
        opt_net.step()
        opt_lat.step()
        return total.detach()


class Stage2Plan(_Plan):
    """Encoders regress the frozen stage-1 latents; judged on held-out cells."""

    stage = 2

    def __init__(self, module: VennModule, lr: float = 1e-3, weight_decay: float = 1e-5, seed: int = 0):
        super().__init__(module, seed)
        self.lr = lr
        self.weight_decay = weight_decay

    def on_fit_start(self):
        enc = {id(p) for p in self.module.encoders.parameters()}
        for p in self.module.parameters():
            p.requires_grad_(id(p) in enc)

    def on_fit_end(self):
        for p in self.module.parameters():
            p.requires_grad_(True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.module.encoders.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def training_step(self, batch, batch_idx):
        terms = self.module.stage2_loss(batch)
        self._check_finite(terms, "training")
        self._log_terms(terms, "stage2/train", len(batch["idx"]), on_step=True)
        return terms["loss"]

    def validation_step(self, batch, batch_idx):
        terms = self.module.stage2_loss(batch)
        self._log_terms(terms, "stage2/val", len(batch["idx"]), on_step=False)
