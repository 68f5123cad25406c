"""Lightning training plans: what is optimised in each stage. The model maths lives in ``VennModule``."""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import torch

from venncell.data.dataset import subset_batch
from venncell.model.venn import VennModule
from venncell.train.row_adam import RowAdam

# Deliberate (see _Plan._log_terms): under DDP the logged training terms are rank 0's shard.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf; the message names the term and the last good checkpoint."""


def _step_seed(seed: int, stage: int, step: int, rank: int = 0) -> int:
    # Reseeding from (seed, stage, step) makes noise identical whether or not the run was resumed; the rank
    # term gives DDP ranks independent noise/dropout (rank 0 keeps the single-process stream).
    return (seed * 1_000_003 + stage * 10_007 + step + rank * 7_919_993) % (2**63 - 1)


def fused_adam(cls, params, **kwargs) -> torch.optim.Optimizer:
    """``cls`` (Adam/AdamW) with the fused kernel where this torch has it for the parameters' device: one
    kernel per step instead of several per tensor (torch < 2.4 has no fused CPU Adam and falls back to foreach)."""
    params = list(params)
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):
        return cls(params, foreach=True, **kwargs)


def owned_cells(n_cells: int, rank: int, world: int, chunk_size: int | None = None) -> np.ndarray:
    """The latent-table rows that DDP rank ``rank`` owns in stage 1: a fixed strided share of all cells.

    Fixed across epochs, so exactly one rank ever updates a row and the tables never need an all-reduce.
    Strided (not contiguous) so every rank gets a similar mix of training and held-out cells. Backed data
    (``chunk_size``): strided by whole chunks of the on-disk reader, so a rank reads only its own chunks,
    each contiguously, instead of every chunk for a 1/world share of its rows.
    """
    if chunk_size and -(-n_cells // chunk_size) >= world:
        return np.flatnonzero((np.arange(n_cells) // chunk_size) % world == rank)
    return np.arange(rank, n_cells, world)


class _Plan(L.LightningModule):
    stage = 0

    def __init__(self, module: VennModule, seed: int = 0):
        super().__init__()
        self.module = module
        self.seed = seed
        self._term_sums: dict[str, tuple[torch.Tensor, int]] = {}  # epoch sums of the logged terms
        # Read by torch's DistributedDataParallel (which Lightning's DDP strategy builds around this plan): the
        # latent tables (O(cells) rows) are never all-reduced or broadcast by DDP — stage 1 shards them by rank
        # and gathers explicitly (Stage1Plan.gather_latents); in stage 2 they are frozen inputs.
        # ``is_train`` is an O(cells) buffer DDP would otherwise re-broadcast before every step.
        latent = {id(p) for p in module.latent_parameters()}
        self._ddp_params_and_buffers_to_ignore = [
            f"module.{n}" for n, p in module.named_parameters() if id(p) in latent
        ] + ["is_train"]

    def on_train_batch_start(self, batch, batch_idx):
        # Only the generator the step draws from: torch.manual_seed also walks every accelerator's generators,
        # a few ms per step. Same CPU stream as torch.manual_seed, so runs stay bit-identical.
        seed = _step_seed(self.seed, self.stage, self.global_step, self.global_rank)
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)

    def _check_finite(self, terms: dict[str, torch.Tensor], where: str) -> None:
        # The totals (``loss``; stage 2's ``shared_only``, which is kept apart from it) are weighted sums of the other
        # optimised terms, finite unless one of those is not: only a non-finite total needs the term-by-term search
        # (two checks per step instead of one per term). Monitors outside the totals are not optimised.
        if all(bool(torch.isfinite(terms[k]).all()) for k in ("loss", "shared_only") if k in terms):
            return
        bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
        culprit = [k for k in bad if k != "loss"] or bad
        saver = self.trainer.checkpoint_callback if self._trainer is not None else None
        ckpt = (saver.last_model_path if saver is not None else "") or "none saved yet"
        raise NonFiniteLossError(
            f"Stage {self.stage} {where} loss became non-finite at step {self.global_step} in term(s) "
            f"{culprit} (the part after '/' is the modality). Last good checkpoint: {ckpt}. Usual fixes: lower "
            "the learning rates, check that modality's data for extreme values, or raise latent_l2."
        )

    def _log_terms(self, terms: dict, prefix: str, batch_size: int, on_step: bool) -> None:
        """Accumulate the epoch means of every term; log only the total loss per step.

        Each ``self.log`` call walks Lightning's whole result collection, so logging ~8 terms per step was a
        visible share of a CPU stage-1 step. The terms are summed here as plain tensors and logged once per epoch
        under the names Lightning would give them (``<term>_epoch`` next to ``loss_step`` for per-step terms, the
        plain name for epoch-only ones).
        Not sync_dist: under DDP stage-1 terms are rank-local (syncing would add ~20 scalar all-reduces, and a
        rank whose shard lacks a term in an epoch would deadlock the sync); stage-2 validation sees every
        held-out cell on every rank, so its values agree without a sync.
        """
        # Lightning writes step values only every log_every_n_steps batches; logging the others is wasted time
        if on_step and getattr(self.trainer._logger_connector, "should_update_logs", True):
            self.log(f"{prefix}/loss_step", terms["loss"].detach(), on_step=True, on_epoch=False, prog_bar=True,
                     batch_size=batch_size)
        for k, v in terms.items():
            name = f"{prefix}/{k}" + ("_epoch" if on_step else "")
            total, count = self._term_sums.get(name, (0.0, 0))
            self._term_sums[name] = (total + v.detach() * batch_size, count + batch_size)

    def _flush_terms(self) -> None:
        for name, (total, count) in self._term_sums.items():
            self.log(name, total / count, on_step=False, on_epoch=True, prog_bar=name.endswith("/loss_epoch"))
        self._term_sums = {}

    def on_train_epoch_start(self):
        self._term_sums = {}  # a resumed epoch starts its means afresh

    def on_train_epoch_end(self):
        self._flush_terms()

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
                 lr_latent: float = 1e-2, grad_clip: float = 10.0, seed: int = 0, chunk_size: int | None = None):
        super().__init__(module, seed)
        self.chunk_size = chunk_size  # backed data: DDP ranks own whole reader chunks (owned_cells)
        self.automatic_optimization = False
        self.register_buffer("is_train", torch.as_tensor(is_train, dtype=torch.bool), persistent=False)
        self.lr_network = lr_network
        self.lr_latent = lr_latent
        self.grad_clip = grad_clip

    # ------------------------------------------------------------------ DDP: sharded latent tables
    def _world(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def on_fit_start(self):
        if self._world() > 1:
            # DDP skips the (ignored) tables when it syncs the initial weights; start every rank from
            # rank 0's latents so a DDP run starts exactly where a single-process run does. Once, O(cells).
            for p in self.module.latent_parameters():
                torch.distributed.broadcast(p.data, src=0)

    def _latent_state(self) -> list[torch.Tensor]:
        """Per-row tensors that ranks own: the tables and, once it exists, RowAdam's per-row state."""
        rows = [p.data for p in self.module.latent_parameters()]
        if self._trainer is not None and self.trainer.optimizers:
            opt = self.optimizers(use_pl_optimizer=False)[1]
            for p in self.module.latent_parameters():
                st = opt.state.get(p, {})
                rows += [st[k] for k in ("exp_avg", "exp_avg_sq", "row_step") if k in st]
        return rows

    @torch.no_grad()
    def gather_latents(self) -> None:
        """Copy every rank's owned rows to every rank (one all-gather of ~cells/world rows).

        Called when stage 1 ends and when a checkpoint is written, so rank 0's checkpoint and the saved
        model hold the full table (and resuming, with any number of ranks, continues from it).
        """
        world = self._world()
        if world == 1:
            return
        rows = self._latent_state()
        n = rows[0].shape[0]
        owned = [torch.as_tensor(owned_cells(n, r, world, self.chunk_size)) for r in range(world)]
        widths = [t.shape[1] for t in rows]
        per = max(len(o) for o in owned)
        mine = torch.cat([t[owned[self.global_rank]] for t in rows], dim=1)
        buf = mine.new_zeros(per, sum(widths))
        buf[: mine.shape[0]] = mine
        every = self.all_gather(buf)  # (world, per, width)
        for r in range(world):
            for t, piece in zip(rows, torch.split(every[r, : len(owned[r])], widths, dim=1)):
                t[owned[r]] = piece.to(t.dtype)

    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        if self._world() > 1:  # every rank runs this hook (Lightning dumps on all ranks, rank 0 writes)
            self.gather_latents()
            latent = {id(p) for p in self.module.latent_parameters()}
            for n, p in self.named_parameters():
                if id(p) in latent:
                    checkpoint["state_dict"][n] = p.detach()
            if "optimizer_states" in checkpoint:
                checkpoint["optimizer_states"][1] = self.optimizers(use_pl_optimizer=False)[1].state_dict()

    def on_train_end(self):
        self.gather_latents()

    def configure_optimizers(self):
        self._network_params = self.module.network_parameters()  # walked every step by the gradient clip
        nets = fused_adam(torch.optim.Adam, self._network_params, lr=self.lr_network)
        # Only the rows of this batch's cells are updated (no dense O(cells) walk), each with its own Adam step count.
        latents = RowAdam(self.module.latent_parameters(), lr=self.lr_latent)
        return [nets, latents]

    def training_step(self, batch, batch_idx):
        opt_net, opt_lat = self.optimizers()
        train = self.is_train[batch["idx"]]
        total = torch.zeros((), device=self.device)
        leakage = self.module.leakage_factor(batch_idx)
        if train.any():
            terms = self.module.stage1_loss(batch if train.all() else subset_batch(batch, train), leakage=leakage)
            self._check_finite(terms, "training")
            self._log_terms(terms, "stage1/train", int(train.sum()), on_step=True)
            total = total + terms["loss"] * train.float().mean()
        if (~train).any():
            with self.module.networks_frozen():
                terms_v = self.module.stage1_loss(subset_batch(batch, ~train), leakage=leakage)
            self._check_finite(terms_v, "held-out")
            self._log_terms(terms_v, "stage1/val", int((~train).sum()), on_step=False)
            total = total + terms_v["loss"] * (~train).float().mean()
        opt_net.zero_grad()
        opt_lat.zero_grad()
        self.manual_backward(total)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self._network_params, self.grad_clip)
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

    def setup(self, stage: str):
        # In setup (before DDP wraps the plan), not on_fit_start: DDP registers gradient hooks only for
        # parameters that require grad at wrap time, so frozen decoders/tables never enter its all-reduce.
        trained = {id(p) for group in self.module.stage2_parameters().values() for p in group}
        for p in self.module.parameters():
            p.requires_grad_(id(p) in trained)

    def teardown(self, stage: str):
        for p in self.module.parameters():
            p.requires_grad_(True)

    def configure_optimizers(self):
        groups = self.module.stage2_parameters()
        params = [{"params": groups["encoders"], "weight_decay": self.weight_decay}]
        if "shared_decoders" in groups:  # decoders trained without weight decay, as in stage 1
            params.append({"params": groups["shared_decoders"], "weight_decay": 0.0})
        return fused_adam(torch.optim.AdamW, params, lr=self.lr)

    def training_step(self, batch, batch_idx):
        terms = self.module.stage2_loss(batch)
        self._check_finite(terms, "training")
        self._log_terms(terms, "stage2/train", len(batch["idx"]), on_step=True)
        return terms["loss"] + terms.get("shared_only", 0.0)

    def validation_step(self, batch, batch_idx):
        terms = self.module.stage2_loss(batch, noise=False, recon=True)
        # validation is a separate loop with its own epoch: log here (a few batches, the cost is negligible)
        for k, v in terms.items():
            self.log(f"stage2/val/{k}", v.detach(), on_step=False, on_epoch=True, batch_size=len(batch["idx"]))
