"""The Venn model as a pure ``torch.nn.Module``: latent tables, decoders, encoders and their losses.

Lightning plans (``venncell.train``) decide what is optimised when; this module only computes.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from venncell.data.dataset import encoder_transform
from venncell.data.spec import ModalitySpec
from venncell.model.penalties import centred_rbf_gram, normalised_hsic, unexplained_fraction
from venncell.nn import MLP, make_likelihood


@dataclass
class VennConfig:
    """Architecture and objective. ``apollo`` preset = consistency_weight = independence_weight = 0."""

    shared_dim: int = 8
    private_dim: int = 4
    hidden: int = 128
    n_layers: int = 2
    encoder_hidden: int = 256
    dropout: float = 0.0
    # Dropout in the (non-image) encoders only, on top of ``dropout``. Stage 2 regresses every training cell's own
    # latent, which a wide encoder (thousands of genes in) can memorise: on PBMC the RNA encoder reproduces its
    # training cells' shared latents with R^2 0.998 and held-out cells' with 0.75-0.80; 0.5 gives 0.945 / 0.866
    # (experiments/pbmc10k_cite/RESULTS.md, encoder R^2 table).
    encoder_dropout: float = 0.0
    # Stage 2 also trains one encoder over all modalities together (their encoder inputs side by side), used for
    # cells measured in every modality; cells with fewer, or a ``modalities`` subset, use the per-modality encoders
    # (whose shared estimates are averaged). On PBMC the average let the 14-protein encoder pull the fine cell types
    # apart less well than the RNA encoder alone; the joint encoder matched the RNA encoder's label accuracy
    # (experiments/pbmc10k_cite/RESULTS.md). It sees every modality at once, so nothing stops its shared block from
    # taking up private signal: watch the leakage scores. Tabular modalities only (no image modality).
    joint_encoder: bool = False
    latent_noise: float = 0.1
    latent_init_std: float = 1.0
    latent_init: str = "spectral"  # spectral (see venncell.model.init) | random
    latent_l2: float = 1e-3
    # "point": one latent per cell, blurred by the fixed ``latent_noise`` and pulled to 0 by ``latent_l2``.
    # "variational": a mean and a log-variance per cell (Gaussian q), latents sampled from q and kl_weight x
    # KL(q || N(0, I)) in place of the noise and the L2. Each cell learns how far its latent may move without
    # changing its reconstruction, so cells the data pin down stay sharp and the rest stay near the prior; on PBMC
    # (experiments/pbmc10k_cite) this is what lifts cell-type structure beyond the linear start. kl_weight = 1 is
    # the ELBO when each modality's weight is its number of features; with weights n_m / c, use 1 / c.
    latent_posterior: str = "point"
    kl_weight: float = 1.0
    latent_init_logvar: float = -2.0  # q's starting log-variance (sd ~0.37 against latents of unit scale)
    shared_only_weight: float = 1.0
    # True: the shared-only decoders learn from the shared latent but do not shape it (VennCell). Nothing in
    # stage 1 then depends on them, so they are fitted in stage 2, to the final shared latents, beside the
    # encoders (one decoder pass per modality less per stage-1 step). False: their gradient also moves the latent, pulling every
    # modality's private signal into it (APOLLO), so they must train in stage 1.
    shared_only_detach: bool = True
    consistency_weight: float = 1.0
    # Cells per step whose consistency term is computed (0 = every cell). The RNA encoder is the costliest
    # network of a stage-1 step; a random subset estimates the same unexplained fraction more cheaply.
    consistency_cells: int = 0
    # Leakage control (consistency + independence) on every k-th stage-1 batch only, weighted k times so that the
    # objective is the same in expectation. Steps without it skip the encoders (passes and optimiser update).
    leakage_every: int = 1
    independence_weight: float = 0.1
    stage2_recon_weight: float = 0.0
    # image modalities (kind "image"): conv widths, one stride-2 stage each (venncell.nn.cnn)
    cnn_channels: tuple[int, ...] = (16, 32, 64)


class Decoder(nn.Module):
    def __init__(self, d_in: int, spec: ModalitySpec, n_batches: int, cfg: VennConfig):
        super().__init__()
        self.n_batches = n_batches
        lik = make_likelihood(spec.likelihood, spec.n_features)
        # heads such as zinb / nb_mixture read several outputs per feature (Likelihood.n_raw)
        self.net = MLP(d_in + n_batches, spec.n_features * lik.n_raw, cfg.hidden, cfg.n_layers, cfg.dropout)
        self.likelihood = lik

    def forward(self, z: torch.Tensor, batch: torch.Tensor | None) -> torch.Tensor:
        if self.n_batches:
            z = torch.cat([z, nn.functional.one_hot(batch, self.n_batches).to(z.dtype)], dim=1)
        return self.net(z)


class Encoder(nn.Module):
    """Maps one modality's preprocessed data to (shared, private) latents."""

    def __init__(self, spec: ModalitySpec, shared_dim: int, private_dim: int, cfg: VennConfig):
        super().__init__()
        self.shared_dim = shared_dim
        self.net = MLP(spec.n_features, shared_dim + private_dim, cfg.encoder_hidden, cfg.n_layers,
                       max(cfg.dropout, cfg.encoder_dropout))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        return out[:, : self.shared_dim], out[:, self.shared_dim :]


def make_decoder(d_in: int, spec: ModalitySpec, n_batches: int, cfg: VennConfig) -> nn.Module:
    """Convolutional for image modalities, MLP otherwise (same interface: ``.likelihood``, ``(z, batch)``)."""
    if spec.kind == "image":
        from venncell.nn.cnn import ImageDecoder

        return ImageDecoder(d_in, spec, n_batches, cfg)
    return Decoder(d_in, spec, n_batches, cfg)


def make_encoder(spec: ModalitySpec, shared_dim: int, private_dim: int, cfg: VennConfig) -> nn.Module:
    if spec.kind == "image":
        from venncell.nn.cnn import ImageEncoder

        return ImageEncoder(spec, shared_dim, private_dim, cfg)
    return Encoder(spec, shared_dim, private_dim, cfg)


class VennModule(nn.Module):
    """Per-cell latent tables (stage 1), per-modality decoders and encoders."""

    def __init__(self, specs: dict[str, ModalitySpec], n_cells: int, cfg: VennConfig, n_batches: int = 0):
        super().__init__()
        self.specs = specs
        self.cfg = cfg
        self.n_batches = n_batches
        self.private_dims = {m: s.private_dim or cfg.private_dim for m, s in specs.items()}
        self.shared_table = self._table(n_cells, cfg.shared_dim, cfg.latent_init_std)
        self.private_tables = nn.ModuleDict(
            {m: self._table(n_cells, d, cfg.latent_init_std) for m, d in self.private_dims.items()}
        )
        if cfg.latent_posterior == "variational":
            # log-variances, keyed "shared" / modality; latent tables too (sparse rows, RowAdam, sharded in DDP)
            self.logvar_tables = nn.ModuleDict(
                {b: self._table(n_cells, d, 0.0) for b, d in {"shared": cfg.shared_dim, **self.private_dims}.items()})
            for t in self.logvar_tables.values():
                nn.init.constant_(t.weight, cfg.latent_init_logvar)
        self.decoders = nn.ModuleDict(
            {m: make_decoder(cfg.shared_dim + self.private_dims[m], s, n_batches, cfg) for m, s in specs.items()}
        )
        self.shared_decoders = nn.ModuleDict({m: make_decoder(cfg.shared_dim, s, n_batches, cfg) for m, s in specs.items()})
        self.encoders = nn.ModuleDict(
            {m: make_encoder(s, cfg.shared_dim, self.private_dims[m], cfg) for m, s in specs.items()}
        )
        if cfg.joint_encoder:
            self.joint = MLP(sum(s.n_features for s in specs.values()),
                             cfg.shared_dim + sum(self.private_dims.values()), cfg.encoder_hidden, cfg.n_layers,
                             max(cfg.dropout, cfg.encoder_dropout))

    @staticmethod
    def _table(n_cells: int, dim: int, init_std: float) -> nn.Embedding:
        # Sparse gradients: a step touches only the batch's rows, so its cost does not grow with cells.
        table = nn.Embedding(n_cells, dim, sparse=True)
        nn.init.normal_(table.weight, std=init_std)
        return table

    @torch.no_grad()
    def set_latents(self, shared, private: dict) -> None:
        scale = self.cfg.latent_init_std
        self.shared_table.weight.copy_(torch.as_tensor(shared, dtype=torch.float32) * scale)
        for m, z in private.items():
            self.private_tables[m].weight.copy_(torch.as_tensor(z, dtype=torch.float32) * scale)

    @property
    def modalities(self) -> list[str]:
        return list(self.specs)

    @property
    def variational(self) -> bool:
        return self.cfg.latent_posterior == "variational"

    def latent_parameters(self) -> list[nn.Parameter]:
        tables = [self.shared_table.weight] + [t.weight for t in self.private_tables.values()]
        return tables + ([t.weight for t in self.logvar_tables.values()] if self.variational else [])

    def network_parameters(self) -> list[nn.Parameter]:
        latent = {id(p) for p in self.latent_parameters()}
        return [p for p in self.parameters() if id(p) not in latent]

    @contextmanager
    def networks_frozen(self):
        """Inside, losses reach the latents but not decoders/encoders (used for held-out cells)."""
        params = self.network_parameters()
        saved = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, r in zip(params, saved):
                p.requires_grad_(r)

    # ------------------------------------------------------------------ pieces
    def latents(self, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The cells' latents (the means of q when variational)."""
        return self.shared_table(idx), {m: t(idx) for m, t in self.private_tables.items()}

    def _log_variance(self, block: str, idx: torch.Tensor) -> torch.Tensor:
        # bounded so that one wild row can neither vanish (exp underflow) nor swamp its decoder with noise
        return self.logvar_tables[block](idx).clamp(-12.0, 4.0)

    def perturbed(self, block: str, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """What the decoders read in training: a sample of q (variational) or z plus the fixed latent noise."""
        if self.variational:
            return z + torch.randn_like(z) * (0.5 * self._log_variance(block, idx)).exp()
        return z + self.cfg.latent_noise * torch.randn_like(z)

    @property
    def prior_weight(self) -> float:
        return self.cfg.kl_weight if self.variational else self.cfg.latent_l2

    def prior_cost(self, block: str, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Per-cell pull of block latents to the prior, before ``prior_weight``: KL(q || N(0, I)) or |z|^2."""
        if self.variational:
            lv = self._log_variance(block, idx)
            return 0.5 * (z.pow(2) + lv.exp() - 1.0 - lv).sum(1)
        return z.pow(2).sum(1)

    def encode(self, m: str, batch: dict, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Modality m's encoder on the batch's cells, or on its ``rows`` only (None = every cell)."""
        x, lib = batch[f"x:{m}"], batch[f"lib:{m}"]
        if rows is not None:
            x, lib = x[rows], lib[rows]
        return self.encoders[m](encoder_transform(self.specs[m], x, lib))

    def fully_measured(self, batch: dict) -> torch.Tensor:
        """Indices of the batch's cells measured in every modality: those the joint encoder reads."""
        return torch.stack([batch[f"mask:{m}"] for m in self.modalities]).all(0).nonzero().squeeze(1)

    def encode_joint(self, batch: dict, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The joint encoder on the batch's ``rows`` (cells measured in every modality): (shared, {m: private})."""
        x = torch.cat([encoder_transform(self.specs[m], batch[f"x:{m}"][rows], batch[f"lib:{m}"][rows])
                       for m in self.modalities], dim=1)
        parts = self.joint(x).split([self.cfg.shared_dim, *self.private_dims.values()], dim=1)
        return parts[0], dict(zip(self.private_dims, parts[1:]))

    def nll(self, m: str, raw: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per-cell NLL, averaged over features so that modalities of different width weigh alike."""
        lik = self.decoders[m].likelihood
        return lik.cell_nll(raw, batch[f"x:{m}"], batch[f"lib:{m}"], batch.get(f"nz:{m}"))

    def decode_raw(self, m: str, z_shared, z_private, batch: dict, shared_only: bool = False):
        b = batch.get("batch")
        if shared_only:
            return self.shared_decoders[m](z_shared, b)
        return self.decoders[m](torch.cat([z_shared, z_private], dim=1), b)

    @property
    def shared_decoders_in_stage2(self) -> bool:
        """Whether stage 2 fits the shared-only decoders (they do not shape the latents; see VennConfig)."""
        return self.cfg.shared_only_weight > 0 and self.cfg.shared_only_detach

    def stage2_parameters(self) -> dict[str, list[nn.Parameter]]:
        """What stage 2 trains: the encoders and, when detached, the shared-only decoders."""
        encoders = [self.encoders] + ([self.joint] if self.cfg.joint_encoder else [])
        out = {"encoders": [p for e in encoders for p in e.parameters()]}
        if self.shared_decoders_in_stage2:
            out["shared_decoders"] = list(self.shared_decoders.parameters())
        return out

    def _shared_only_nll(self, m: str, z_shared: torch.Tensor, batch: dict, mask: torch.Tensor) -> torch.Tensor:
        """Mean NLL of modality m's shared-only decoder over the cells that have m."""
        return _masked_mean(self.nll(m, self.decode_raw(m, z_shared, None, batch, shared_only=True), batch), mask)

    # ------------------------------------------------------------------ stage 1
    def stage1_loss(self, batch: dict, noise: bool = True, leakage: float = 1.0) -> dict[str, torch.Tensor]:
        """The stage-1 objective for the batch's cells, term by term (``loss`` is the total).

        ``leakage`` multiplies both leakage-control weights; 0 leaves those terms out (``leakage_every``).
        Every returned term enters ``loss`` (the training plan's non-finite check reads ``loss`` only).

        Leakage control (the two terms the ``apollo`` preset switches off):
        - consistency: each modality's encoder must predict the shared latent from that modality alone;
          anything in the shared latent that one modality cannot see (another's private factors) costs.
        - independence: normalised HSIC between shared and each private latent; shared factors copied
          into a private block make them dependent.
        """
        cfg = self.cfg
        idx = batch["idx"]
        z_s, z_p = self.latents(idx)
        terms: dict[str, torch.Tensor] = {}
        zs_in = self.perturbed("shared", z_s, idx) if noise else z_s
        total = self.prior_weight * self.prior_cost("shared", z_s, idx).mean()
        k_shared = None
        for m in self.modalities:
            mask = batch[f"mask:{m}"]
            if not mask.any():
                continue
            w = self.specs[m].weight
            zp = z_p[m]
            zp_in = self.perturbed(m, zp, idx) if noise else zp
            raw = self.decode_raw(m, zs_in, zp_in, batch)
            rec = _masked_mean(self.nll(m, raw, batch), mask)
            terms[f"recon/{m}"] = rec
            total = total + w * rec + self.prior_weight * _masked_mean(self.prior_cost(m, zp, idx), mask)
            if cfg.shared_only_weight > 0 and not self.shared_decoders_in_stage2:
                rec_s = terms[f"recon_shared_only/{m}"] = self._shared_only_nll(m, zs_in, batch, mask)
                total = total + cfg.shared_only_weight * w * rec_s
            if leakage > 0 and cfg.consistency_weight > 0 and mask.sum() > 2:
                rows = self._consistency_rows(mask)
                pred_s, _ = self.encode(m, batch, rows)
                cons = unexplained_fraction(z_s if rows is None else z_s[rows], pred_s)
                terms[f"consistency/{m}"] = cons
                total = total + leakage * cfg.consistency_weight * cons
            if leakage > 0 and cfg.independence_weight > 0 and mask.sum() > 4:
                if mask.all():  # the shared latent's Gram is the same for every fully measured modality
                    k_shared = centred_rbf_gram(z_s) if k_shared is None else k_shared
                    dep = normalised_hsic(z_s, zp, k_shared)
                else:
                    dep = normalised_hsic(z_s[mask], zp[mask])
                terms[f"independence/{m}"] = dep
                total = total + leakage * cfg.independence_weight * dep
        terms["loss"] = total
        return terms

    def leakage_factor(self, batch_idx: int) -> float:
        """``stage1_loss``'s ``leakage`` for an epoch's ``batch_idx``-th batch under ``leakage_every``.

        Keyed on the batch's place in its epoch, so a resumed run puts the terms on the same batches.
        """
        k = self.cfg.leakage_every
        return float(k) if batch_idx % k == 0 else 0.0

    def _consistency_rows(self, mask: torch.Tensor) -> torch.Tensor | None:
        """The rows whose consistency term is computed; None = every row (spares copying the batch)."""
        k = self.cfg.consistency_cells
        if mask.all() and not (k and mask.numel() > k):
            return None
        rows = mask.nonzero().squeeze(1)
        if k and rows.numel() > k:
            rows = rows[torch.randperm(rows.numel())[:k]]
        return rows

    # ------------------------------------------------------------------ stage 2
    def stage2_loss(self, batch: dict, noise: bool = True, recon: bool = False) -> dict[str, torch.Tensor]:
        """Encoders regress the frozen stage-1 latents (scale-free), optionally plus reconstruction.

        ``loss`` is the encoders' objective; ``shared_only`` (when ``shared_decoders_in_stage2``) is the
        shared-only decoders' NLL given the frozen shared latent. The two share no parameters; they are kept
        apart so that ``loss`` means the same with or without them (it is the sweeps' default objective).
        ``recon``: also report the full decoders' NLL of the encoder latents, per modality and weighted (``recon``;
        monitors, computed anyway when ``stage2_recon_weight`` > 0). Every optimised term enters ``loss`` or ``shared_only`` (the training
        plan's non-finite check reads those two only).
        """
        cfg = self.cfg
        with torch.no_grad():
            z_s, z_p = self.latents(batch["idx"])
        terms: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=z_s.device)
        shared_only = torch.zeros((), device=z_s.device)
        recon_total = torch.zeros((), device=z_s.device)
        zs_in = self.perturbed("shared", z_s, batch["idx"]) if noise else z_s
        for m in self.modalities:
            mask = batch[f"mask:{m}"]
            if self.shared_decoders_in_stage2 and mask.any():
                rec_s = terms[f"recon_shared_only/{m}"] = self._shared_only_nll(m, zs_in, batch, mask)
                shared_only = shared_only + cfg.shared_only_weight * self.specs[m].weight * rec_s
            if not mask.any():
                continue
            s_hat, p_hat = self.encode(m, batch)
            if mask.sum() >= 2:  # a fraction of variance needs two cells
                err_s = unexplained_fraction(z_s[mask], s_hat[mask])
                err_p = unexplained_fraction(z_p[m][mask], p_hat[mask])
                terms[f"latent_shared/{m}"] = err_s
                terms[f"latent_private/{m}"] = err_p
                total = total + err_s + err_p
            if recon or cfg.stage2_recon_weight > 0:
                rec = _masked_mean(self.nll(m, self.decode_raw(m, s_hat, p_hat, batch), batch), mask)
                terms[f"recon/{m}"] = rec
                recon_total = recon_total + self.specs[m].weight * rec
                if cfg.stage2_recon_weight > 0:
                    total = total + cfg.stage2_recon_weight * rec
        rows = self.fully_measured(batch) if cfg.joint_encoder else None
        if rows is not None and rows.numel() >= 2:  # a fraction of variance needs two cells
            s_hat, p_hat = self.encode_joint(batch, rows)
            terms["latent_shared/joint"] = err = unexplained_fraction(z_s[rows], s_hat)
            total = total + err
            for m in self.modalities:
                terms[f"latent_private/joint:{m}"] = err = unexplained_fraction(z_p[m][rows], p_hat[m])
                total = total + err
        if recon:
            # the encoders' latents decoded by the frozen decoders, modalities weighted as in stage 1: on held-out
            # cells, a reconstruction score that compares models of different latent sizes (``loss`` does not: it
            # measures how well the encoders predict each model's own stage-1 latents)
            terms["recon"] = recon_total
        terms["loss"] = total
        if self.shared_decoders_in_stage2:
            terms["shared_only"] = shared_only
        return terms

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def embed(self, batch: dict, modalities: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Encoder latents: shared = mean of the available modalities' estimates; private from its own. With
        ``joint_encoder``, cells measured in every modality take both from the joint encoder (unless ``modalities``
        names a subset)."""
        use = [m for m in (modalities or self.modalities) if m in self.specs]
        n = batch["idx"].shape[0]
        shared_sum = torch.zeros(n, self.cfg.shared_dim)
        count = torch.zeros(n, 1)
        out: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            mask = batch[f"mask:{m}"]
            s_hat, p_hat = self.encode(m, batch)
            if m in use:
                shared_sum += s_hat * mask[:, None]
                count += mask[:, None].float()
            out[f"private:{m}"] = torch.where(mask[:, None], p_hat, torch.full_like(p_hat, float("nan")))
        out["shared"] = torch.where(count > 0, shared_sum / count.clamp_min(1), torch.full_like(shared_sum, float("nan")))
        rows = self.fully_measured(batch) if self.cfg.joint_encoder and set(use) == set(self.modalities) else None
        if rows is not None and rows.numel():
            s_hat, p_hat = self.encode_joint(batch, rows)
            out["shared"][rows] = s_hat
            for m in self.modalities:
                out[f"private:{m}"][rows] = p_hat[m]
        return out


def _masked_mean(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (v * mask).sum() / mask.sum().clamp_min(1)
