"""The Venn model as a pure ``torch.nn.Module``: latent tables, decoders, encoders and their losses.

Lightning plans (``venncell.train``) decide what is optimised when; this module only computes.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from venncell.data.dataset import Batch
from venncell.data.spec import ModalitySpec
from venncell.data.transforms import encoder_transform
from venncell.module.config import ModelConfig
from venncell.module.losses import (
    CONSISTENCY,
    INDEPENDENCE,
    JOINT,
    LATENT_PRIVATE,
    LATENT_SHARED,
    PRIOR,
    RECON,
    RECON_SHARED_ONLY,
    LossOutput,
    Term,
)
from venncell.module.networks import Decoder, Encoder
from venncell.module.penalties import centred_rbf_gram, normalised_hsic, unexplained_fraction
from venncell.module.regions import block_key, region_members, region_sizes
from venncell.nn import MLP
from venncell.nn.cnn import random_dihedral


def modality_weights(specs: dict[str, ModalitySpec], rule: str) -> dict[str, float]:
    """Each modality's reconstruction weight: its registry entry's ``weight`` where given, else the config's rule
    (``equal``: 1; ``features``: its feature count over the smallest modality's)."""
    smallest = min(s.n_features for s in specs.values())
    return {
        m: float(s.weight)
        if s.weight is not None
        else (s.n_features / smallest if rule == "features" else 1.0)
        for m, s in specs.items()
    }


class VennModule(nn.Module):
    """Per-cell latent tables (stage 1), per-modality decoders and encoders; ``regions`` (default: from
    ``cfg.venn_regions``) names the blocks shared by some modalities but not all."""

    def __init__(
        self,
        specs: dict[str, ModalitySpec],
        n_cells: int,
        cfg: ModelConfig,
        n_batches: int = 0,
        regions: dict[str, tuple[str, ...]] | None = None,
    ):
        super().__init__()
        self.specs = specs
        self.cfg = cfg
        self.n_batches = n_batches
        self.weights = modality_weights(specs, cfg.modality_weights)
        self.private_dims = {m: s.private_dim or cfg.private_dim for m, s in specs.items()}
        # ``regions`` given: a view on some modalities of a trained model keeps that model's regions
        self.regions = (
            region_members(list(specs), cfg.venn_regions) if regions is None else regions
        )
        self.region_dims = region_sizes(self.regions, cfg.region_dim, cfg.region_dims or {})
        # the regions each modality's decoder reads and its encoder produces, in one fixed order
        self.regions_of = {m: [r for r, ms in self.regions.items() if m in ms] for m in specs}
        # how much each modality's estimate counts in the encoder latent of the shared block (row 0) and of each
        # region (rows 1..): its members equally until fit_mix_weights sets them from the trained encoders
        self.register_buffer("mix_weights", self.equal_mix_weights())
        self.shared_table = self._table(n_cells, cfg.shared_dim, cfg.latent_init_std)
        self.private_tables = nn.ModuleDict(
            {m: self._table(n_cells, d, cfg.latent_init_std) for m, d in self.private_dims.items()}
        )
        # small random starts, replaced by the spectral start's region directions (module.init_regions)
        self.region_tables = nn.ModuleDict(
            {r: self._table(n_cells, d, 0.1) for r, d in self.region_dims.items()}
        )
        if cfg.latent_posterior == "variational":
            # log-variances, keyed "shared" / modality / region; latent tables too (sparse rows, RowAdam, sharded)
            self.logvar_tables = nn.ModuleDict(
                {
                    b: self._table(n_cells, d, 0.0)
                    for b, d in {
                        "shared": cfg.shared_dim,
                        **self.private_dims,
                        **self.region_dims,
                    }.items()
                }
            )
            for t in self.logvar_tables.values():
                nn.init.constant_(t.weight, cfg.latent_init_logvar)
        self.decoders = nn.ModuleDict(
            {
                m: Decoder(self.shared_view_dim(m) + self.private_dims[m], s, n_batches, cfg)
                for m, s in specs.items()
            }
        )
        self.shared_decoders = nn.ModuleDict(
            {m: Decoder(cfg.shared_dim, s, n_batches, cfg) for m, s in specs.items()}
        )
        self.encoders = nn.ModuleDict(
            {
                m: Encoder(s, self.shared_view_dim(m), self.private_dims[m], cfg)
                for m, s in specs.items()
            }
        )
        # the joint encoder reads tabular features side by side; image modalities keep their own encoders only
        self.use_joint = cfg.joint_encoder and all(s.kind != "image" for s in specs.values())
        if self.use_joint:
            self.joint = MLP(
                sum(s.n_features for s in specs.values()),
                cfg.shared_dim + sum(self.private_dims.values()),
                cfg.encoder_hidden,
                cfg.n_layers,
                max(cfg.dropout, cfg.encoder_dropout),
            )

    def mix_blocks(self) -> list[str]:
        """The blocks several modalities estimate, in ``mix_weights``' row order: ``shared``, then the regions."""
        return ["shared", *self.regions]

    def block_members(self, block: str) -> list[str]:
        return self.modalities if block == "shared" else list(self.regions[block])

    def set_batch_coverage(self, coverage: dict) -> None:
        """``coverage[m]``: which batches have training cells measured in m (bool, one per batch). m's decoders
        predict a batch without any as the mean of their predictions as the others (``Decoder.expected``)."""
        for m, trained in coverage.items():
            for decoders in (self.decoders, self.shared_decoders):
                decoders[m].set_batch_coverage(torch.as_tensor(trained, dtype=torch.bool))

    def equal_mix_weights(self) -> torch.Tensor:
        """Blocks x modalities: 1 / (number of members) for a block's members, 0 elsewhere."""
        w = torch.zeros(len(self.mix_blocks()), len(self.modalities))
        for i, b in enumerate(self.mix_blocks()):
            members = self.block_members(b)
            for j, m in enumerate(self.modalities):
                w[i, j] = 1.0 / len(members) if m in members else 0.0
        return w

    def shared_view_dim(self, m: str) -> int:
        """Width of what m shares with other modalities: the shared block and m's region blocks."""
        return self.cfg.shared_dim + sum(self.region_dims[r] for r in self.regions_of[m])

    def region_mask(self, batch: Batch, region: str) -> torch.Tensor:
        """Cells of the batch that have at least one of the region's modalities."""
        return torch.stack([batch.mask[m] for m in self.regions[region]]).any(0)

    @staticmethod
    def _table(n_cells: int, dim: int, init_std: float) -> nn.Embedding:
        # Sparse gradients: a step touches only the batch's rows, so its cost does not grow with cells.
        table = nn.Embedding(n_cells, dim, sparse=True)
        nn.init.normal_(table.weight, std=init_std)
        return table

    @torch.no_grad()
    def set_latents(self, shared, private: dict, regions: dict | None = None) -> None:
        scale = self.cfg.latent_init_std
        self.shared_table.weight.copy_(torch.as_tensor(shared, dtype=torch.float32) * scale)
        for m, z in private.items():
            self.private_tables[m].weight.copy_(torch.as_tensor(z, dtype=torch.float32) * scale)
        for r, z in (regions or {}).items():
            self.region_tables[r].weight.copy_(torch.as_tensor(z, dtype=torch.float32) * scale)

    @property
    def modalities(self) -> list[str]:
        return list(self.specs)

    @property
    def variational(self) -> bool:
        return self.cfg.variational

    def latent_parameters(self) -> list[nn.Parameter]:
        tables = (
            [self.shared_table.weight]
            + [t.weight for t in self.private_tables.values()]
            + [t.weight for t in self.region_tables.values()]
        )
        return tables + (
            [t.weight for t in self.logvar_tables.values()] if self.variational else []
        )

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

    def region_latents(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The cells' region blocks (empty without regions)."""
        return {r: t(idx) for r, t in self.region_tables.items()}

    def _log_variance(self, block: str, idx: torch.Tensor) -> torch.Tensor:
        # bounded so that one wild row can neither vanish (exp underflow) nor swamp its decoder with noise
        return self.logvar_tables[block](idx).clamp(-12.0, 4.0)

    def perturbed(
        self, block: str, z: torch.Tensor, idx: torch.Tensor, lv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """What the decoders read in training: a sample of q (variational) or z plus the fixed latent noise.

        ``lv``: the rows' log-variances if already looked up (``_read_and_prior``)."""
        if self.variational:
            lv = self._log_variance(block, idx) if lv is None else lv
            return z + torch.randn_like(z) * (0.5 * lv).exp()
        return z + self.cfg.latent_noise * torch.randn_like(z)

    def _read_and_prior(
        self, block: str, z: torch.Tensor, idx: torch.Tensor, noise: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the decoders read, ``prior_cost``) of a block, its log-variance rows looked up once for both: each
        lookup is another table gather and sparse gradient, ops a host-bound GPU step pays for."""
        lv = self._log_variance(block, idx) if self.variational else None
        z_in = self.perturbed(block, z, idx, lv) if noise else z
        return z_in, self.prior_cost(block, z, idx, lv)

    @property
    def prior_weight(self) -> float:
        """The prior's weight: ``latent_l2`` (point latents) or the KL's, ``kl_weight`` over the smallest modality's
        feature count. Each reconstruction term is a mean NLL per feature, so with ``features`` weights
        ``kl_weight = 1`` makes stage 1 the ELBO over that count; with ``equal`` weights too, each modality then
        counts as if it had that many features. Without the division the same ``kl_weight`` would be hundreds of
        times stronger under ``equal`` weights and empty the latents."""
        if not self.variational:
            return self.cfg.latent_l2
        kl = self.cfg.kl_weight_for(bool(self.regions))
        return kl / min(s.n_features for s in self.specs.values())

    @property
    def private_prior_weight(self) -> float:
        """``prior_weight`` of the private blocks: times ``private_kl_scale`` with variational latents."""
        if not self.variational:
            return self.prior_weight
        return self.prior_weight * self.cfg.private_kl_scale

    def prior_cost(
        self, block: str, z: torch.Tensor, idx: torch.Tensor, lv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-cell pull of block latents to the prior, before ``prior_weight``: ``KL(q || N(0, I))`` or ``|z|^2``."""
        if self.variational:
            lv = self._log_variance(block, idx) if lv is None else lv
            return 0.5 * (z.pow(2) + lv.exp() - 1.0 - lv).sum(1)
        return z.pow(2).sum(1)

    def encode(
        self, m: str, batch: Batch, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Modality m's encoder on the batch's cells, or on its ``rows`` only (None = every cell)."""
        s_hat, p_hat, _ = self.encode_regions(m, batch, rows)
        return s_hat, p_hat

    def encode_regions(
        self, m: str, batch: Batch, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``encode`` plus m's estimates of its region blocks: (shared, private, {region: block})."""
        x, lib = batch.x[m], batch.lib[m]
        if rows is not None:
            x, lib = x[rows], lib[rows]
        view, p_hat = self.encoders[m](encoder_transform(self.specs[m], x, lib))
        widths = [self.cfg.shared_dim] + [self.region_dims[r] for r in self.regions_of[m]]
        parts = view.split(widths, dim=1)
        return parts[0], p_hat, dict(zip(self.regions_of[m], parts[1:]))

    def fully_measured(self, batch: Batch) -> torch.Tensor:
        """Indices of the batch's cells measured in every modality: those the joint encoder reads."""
        if all(
            batch.count(m) == len(batch) for m in self.modalities
        ):  # no read-back from the device
            return torch.arange(len(batch), device=batch.idx.device)
        return torch.stack([batch.mask[m] for m in self.modalities]).all(0).nonzero().squeeze(1)

    def encode_joint(
        self, batch: Batch, rows: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The joint encoder on the batch's ``rows`` (cells measured in every modality): (shared, {m: private})."""
        x = torch.cat(
            [
                encoder_transform(self.specs[m], batch.x[m][rows], batch.lib[m][rows])
                for m in self.modalities
            ],
            dim=1,
        )
        parts = self.joint(x).split([self.cfg.shared_dim, *self.private_dims.values()], dim=1)
        return parts[0], dict(zip(self.private_dims, parts[1:]))

    def nll(self, m: str, raw: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-cell NLL, averaged over features (``weights`` decide how modalities of different width add up)."""
        lik = self.decoders[m].likelihood
        return lik.cell_nll(raw, batch.x[m], batch.lib[m], batch.nz.get(m))

    def decoder_input(self, m: str, z_shared, z_private, z_regions: dict | None = None):
        """What m's full decoder reads: shared, m's region blocks (in ``regions_of`` order), private."""
        regions = [z_regions[r] for r in self.regions_of[m]]  # none: z_regions is never read
        return torch.cat([z_shared, *regions, z_private], dim=1)

    def decode_raw(
        self,
        m: str,
        z_shared,
        z_private,
        batch: Batch,
        shared_only: bool = False,
        z_regions: dict | None = None,
    ):
        b = batch.batch
        if shared_only:
            return self.shared_decoders[m](z_shared, b)
        return self.decoders[m](self.decoder_input(m, z_shared, z_private, z_regions), b)

    def augmented(self, batch: Batch) -> Batch:
        """The batch with each image modality's crops turned and mirrored at random (``cfg.image_augment``). The
        training losses read it (stage 1 also for the held-out cells, whose latents it fits); the stage-2 held-out
        score, embeddings and the mixing weights read the crops as they are."""
        images = [m for m in self.modalities if self.specs[m].kind == "image"]
        if not (self.cfg.image_augment and images):
            return batch
        x = dict(batch.x)
        # each modality draws its own turns (as measured in the harness); turning modalities cut from one crop
        # together would keep their relative orientation, untested so far
        for m in images:
            x[m] = random_dihedral(x[m], self.specs[m].image_shape)
        return replace(batch, x=x)

    @property
    def shared_decoders_in_stage2(self) -> bool:
        """Whether stage 2 fits the shared-only decoders (they do not shape the latents; see ModelConfig)."""
        return self.cfg.shared_only_weight > 0 and self.cfg.shared_only_detach

    def stage2_parameters(self) -> dict[str, list[nn.Parameter]]:
        """What stage 2 trains: the encoders and, when detached, the shared-only decoders."""
        encoders = [self.encoders] + ([self.joint] if self.use_joint else [])
        out = {"encoders": [p for e in encoders for p in e.parameters()]}
        if self.shared_decoders_in_stage2:
            out["shared_decoders"] = list(self.shared_decoders.parameters())
        return out

    def _shared_only_nll(
        self, m: str, z_shared: torch.Tensor, batch: Batch, mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean NLL of modality m's shared-only decoder over the cells that have m."""
        return _masked_mean(
            self.nll(m, self.decode_raw(m, z_shared, None, batch, shared_only=True), batch), mask
        )

    # ------------------------------------------------------------------ stage 1
    def stage1_loss(self, batch: Batch, noise: bool = True, leakage: float = 1.0) -> LossOutput:
        """The stage-1 objective for the batch's cells.

        ``leakage`` multiplies both leakage-control weights; 0 leaves those terms out (``leakage_every``).
        Leakage control (the two terms the ``apollo`` preset switches off):

        - consistency: each modality's encoder must predict the shared latent from that modality alone;
          anything in the shared latent that one modality cannot see (another's private factors) costs.
        - independence: normalised HSIC between shared and each private latent; shared factors copied
          into a private block make them dependent.
        """
        cfg = self.cfg
        if noise:
            batch = self.augmented(batch)
        idx = batch.idx
        z_s, z_p = self.latents(idx)
        terms: dict[Term, torch.Tensor] = {}
        zs_in, prior = self._read_and_prior("shared", z_s, idx, noise)
        terms[Term(PRIOR, "shared")] = prior.mean()
        total = self.prior_weight * terms[Term(PRIOR, "shared")]
        z_r = self.region_latents(idx)
        zr_in = {}
        for r, z in z_r.items():
            zr_in[r], prior = self._read_and_prior(r, z, idx, noise)
            pulled = terms[Term(PRIOR, block_key(r))] = _masked_mean(
                prior, self.region_mask(batch, r)
            )
            total = total + self.prior_weight * pulled
        k_shared = None
        for m in self.modalities:
            mask, present = batch.mask[m], batch.count(m)
            if not present:
                continue
            # every cell has m: a cell subset is the batch itself (no boolean indexing, a read-back)
            every = present == len(batch)
            w = self.weights[m]
            zp = z_p[m]
            zp_in, prior = self._read_and_prior(m, zp, idx, noise)
            raw = self.decode_raw(m, zs_in, zp_in, batch, z_regions=zr_in)
            rec = _masked_mean(self.nll(m, raw, batch), mask)
            terms[Term(RECON, m)] = rec
            pulled = terms[Term(PRIOR, m)] = _masked_mean(prior, mask)
            total = total + w * rec + self.private_prior_weight * pulled
            if cfg.shared_only_weight > 0 and not self.shared_decoders_in_stage2:
                rec_s = terms[Term(RECON_SHARED_ONLY, m)] = self._shared_only_nll(
                    m, zs_in, batch, mask
                )
                total = total + cfg.shared_only_weight * w * rec_s
            if leakage > 0 and cfg.consistency_weight > 0 and present > 2:
                rows = self._consistency_rows(mask, present)
                pred_s, _, pred_r = self.encode_regions(m, batch, rows)
                cons = unexplained_fraction(z_s if rows is None else z_s[rows], pred_s)
                terms[Term(CONSISTENCY, m)] = cons
                total = total + leakage * cfg.consistency_weight * cons
                for r, pred in pred_r.items():  # every member alone predicts the region's block
                    cons = unexplained_fraction(
                        z_r[r] if rows is None else z_r[r][rows], pred, floor=float(pred.shape[1])
                    )
                    terms[Term(CONSISTENCY, f"{block_key(r)}/{m}")] = cons
                    total = total + leakage * cfg.consistency_weight * cons
            if leakage > 0 and cfg.independence_weight > 0 and present > 4:
                if every:  # the shared latent's Gram is the same for every fully measured modality
                    k_shared = centred_rbf_gram(z_s) if k_shared is None else k_shared
                    dep = normalised_hsic(z_s, zp, k_shared)
                else:
                    dep = normalised_hsic(z_s[mask], zp[mask])
                terms[Term(INDEPENDENCE, m)] = dep
                total = total + leakage * cfg.independence_weight * dep
                # the region blocks m's decoder reads, against its other blocks
                seen = [("shared", z_s), *((block_key(r), z_r[r]) for r in self.regions_of[m])]
                seen.append((f"private:{m}", zp))
                for i, (a, za) in enumerate(seen):
                    for b, zb in seen[i + 1 :]:
                        if not (a.startswith("shared:") or b.startswith("shared:")) or (
                            Term(INDEPENDENCE, f"{a}~{b}") in terms
                        ):
                            continue  # shared vs private is the term above; a pair counts once
                        dep = normalised_hsic(_having(za, mask, every), _having(zb, mask, every))
                        terms[Term(INDEPENDENCE, f"{a}~{b}")] = dep
                        total = total + leakage * cfg.region_independence_weight * dep
        return LossOutput(total, terms)

    def leakage_factor(self, batch_idx: int) -> float:
        """``stage1_loss``'s ``leakage`` for an epoch's ``batch_idx``-th batch under ``leakage_every``.

        Keyed on the batch's place in its epoch, so a resumed run puts the terms on the same batches.
        """
        k = self.cfg.leakage_every
        return float(k) if batch_idx % k == 0 else 0.0

    def _consistency_rows(self, mask: torch.Tensor, present: int) -> torch.Tensor | None:
        """The rows whose consistency term is computed (``present`` of the batch's cells have the modality); None
        = every row (spares copying the batch)."""
        k = self.cfg.consistency_cells
        every = present == mask.numel()
        if every and not (k and present > k):
            return None
        rows = torch.arange(present, device=mask.device) if every else mask.nonzero().squeeze(1)
        if k and rows.numel() > k:
            rows = rows[torch.randperm(rows.numel(), device=rows.device)[:k]]
        return rows

    # ------------------------------------------------------------------ stage 2
    def stage2_loss(self, batch: Batch, noise: bool = True, recon: bool = False) -> LossOutput:
        """Encoders regress the frozen stage-1 latents (scale-free), optionally plus reconstruction.

        ``loss`` is the encoders' objective; ``shared_only`` (when ``shared_decoders_in_stage2``) the shared-only
        decoders' NLL given the frozen shared latent. ``recon``: also report the full decoders' NLL of the encoder
        latents (a held-out score that compares models of different latent sizes; ``loss`` does not).
        """
        cfg = self.cfg
        if noise:
            batch = self.augmented(batch)
        with torch.no_grad():
            z_s, z_p = self.latents(batch.idx)
            z_r = self.region_latents(batch.idx)
        terms: dict[Term, torch.Tensor] = {}
        total = torch.zeros((), device=z_s.device)
        shared_only = torch.zeros((), device=z_s.device)
        recon_total = torch.zeros((), device=z_s.device)
        zs_in = self.perturbed("shared", z_s, batch.idx) if noise else z_s
        for m in self.modalities:
            mask, present = batch.mask[m], batch.count(m)
            if self.shared_decoders_in_stage2 and present:
                rec_s = terms[Term(RECON_SHARED_ONLY, m)] = self._shared_only_nll(
                    m, zs_in, batch, mask
                )
                shared_only = shared_only + cfg.shared_only_weight * self.weights[m] * rec_s
            if not present:
                continue
            s_hat, p_hat, r_hat = self.encode_regions(m, batch)
            every = present == len(batch)
            if present >= 2:  # a fraction of variance needs two cells
                err_s = unexplained_fraction(
                    _having(z_s, mask, every), _having(s_hat, mask, every)
                )
                err_p = unexplained_fraction(
                    _having(z_p[m], mask, every), _having(p_hat, mask, every)
                )
                terms[Term(LATENT_SHARED, m)] = err_s
                terms[Term(LATENT_PRIVATE, m)] = err_p
                total = total + err_s + err_p
                for r, pred in r_hat.items():
                    err_r = unexplained_fraction(
                        _having(z_r[r], mask, every), _having(pred, mask, every)
                    )
                    terms[Term(LATENT_SHARED, f"{block_key(r)}/{m}")] = err_r
                    total = total + err_r
            if recon or cfg.stage2_recon_weight > 0:
                rec = _masked_mean(
                    self.nll(m, self.decode_raw(m, s_hat, p_hat, batch, z_regions=r_hat), batch),
                    mask,
                )
                terms[Term(RECON, m)] = rec
                recon_total = recon_total + self.weights[m] * rec
                if cfg.stage2_recon_weight > 0:
                    total = total + cfg.stage2_recon_weight * rec
        rows = self.fully_measured(batch) if self.use_joint else None
        if rows is not None and rows.numel() >= 2:  # a fraction of variance needs two cells
            s_hat, p_hat = self.encode_joint(batch, rows)
            terms[Term(LATENT_SHARED, JOINT)] = err = unexplained_fraction(z_s[rows], s_hat)
            total = total + err
            for m in self.modalities:
                terms[Term(LATENT_PRIVATE, f"{JOINT}:{m}")] = err = unexplained_fraction(
                    z_p[m][rows], p_hat[m]
                )
                total = total + err
        return LossOutput(
            total,
            terms,
            shared_only if self.shared_decoders_in_stage2 else None,
            recon_total if recon else None,
        )

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def embed(self, batch: Batch, modalities: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Encoder latents: shared = the available modalities' estimates averaged with ``mix_weights`` (a region's
        block: its available members', NaN with none); private from its own. With
        ``joint_encoder``, cells measured in every modality take both from the joint encoder (unless ``modalities``
        names a subset). Keys ``shared`` and ``private:<m>``; NaN where a cell lacks the data."""
        use = [m for m in (modalities or self.modalities) if m in self.specs]
        n = len(batch)
        device = batch.idx.device
        # the shared block and each region, keyed as mix_weights' rows: weighted sums of the members' estimates
        blocks = self.mix_blocks()
        dims = {"shared": self.cfg.shared_dim, **self.region_dims}
        total = {b: torch.zeros(n, dims[b], device=device) for b in blocks}
        weight = {b: torch.zeros(n, 1, device=device) for b in blocks}
        out: dict[str, torch.Tensor] = {}
        for j, m in enumerate(self.modalities):
            mask = batch.mask[m]
            s_hat, p_hat, r_hat = self.encode_regions(m, batch)
            if m in use:
                for b, z in [("shared", s_hat), *r_hat.items()]:
                    w = self.mix_weights[blocks.index(b), j] * mask[:, None]
                    total[b] += z * w
                    weight[b] += w
            out[f"private:{m}"] = torch.where(
                mask[:, None], p_hat, torch.full_like(p_hat, float("nan"))
            )
        for b in blocks:
            out["shared" if b == "shared" else block_key(b)] = torch.where(
                weight[b] > 0,
                total[b] / weight[b].clamp_min(1e-12),
                torch.full_like(total[b], float("nan")),
            )
        rows = (
            self.fully_measured(batch)
            if self.use_joint and set(use) == set(self.modalities)
            else None
        )
        if rows is not None and rows.numel():
            s_hat, p_hat = self.encode_joint(batch, rows)
            out["shared"][rows] = s_hat
            for m in self.modalities:
                out[f"private:{m}"][rows] = p_hat[m]
        return out


def _having(t: torch.Tensor, mask: torch.Tensor, every: bool) -> torch.Tensor:
    """The rows of ``t`` whose cells have the modality (``mask``); ``every``: all of them, so ``t`` itself (boolean
    indexing reads the mask back from the device)."""
    return t if every else t[mask]


def _masked_mean(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (v * mask).sum() / mask.sum().clamp_min(1)
