"""Lightning training plans: what is optimised in each stage. The model maths lives in ``VennModule``."""

from __future__ import annotations

import math

import lightning as L
import torch

from venncell.data.dataset import Batch
from venncell.data.files import package_version
from venncell.data.samplers import owned_cells
from venncell.module.losses import LossOutput
from venncell.module.venn import VennModule
from venncell.train.errors import NonFiniteLossError
from venncell.train.row_adam import RowAdam

# Batches between reads of the steps' finiteness: the step itself never waits for the device
FINITE_CHECK_EVERY = 10


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


class _Plan(L.LightningModule):
    stage = 0
    _optimizers_per_step = 1  # global_step counts optimiser steps; stage 1 takes two per batch

    def __init__(self, module: VennModule, seed: int = 0):
        super().__init__()
        self.module = module
        self.seed = seed
        # epoch sums of the logged terms, by the tuple of names a step logged (one stacked tensor per layout)
        self._term_sums: dict[tuple[str, ...], tuple[torch.Tensor, int]] = {}
        # (where, step, term names, each term's finiteness, whether the optimised totals were finite) per step
        # since the last check: kept on the device and read back together (_check_finite)
        self._watch: list[tuple[str, int, tuple[str, ...], torch.Tensor, torch.Tensor]] = []
        # one row per epoch: its training means and, where validation ran, its held-out values (kept in the
        # checkpoints, so a resumed stage has the rows before them); VennCell.epoch_history reads them
        self.epoch_rows: list[dict] = []
        # the loss of the first step (kept in the checkpoints): what a stage that blew up in its first epoch, and
        # so has no lower epoch, is compared with (schedule.warn_if_diverged)
        self.first_loss: torch.Tensor | float | None = None
        self._validated = False
        # Read by torch's DistributedDataParallel (which Lightning's DDP strategy builds around this plan): the
        # latent tables (O(cells) rows) are never all-reduced or broadcast by DDP — stage 1 shards them by rank
        # and gathers explicitly (Stage1Plan.gather_latents); in stage 2 they are frozen inputs.
        latent = {id(p) for p in module.latent_parameters()}
        self._ddp_params_and_buffers_to_ignore = [
            f"module.{n}" for n, p in module.named_parameters() if id(p) in latent
        ]

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # Lightning's default walks the batch generically (dataclass fields copied, a deepcopy per batch): a
        # visible share of a small CPU step. Batches already on the device (venncell.data.resident) stay as they are.
        if isinstance(batch, tuple):
            return tuple(None if b is None else b.to(device) for b in batch)
        return batch.to(device) if isinstance(batch, Batch) else batch

    def on_train_batch_start(self, batch, batch_idx):
        # Only the generator the step draws from: torch.manual_seed also walks every accelerator's generators,
        # a few ms per step. Same CPU stream as torch.manual_seed, so runs stay bit-identical.
        seed = _step_seed(self.seed, self.stage, self.global_step, self.global_rank)
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)

    def _last_checkpoint(self) -> str:
        saver = self.trainer.checkpoint_callback if self._trainer is not None else None
        return (saver.last_model_path if saver is not None else "") or "none saved yet"

    def _record(
        self, out: LossOutput, prefix: str, where: str, batch_size: int, on_step: bool
    ) -> None:
        """Accumulate the epoch means of every term, log the total loss per step, and note whether the step's
        totals were finite, all without reading a value back from the device.

        Each ``self.log`` call walks Lightning's whole result collection, so logging ~8 terms per step was a
        visible share of a CPU stage-1 step. The terms are stacked and summed here as one tensor and logged once per
        epoch under the names Lightning would give them (``<term>_epoch`` next to ``loss_step`` for per-step terms,
        the plain name for epoch-only ones).
        Not sync_dist: under DDP stage-1 terms are rank-local (syncing would add ~20 scalar all-reduces, and a
        rank whose shard lacks a term in an epoch would deadlock the sync); stage-2 validation sees every
        held-out cell on every rank, so its values agree without a sync.
        """
        # Lightning writes step values only every log_every_n_steps batches; logging the others is wasted time
        if on_step and self._batches_done() % self.trainer.log_every_n_steps == 0:
            self.log(
                f"{prefix}/loss_step",
                out.loss.detach(),
                on_step=True,
                on_epoch=False,
                prog_bar=True,
                batch_size=batch_size,
            )
        terms = out.logged()
        values = torch.stack([v.detach().float() for v in terms.values()])
        names = tuple(terms)
        key = tuple(f"{prefix}/{k}" + ("_epoch" if on_step else "") for k in names)
        total, count = self._term_sums.get(key, (0.0, 0))
        self._term_sums[key] = (total + values * batch_size, count + batch_size)
        finite = torch.isfinite(values)
        objectives = torch.stack([torch.isfinite(t.detach()).all() for t in out.objectives]).all()
        self._watch.append((where, self.global_step, names, finite, objectives))

    def _batches_done(self) -> int:
        return self.global_step // self._optimizers_per_step + 1

    def _check_finite(self) -> None:
        """Raise at the first recorded step whose optimised totals were not finite, naming its non-finite terms.

        Called every ``FINITE_CHECK_EVERY`` batches and at each epoch's end (before its checkpoint), so a step
        never waits for the device. A bad step's update reaches the weights before it is caught, but checkpoints
        refuse non-finite weights (``on_save_checkpoint``), so the last good checkpoint stays good.
        """
        watch, self._watch = self._watch, []
        if not watch:
            return
        ok = torch.stack([w[-1] for w in watch]).tolist()  # the one read-back
        if all(ok):
            return
        where, step, names, finite, _ = watch[ok.index(False)]
        bad = [k for k, f in zip(names, finite.tolist()) if not f]
        culprit = [k for k in bad if k != "loss"] or bad
        ckpt = self._last_checkpoint()
        raise NonFiniteLossError(
            f"Stage {self.stage} {where} loss became non-finite at step {step} in term(s) "
            f"{culprit} (the part after '/' is the modality). Last good checkpoint: {ckpt}. Usual fixes: lower "
            "the learning rates, check that modality's data for extreme values, or raise kl_weight (latent_l2 "
            "with latent_posterior='point')."
        )

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self._batches_done() % FINITE_CHECK_EVERY == 0:
            self._check_finite()

    def _flush_terms(self) -> None:
        sums: dict[str, tuple] = {}  # per term name, over the steps' layouts of terms
        for key, (total, count) in self._term_sums.items():
            for name, v in zip(key, total.unbind()):
                t, c = sums.get(name, (0.0, 0))
                sums[name] = (t + v, c + count)
        row = {}
        for name, (total, count) in sums.items():
            row[name] = total / count
            self.log(
                name,
                row[name],
                on_step=False,
                on_epoch=True,
                prog_bar=name.endswith("/loss_epoch"),
            )
        self._term_sums = {}
        # Lightning hands these to the loggers only after the epoch's checkpoint is written; the checkpoint keeps a
        # copy, so a run killed in between still has this epoch's row when it resumes (schedule._keep_csv_history)
        self._epoch_row = {"epoch": self.current_epoch, **{k: float(v) for k, v in row.items()}}

    def on_train_epoch_start(self):
        self._term_sums = {}  # a resumed epoch starts its means afresh
        self._watch = []

    def on_train_epoch_end(self):
        self._check_finite()
        self._flush_terms()
        row = dict(self._epoch_row)
        # Lightning validates before this hook: callback_metrics then hold this epoch's held-out values
        if self._validated:
            metrics = self.trainer.callback_metrics
            row.update(
                {k: float(v) for k, v in metrics.items() if "/val/" in k and v.numel() == 1}
            )
            self._validated = False
        self.epoch_rows = [r for r in self.epoch_rows if r["epoch"] < row["epoch"]] + [row]

    def on_validation_epoch_end(self):
        self._validated = not self.trainer.sanity_checking

    def on_load_checkpoint(self, checkpoint):
        self.epoch_rows = list(checkpoint.get("venncell_epoch_rows") or [])
        self.first_loss = checkpoint.get("venncell_first_loss")

    def first_loss_value(self) -> float | None:
        return float(self.first_loss) if self.first_loss is not None else None

    fingerprint: dict | None = (
        None  # the run's (venncell.train.safety.fingerprint), saved with every checkpoint
    )

    def on_save_checkpoint(self, checkpoint):
        # a checkpoint must be one a resumed run can start from: every parameter and latent row finite
        bad = [n for n, p in self.module.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            last = self._last_checkpoint()
            raise NonFiniteLossError(
                f"Stage {self.stage}: parameters {bad[:3]} hold NaN/inf at step {self.global_step}; this checkpoint "
                f"is not written. Last good checkpoint: {last}. Usual fixes: lower the learning rates, or check "
                "the data for extreme values."
            )
        checkpoint["venncell_stage"] = self.stage
        checkpoint["venncell_fingerprint"] = self.fingerprint
        checkpoint["venncell_version"] = package_version()
        checkpoint["venncell_epoch_row"] = getattr(self, "_epoch_row", None)
        checkpoint["venncell_epoch_rows"] = self.epoch_rows
        checkpoint["venncell_first_loss"] = self.first_loss_value()
        if (
            self._trainer is not None
        ):  # the logs of the epochs a checkpoint covers are on disk with it
            for logger in self.trainer.loggers:
                logger.save()


class Stage1Plan(_Plan):
    """Latent optimisation: decoders (+ consistency encoders) and per-cell latents, jointly.

    Held-out cells are in the same latent table; their latents are fitted in the same steps but their
    loss never reaches the networks, so their reconstruction is an honest held-out score for stage 1
    and their latents are honest targets for judging stage-2 encoders.
    """

    stage = 1
    _optimizers_per_step = 2

    def __init__(
        self,
        module: VennModule,
        lr_network: float = 1e-3,
        lr_latent: float = 1e-2,
        grad_clip: float = 10.0,
        seed: int = 0,
        chunk_size: int | None = None,
        lr_anneal: float = 0.0,
    ):
        super().__init__(module, seed)
        self.lr_anneal = lr_anneal
        self.chunk_size = (
            chunk_size  # backed data: DDP ranks own whole reader chunks (owned_cells)
        )
        self.automatic_optimization = False
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
        if (
            self._world() > 1
        ):  # every rank runs this hook (Lightning dumps on all ranks, rank 0 writes)
            self.gather_latents()
            latent = {id(p) for p in self.module.latent_parameters()}
            for n, p in self.named_parameters():
                if id(p) in latent:
                    checkpoint["state_dict"][n] = p.detach()
            if "optimizer_states" in checkpoint:
                checkpoint["optimizer_states"][1] = self.optimizers(use_pl_optimizer=False)[
                    1
                ].state_dict()

    def on_train_end(self):
        self.gather_latents()

    def configure_optimizers(self):
        self._network_params = (
            self.module.network_parameters()
        )  # walked every step by the gradient clip
        nets = fused_adam(torch.optim.Adam, self._network_params, lr=self.lr_network)
        # Only the rows of this batch's cells are updated (no dense O(cells) walk), each with its own Adam step count.
        latents = RowAdam(self.module.latent_parameters(), lr=self.lr_latent)
        return [nets, latents]

    def training_step(self, batch: tuple[Batch | None, Batch | None], batch_idx):
        """``batch``: the (training, held-out) cells of one mini-batch (``venncell.data.dataset.split_batch``)."""
        opt_net, opt_lat = self.optimizers()
        train, held_out = batch
        n_train, n_held = (0 if b is None else len(b) for b in batch)
        leakage = self.module.leakage_factor(batch_idx)
        total = 0.0
        if train is not None:
            out = self.module.stage1_loss(train, leakage=leakage)
            self._record(out, "stage1/train", "training", n_train, on_step=True)
            total = out.loss * (n_train / (n_train + n_held))
        if held_out is not None:
            with self.module.networks_frozen():
                out_v = self.module.stage1_loss(held_out, leakage=leakage)
            self._record(out_v, "stage1/val", "held-out", n_held, on_step=False)
            total = total + out_v.loss * (n_held / (n_train + n_held))
        if self.lr_anneal:
            scale = self._anneal_scale(batch_idx)
            for opt, base in ((opt_net, self.lr_network), (opt_lat, self.lr_latent)):
                for group in opt.optimizer.param_groups:
                    group["lr"] = base * scale
        opt_net.zero_grad()
        opt_lat.zero_grad()
        self.manual_backward(total)
        if self.grad_clip and train is not None:
            torch.nn.utils.clip_grad_norm_(self._network_params, self.grad_clip)
        opt_net.step()  # a no-op without training cells (no network gradient), but Lightning counts it
        opt_lat.step()
        if self.first_loss is None and self.current_epoch == 0 and batch_idx == 0:
            self.first_loss = total.detach()  # read back once, when the stage ends
        return total.detach()

    def _anneal_scale(self, batch_idx: int) -> float:
        """The learning rates' factor at this step: 1, then a cosine to 0 over the last ``lr_anneal`` of the epochs,
        so the per-cell latents settle instead of ending on their last noisy step. A function of the epoch, the
        batch and the number of epochs alone, so a run resumed with the same settings continues on the same curve."""
        trainer = self.trainer
        n_batches = (
            max(1, int(trainer.num_training_batches))
            if trainer.num_training_batches != float("inf")
            else 1
        )
        progress = (self.current_epoch + batch_idx / n_batches) / max(1, trainer.max_epochs)
        start = 1.0 - self.lr_anneal
        if progress <= start:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - start) / self.lr_anneal)))


class Stage2Plan(_Plan):
    """Encoders regress the frozen stage-1 latents; judged on held-out cells."""

    stage = 2

    def __init__(
        self, module: VennModule, lr: float = 1e-3, weight_decay: float = 1e-5, seed: int = 0
    ):
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

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        # the last epoch always validates, inside it: the final held-out scores are the epoch's own (in its
        # history row, its CSV row and the stage's metrics), whatever check_val_every_n_epoch skips
        if self.current_epoch == self.trainer.max_epochs - 1:
            self.trainer.check_val_every_n_epoch = 1

    def training_step(self, batch, batch_idx):
        out = self.module.stage2_loss(batch)
        self._record(out, "stage2/train", "training", len(batch), on_step=True)
        return sum(out.objectives)

    def validation_step(self, batch, batch_idx):
        out = self.module.stage2_loss(batch, noise=False, recon=True)
        # validation is a separate loop with its own epoch: log here (a few batches, the cost is negligible)
        for k, v in out.logged().items():
            self.log(
                f"stage2/val/{k}", v.detach(), on_step=False, on_epoch=True, batch_size=len(batch)
            )
