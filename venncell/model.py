"""The user-facing model, scverse style: set up the data, train, get latents, predict, save and load.

The Hydra CLI (``venncell.cli``) drives this same class, so both faces share one training path.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import asdict, fields
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from venncell.data.dataset import MultiModalData
from venncell.data.files import atomic_write, output_folder, package_version
from venncell.data.fingerprint import fingerprint_changes, source_fingerprint
from venncell.data.registry import (
    IMAGE_OPTIONS,
    MODALITY_OPTIONS,
    REGISTRY_KEY,
    DataRegistry,
    copy_up,
    fit_registry,
    setup_options,
    stored_options,
)
from venncell.data.spec import COUNT_LIKELIHOODS, kind_hint
from venncell.data.split import VALIDATION_FRACTION, validation_split
from venncell.data.validate import (
    MIN_CELLS,
    VennCellInputError,
    VennCellInputWarning,
    check_range,
    did_you_mean,
    user_stacklevel,
)
from venncell.data.written_keys import drop_stale_keys, recorded
from venncell.module.config import ModelConfig
from venncell.module.embed import (
    average_latents,
    embed_cells,
    obsm_names,
    pick_block,
    stage1_latents,
)
from venncell.module.init import init_likelihoods, spectral_init
from venncell.module.regions import block_key
from venncell.module.venn import VennModule
from venncell.train.config import TrainConfig

log = logging.getLogger(__name__)

MODEL_FORMAT = 2
# the release that wrote each earlier model format, for the error that names it
FORMAT_RELEASES = {1: "0.1"}


# what save() writes: a folder holding only these is a model it may replace
MODEL_FILES = ("venncell.json", "model.pt", "cells.npz")


class VennCell:
    """One shared latent plus one private latent per modality, learned in two stages.

    Parameters
    ----------
    mdata
        The training data, set up with ``VennCell.setup_mudata`` (a MuData, or an .h5mu path with ``backed=True``).
        Every registered modality is used. ``None`` only when ``registry`` is given (a saved model without its
        data, see ``load``).
    seed
        Seed of everything random: the validation split, the start, the networks' initialisation, training.
    validation_fraction
        Cells held out of the networks' training (their latents are fitted; their loss never reaches a network).
    backed
        Train out of core: each modality's rows are read from the .h5mu on disk per chunk of ``chunk_size`` cells.
    chunk_size
        Rows per disk read when backed (default 1024).
    registry
        A fitted ``DataRegistry`` (how a saved model is rebuilt); None fits one on ``mdata``.
    **model_kwargs
        ``ModelConfig`` fields, e.g. ``shared_dim=16``.

    Examples
    --------
    >>> VennCell.setup_mudata(mdata, modalities={"rna": "rna", "prot": "protein"})
    >>> model = VennCell(mdata)
    >>> model.train()
    >>> mdata.obsm["X_venn_shared"] = model.get_latent_representation()
    """

    # ------------------------------------------------------------------ setup
    @staticmethod
    def setup_mudata(
        mdata: md.MuData, modalities: dict | list | None = None, batch_key: str | None = None
    ) -> None:
        """Register which modality is which kind and how it is modelled (stored in ``mdata.uns["_venncell"]``).

        Parameters
        ----------
        mdata
            The MuData.
        modalities
            A modality name -> a kind (``"rna"``, ``"atac"``, ``"protein"``, ``"features"``, ``"image"``) or a dict
            of options: ``kind``; ``likelihood`` (``nb``, ``zinb``, ``nb_mixture`` (totalVI-style protein
            background/foreground), ``bernoulli``, ``bernoulli_factors`` (ATAC with cell and region factors, the
            ATAC default), ``gaussian`` or ``auto``); ``transform`` (``clr``: muon-style CLR of protein counts,
            then Gaussian); ``layer`` (None = ``.X``); ``binarize``; ``private_dim``; ``weight`` (overrides the
            model's ``modality_weights`` rule); ``zero_variance`` (``warn`` | ``drop`` | ``keep``). Image
            modalities take ``obsm_key`` or ``store`` (a ``.npy`` / ``.zarr`` path) and ``channels``. A list names
            the modalities to use; None uses every modality, kinds guessed from the names and likelihoods inferred
            from the values.
        batch_key
            ``.obs`` column of technical batches; the decoders are conditioned on it.
        """
        mdata.uns[REGISTRY_KEY] = json.dumps(setup_options(mdata, modalities, batch_key))

    # ------------------------------------------------------------------ construction
    def __init__(
        self,
        mdata: md.MuData | str | Path | None,
        seed: int = 0,
        validation_fraction: float = VALIDATION_FRACTION,
        backed: bool = False,
        chunk_size: int | None = None,
        registry: DataRegistry | None = None,
        **model_kwargs,
    ):
        check_range("seed", seed, 0, integer=True)
        check_range("validation_fraction", validation_fraction, 0.0, 0.9)
        if chunk_size is not None:
            check_range("chunk_size", chunk_size, 1, integer=True)
        _check_placement(model_kwargs, "VennCell(mdata, ...)")
        self.config = ModelConfig.from_kwargs(**model_kwargs)
        if backed and isinstance(mdata, (str, Path)):
            mdata = _read_h5mu(mdata, backed=True)
        if mdata is not None and not isinstance(mdata, md.MuData):
            raise VennCellInputError(
                f"VennCell needs a MuData (or, with backed=True, an .h5mu path); got "
                f"{type(mdata).__name__}. Build one with `mudata.MuData({{'rna': a, ...}})`."
            )
        if registry is None and mdata is None:
            raise VennCellInputError(
                "VennCell needs its training data: VennCell(mdata, ...). To use a saved model, "
                "call VennCell.load(path)."
            )
        if getattr(mdata, "isbacked", False) and not backed:
            # read as in memory, its on-disk matrices would be refused as non-numeric
            raise VennCellInputError(
                "This MuData was read with backed=True, so its matrices stay on disk. Train on it out of core with "
                "VennCell(mdata, backed=True), or read it into memory: mudata.read_h5mu(path)."
            )
        fitting = registry is None
        if fitting:
            options = stored_options(mdata)
            if options is None:
                options = setup_options(mdata)
            registry = fit_registry(mdata, options, backed=backed, chunk_size=chunk_size)
        self.registry = registry
        self.seed = seed
        self.validation_fraction = validation_fraction
        self.mdata = mdata
        self.data = (
            MultiModalData(mdata, registry, training=True, backed=backed, chunk_size=chunk_size)
            if mdata is not None
            else None
        )
        self.n_cells = self.data.n_cells if self.data is not None else 0
        # the MuData as it was read: a change made to it afterwards is refused, not silently ignored
        self._fingerprint = (
            source_fingerprint(mdata, registry.specs) if mdata is not None else None
        )
        # a model loaded without data saves its file's totals again
        self._saved_totals: dict[str, np.ndarray] = {}
        # whether self.data are known to be the training data: fitted here, or checked against saved totals (a
        # model saved without totals and loaded with data must not stamp those data as its own)
        self._totals_trusted = fitting
        self.history: dict = {}
        self.is_trained = False
        if not fitting:
            return  # ``load`` fills in the module, cells and history
        with _seeded(seed):
            self.module = VennModule(registry.specs, self.n_cells, self.config, registry.n_batches)
        init_likelihoods(self.module, self.data, seed=seed)
        self._warn_unpaired_regions()
        if self.config.start_batch_alignment != "mean" and not (
            registry.n_batches >= 2 and self.config.latent_init == "spectral"
        ):
            why = (
                "latent_init='random' has no spectral start"
                if registry.n_batches >= 2
                else "the data have fewer than two batches (setup_mudata(..., batch_key=...))"
            )
            warnings.warn(
                f"start_batch_alignment={self.config.start_batch_alignment!r} changes the spectral start of data "
                f"with batches, and {why}: it has no effect.",
                VennCellInputWarning,
                stacklevel=user_stacklevel(),
            )
        ignored = [
            f"{k}={getattr(self.config, k)}"
            for k in ("latent_l2", "latent_noise")
            if getattr(self.config, k) != getattr(ModelConfig, k)
        ]
        if ignored and self.config.variational:
            warnings.warn(
                f"{', '.join(ignored)} act(s) on point latents only (latent_posterior='point'); the default "
                "variational latents are held by their prior, whose weight is kl_weight: it has no effect.",
                VennCellInputWarning,
                stacklevel=user_stacklevel(),
            )
        if self.config.shared_only_detach and self.config.shared_only_weight not in (0.0, 1.0):
            warnings.warn(
                f"shared_only_weight={self.config.shared_only_weight} has no effect beyond 0 (no shared-only "
                "decoders) or not: with shared_only_detach=True (the default) those decoders are fitted in stage 2 "
                "on a loss term of their own parameters only, whose scale Adam divides out. It weighs them against the "
                "rest of stage 1 with shared_only_detach=False.",
                VennCellInputWarning,
                stacklevel=user_stacklevel(),
            )
        if self.config.latent_init == "spectral":
            start = spectral_init(
                self.data,
                self.config.shared_dim,
                self.module.private_dims,
                seed=seed,
                regions=self.module.regions,
                region_dims=self.module.region_dims,
                batch_alignment=self.config.start_batch_alignment,
                batch_names=registry.batch_categories,
            )
            if start is not None:
                self.module.set_latents(*start)
        self.is_train = validation_split(self.n_cells, validation_fraction, seed)
        self.train_obs_names = self.data.obs_names
        if (
            registry.n_batches
        ):  # held-out cells fit their latents only: the decoders learn from training cells
            self.module.set_batch_coverage(
                {
                    m: np.isin(
                        np.arange(registry.n_batches),
                        self.data.batch[self.data.present(m) & self.is_train],
                    )
                    for m in registry.specs
                }
            )

    def _warn_other_scale(self, data: MultiModalData) -> None:
        """New cells of a Gaussian tabular modality far from the training data's scale (raw counts where normalised
        values were trained, or the reverse) shift every latent without an error: warn. On the data's unit scale
        the training means are the likelihood's ``offset``; a new cell type moves some features, not the median."""
        for m, spec in self.specs.items():
            x = data.x.get(m)
            offset = getattr(self.module.decoders[m].likelihood, "offset", None)
            # images have their own check (venncell.data.images); backed data are not read whole for it
            if (
                spec.kind == "image"
                or offset is None
                or not isinstance(x, np.ndarray | sp.spmatrix)
            ):
                continue
            train = offset.numpy()
            # no cells, or a model saved before the offsets
            if x.shape[0] == 0 or not train.any():
                continue
            shift = float(np.median(np.abs(np.asarray(x.mean(0)).ravel() - train)))
            if shift > 3:
                warnings.warn(
                    f"Modality '{m}': these cells' values lie a median {shift:.3g} training SDs from the training "
                    "cells' (per feature). Give them as the model was trained (the same layer and normalisation: "
                    "not raw counts where normalised values were trained, or the reverse); their latents are "
                    "otherwise not comparable with the training cells'.",
                    VennCellInputWarning,
                    stacklevel=user_stacklevel(),
                )

    def _warn_unpaired_regions(self) -> None:
        """A region's block is fitted on the cells measured in all its modalities; without such cells it stays at
        its start and its latents (and any verdict naming it) mean nothing."""
        for r, members in self.module.regions.items():
            n = int(np.logical_and.reduce([self.data.present(m) for m in members]).sum())
            if n < MIN_CELLS:
                warnings.warn(
                    f"Venn region '{r}': only {n} cell(s) are measured in all of {list(members)}, so its block "
                    "cannot be learned and its latents are meaningless. Use venn_regions='shared', or add cells "
                    "measured in those modalities together.",
                    VennCellInputWarning,
                    stacklevel=3,
                )

    @property
    def specs(self):
        """Per-modality ``ModalitySpec`` (kind, likelihood, features, preprocessing)."""
        return self.registry.specs

    @property
    def batch_key(self) -> str | None:
        return self.registry.batch_key

    def __repr__(self) -> str:
        mods = []
        for m, s in self.specs.items():
            part = f"{m} ({s.kind}, {s.likelihood}, {s.n_features} features"
            if self.data is not None and (k := int(self.data.present(m).sum())) < self.n_cells:
                part += f", {k} of {self.n_cells} cells"  # partially paired data
            mods.append(part + ")")
        batches = ""
        if self.registry.batch_key is not None:
            batches = f", batches={self.registry.n_batches} (obs['{self.registry.batch_key}']"
            if self.config.start_batch_alignment != "mean":
                batches += f", start_batch_alignment='{self.config.start_batch_alignment}'"
            batches += ")"
        trained = str(self.is_trained)
        epochs = [len(self.history.get("epochs", {}).get(s) or []) for s in ("stage1", "stage2")]
        if self.is_trained and all(epochs):
            trained += f" ({epochs[0]} + {epochs[1]} epochs)"
        return (
            f"VennCell(shared_dim={self.config.shared_dim}, private_dims={self.module.private_dims}, "
            f"cells={self.n_cells}, modalities=[{', '.join(mods)}]{batches}, trained={trained})"
        )

    # ------------------------------------------------------------------ training
    def train(
        self,
        stage1_epochs: int | None = None,
        stage2_epochs: int | None = None,
        batch_size: int | None = None,
        run_dir: str | Path | None = None,
        logger=None,
        resume: bool = False,
        **train_kwargs,
    ) -> dict:
        """Stage 1 (latents and decoders) then stage 2 (encoders), through Lightning.

        A second ``train()`` continues from the current latents and networks (a warm start), and its history
        replaces the earlier one; for a fresh fit make a new ``VennCell``. A trained model whose new training
        stops (``TrainingInterrupted``) or fails keeps its earlier networks and history.

        Parameters
        ----------
        stage1_epochs, stage2_epochs, batch_size
            None = ``TrainConfig``'s defaults.
        run_dir
            Where checkpoints and logs go (default: a temporary folder, removed once training succeeds).
        logger
            A Lightning logger, a factory ``stage -> logger``, or None.
        resume
            Continue from ``run_dir``'s checkpoints.
        **train_kwargs
            Other ``TrainConfig`` fields (learning rates, accelerator, devices, progress_bar, ...); further
            ``lightning.Trainer`` keywords go in ``trainer_kwargs={...}``.

        Returns
        -------
        The last logged metrics of each stage (``"stage1"``, ``"stage2"``), their wall times (``"wall_time_s"``)
        and every epoch's row (``"epochs"``, see ``epoch_history``); also kept as ``model.history``.
        """
        from venncell.train.schedule import run_two_stage

        self._require_data("train")
        given = {
            "stage1_epochs": stage1_epochs,
            "stage2_epochs": stage2_epochs,
            "batch_size": batch_size,
        }
        train_kwargs.update({k: v for k, v in given.items() if v is not None})
        train_kwargs.setdefault("seed", self.seed)
        _check_placement(train_kwargs, "model.train(...)")
        cfg, unknown = TrainConfig.from_kwargs(**train_kwargs)
        if unknown:
            known = sorted(asdict(TrainConfig()))
            raise VennCellInputError(
                f"Unknown training option(s) {sorted(unknown)}{did_you_mean(sorted(unknown), known)}; "
                f"valid: {known} (Lightning keywords go in trainer_kwargs)."
            )
        if cfg.num_workers and self.data.chunk_size:
            raise VennCellInputError(
                f"num_workers={cfg.num_workers} with backed data: worker processes cannot share the open HDF5 file. "
                "Fix: num_workers=0 (trainer.num_workers=0 on the command line), or read the data into memory."
            )
        if str(cfg.accelerator) in ("gpu", "cuda") and not torch.cuda.is_available():
            raise VennCellInputError(
                f"accelerator={cfg.accelerator!r}, but no CUDA GPU is visible to this process. "
                "Train on the CPU (trainer.accelerator=cpu), or check CUDA_VISIBLE_DEVICES."
            )
        if isinstance(logger, str):
            raise VennCellInputError(
                f"logger={logger!r}: in Python pass a Lightning logger (e.g. "
                "lightning.pytorch.loggers.WandbLogger(project='venncell', offline=True) or CSVLogger(dir)), or a "
                "function stage -> logger; names such as logger=wandb are the command line's (venncell-train)."
            )
        temporary = run_dir is None
        if temporary:
            run_dir = tempfile.mkdtemp(prefix="venncell_")
        else:  # a file in the way is named now, not by Lightning's first checkpoint
            output_folder(run_dir, "the run's checkpoints and logs (run_dir)")
        if resume:
            self.check_resume(run_dir, **train_kwargs)
        # training changes the networks in place: a trained model whose new training stops or fails goes back to
        # what it was, rather than a mix that still calls itself trained (the run's checkpoints hold the new one)
        before = copy.deepcopy(self.module.state_dict()) if self.is_trained else None
        try:
            self.history = run_two_stage(
                self.module,
                self.data,
                self.is_train,
                cfg,
                run_dir,
                loggers=logger if logger is not None else False,
                resume=resume,
            )
        except BaseException as err:
            if before is not None:
                self.module.cpu().load_state_dict(before)
            if temporary:
                _failed_temporary_run(err, Path(run_dir))
            raise
        if temporary:
            # nobody can resume from a folder they were not told of (a failed run's is named where it is kept)
            shutil.rmtree(run_dir, ignore_errors=True)
        self.is_trained = True
        return self.history

    def epoch_history(self, stage: str = "stage1") -> pd.DataFrame:
        """One row per epoch of a training stage (``"stage1"`` or ``"stage2"``), indexed by epoch: every loss
        term's mean over the epoch's training batches and, in the epochs where validation ran, the held-out values
        (``stage2/val/...``), under the names of the CSV logs. For convergence plots, like scvi-tools'
        ``model.history``; it reads ``train()``'s ``history["epochs"]``."""
        self._require_trained()
        if stage not in ("stage1", "stage2"):
            raise VennCellInputError(f"stage={stage!r}: use 'stage1' or 'stage2'.")
        rows = self.history.get("epochs", {}).get(stage)
        if rows is None:
            raise VennCellInputError(
                "This model kept no per-epoch history (it was saved by an earlier VennCell); its run's "
                "logs/<stage>/metrics.csv has the same values."
            )
        return pd.DataFrame(rows).set_index("epoch").sort_index() if rows else pd.DataFrame()

    def check_resume(self, run_dir: str | Path, **train_kwargs) -> None:
        """Raise a clear error when ``run_dir``'s checkpoints belong to a run with other settings, data or cells
        (``train_kwargs``: the ``TrainConfig`` fields the resumed run will use)."""
        from venncell.train.schedule import check_resume

        train_kwargs.setdefault("seed", self.seed)
        cfg, _ = TrainConfig.from_kwargs(**train_kwargs)
        check_resume(self.module, self._require_data("resume"), self.is_train, cfg, run_dir)

    # ------------------------------------------------------------------ inference
    def _training_rows(self, mdata) -> np.ndarray | None:
        """Each of ``mdata``'s cells' row among the training cells, when every one is a training cell: the same name,
        measured in the same modalities, with the same data (checked on a sample of cells) -- the training MuData
        itself, a copy, a re-read file, a reordering or a subset -- so its stage-1 latents exist; otherwise (other
        cells, even under the same names; a model loaded without its data) None."""
        if self.data is None:
            return None
        if mdata is None or mdata is self.mdata:
            self._check_unchanged("use the training data")
            return np.arange(self.data.n_cells)
        if not isinstance(mdata, md.MuData) or not mdata.obs_names.is_unique:
            return None
        rows = pd.Index(self.data.obs_names).get_indexer(mdata.obs_names)
        if (rows < 0).any():
            return None
        for m in self.specs:
            if m in mdata.mod and not mdata[m].obs_names.is_unique:
                return None
            has = (
                pd.Index(mdata[m].obs_names).get_indexer(mdata.obs_names) >= 0
                if m in mdata.mod
                else np.zeros(mdata.n_obs, bool)
            )
            if not np.array_equal(has, self.data.present(m)[rows]):
                return None
        return rows if self._same_data(mdata, rows) else None

    def _view(self, mdata: md.MuData, optional: tuple[str, ...] = ()) -> MultiModalData:
        """Other cells as the model reads them (its registry); ``optional``: modalities left out, with a warning,
        where their data cannot be used (the caller reads the others)."""
        return MultiModalData(
            mdata,
            self.registry,
            training=False,
            backed=bool(getattr(mdata, "isbacked", False)),
            optional=optional,
        )

    def _same_data(self, mdata: md.MuData, rows: np.ndarray, n: int = 32) -> bool:
        """Whether ``mdata``'s cells hold the training data of the training cells ``rows`` they are named as: every
        modality's values and the batch, on ``n`` cells drawn at random (names alone can be reused, e.g. 0..n-1)."""
        try:
            with warnings.catch_warnings():
                # a check: the view that embeds these cells says the same once (reordered features, say)
                warnings.simplefilter("ignore", VennCellInputWarning)
                data = self._view(mdata)
        except VennCellInputError:
            return False
        pick = np.random.default_rng(0).permutation(len(rows))
        if data.batch is not None and not np.array_equal(data.batch, self.data.batch[rows]):
            return False
        for m in self.specs:
            cells = pick[data.present(m)[pick]][:n]
            if not len(cells):
                continue
            (x, lib), (x0, lib0) = data.rows(m, cells), self.data.rows(m, rows[cells])
            dense = [v.toarray() if sp.issparse(v) else np.asarray(v) for v in (x, x0)]
            if not (np.array_equal(lib, lib0) and np.array_equal(*dense)):
                return False
        return True

    def _data_for(
        self,
        mdata: md.MuData | None,
        modalities=None,
        warn_new_batches: bool = True,
        reads: list[str] | None = None,
    ) -> MultiModalData:
        """The data view of ``mdata`` (None: the training data); with ``modalities``, the encoders that embed its
        cells, which must have measured some of them (else the shared latent is NaN). ``warn_new_batches=False``:
        the caller handles cells of new batches or without the batch itself (refinement learns them, prediction
        says how it predicts them, cell weights refuse them), so the encoders' warning about them is not given.
        ``reads`` (default ``modalities``): the modalities the caller reads; new data's others are left out, with a
        warning, where they cannot be used as they are."""
        if mdata is None or mdata is self.mdata:
            data = self._require_data("use the training data (mdata=None)", new_cells=True)
        elif not isinstance(mdata, md.MuData):
            raise VennCellInputError(f"mdata must be a MuData, got {type(mdata).__name__}.")
        else:
            # modalities the encoders do not read for the shared block need not be usable
            reads = modalities if reads is None else reads
            skip = () if reads is None else tuple(m for m in self.specs if m not in reads)
            data = self._view(mdata, skip)
            self._warn_other_scale(data)
            if warn_new_batches and (data.batch_missing or data.unseen_batches):
                key = self.registry.batch_key
                what = (
                    f"batch_key '{key}' is not a column of mdata.obs"
                    if data.batch_missing
                    else f"batch_key '{key}': batches {data.unseen_batches[:5]} were not in training"
                )
                fix = (
                    "refine_epochs and cell weights need each cell's batch: give the column for those (for "
                    "refine_epochs a new label of their own will do)."
                    if data.batch_missing
                    else "refine_epochs=N (e.g. 20) learns each new batch's effect along with the cells' latents "
                    "(query mapping)"
                    + (
                        f", from each batch's own cells: with fewer than {MIN_CELLS} in a batch, give the query one "
                        f"label first (`mdata.obs['{key}'] = 'query'`)"
                        if min(data.unseen_sizes) < MIN_CELLS
                        else ""
                    )
                    + "; cell weights need each cell's training batch: map them to one for those."
                )
                warnings.warn(
                    f"{what}. The cells are embedded by the encoders, which do not read the batch, but their batch "
                    f"effect is not corrected as the training batches' is. {fix}",
                    VennCellInputWarning,
                    stacklevel=user_stacklevel(),
                )
        if modalities is not None:
            held = [m for m in self.specs if data.present(m).any()]
            if not set(held) & set(modalities):
                raise VennCellInputError(
                    f"modalities={list(modalities)}: the data have no cell measured in any of them, so every "
                    f"cell's shared latent would be NaN. Name modalities the data hold: {held}."
                )
            without = ~np.any([data.present(m) for m in modalities], axis=0)
            if without.any():
                warnings.warn(
                    f"{int(without.sum())} of {data.n_cells} cells have none of modalities={list(modalities)}: "
                    "their latents are NaN.",
                    VennCellInputWarning,
                    stacklevel=user_stacklevel(),
                )
        return data

    def get_latent_representation(
        self,
        mdata: md.MuData | None = None,
        block: str = "shared",
        modalities: list[str] | None = None,
        source: str | None = None,
        refine_epochs: int = 0,
    ) -> np.ndarray:
        """Latents for every cell of ``mdata`` (default: the training data).

        Parameters
        ----------
        mdata
            New cells (a MuData with some or all of the model's modalities), or None for the training data.
        block
            ``"shared"``, ``"private:<modality>"``, a Venn region's ``"shared:<a>+<b>"`` (modality names sorted)
            or ``"all"`` (shared, then every region's block, then every private block).
        modalities
            Which of a cell's modalities the encoders use for the shared block (default: every one it has).
        source
            ``"encoder"`` (stage 2's encoders; any cells), ``"stage1"`` (the latents stage 1 optimised; training
            cells only) or ``"average"`` (the mean of the two, block by block; training cells only). Training cells
            are matched by name (a copy, a re-read file, a reordering or a subset of the training data), each
            measured in the modalities it was trained with. Default: ``"average"`` for training cells,
            ``"encoder"`` for new cells, with ``modalities`` and with ``refine_epochs``.
        refine_epochs
            > 0: start from the encoder latents and refine them against the frozen decoders (``refine``), learning
            the effect of batches the model never saw (query mapping; twice the epochs then: ``refine``).

        Returns
        -------
        Cells x dimensions; NaN in a private block where a cell lacks that modality, in a Venn region's block where
        it has none of the region's modalities, and in the shared block of a
        cell that has none of ``modalities`` (a warning says how many; none at all is refused).
        """
        self._require_trained()
        check_range("refine_epochs", refine_epochs, 0, integer=True)  # 0: no refinement
        # the training cells' rows, where stage-1 latents are asked for or may be the default
        wanted = source in ("stage1", "average") or (
            source is None and modalities is None and not refine_epochs
        )
        rows = self._training_rows(mdata) if wanted else None
        if source is None:
            # where both latents exist the default is their mean: it beats the encoders' alone on most sets of the
            # integration harness (the optimised latents keep what the encoders do not amortise, and the encoders
            # smooth the per-cell optimisation)
            source = "average" if rows is not None else "encoder"
        if refine_epochs and source != "encoder":
            raise VennCellInputError(
                "refine_epochs refines encoder latents; use it with source='encoder'."
            )
        self._check_modalities(modalities)
        if source not in ("encoder", "stage1", "average"):
            raise VennCellInputError(
                f"source must be 'encoder', 'stage1' or 'average', got {source!r}."
            )
        if source != "encoder" and rows is None and self.data is None:
            raise VennCellInputError(
                f"source={source!r} exists only for the training cells, and this model was loaded without its "
                "training data, so it knows none: load it with VennCell.load(path, mdata=training), "
                "or use source='encoder'."
            )
        if source != "encoder" and rows is None:
            raise VennCellInputError(
                f"source={source!r} exists only for the training cells (matched by name, each measured in the "
                "modalities it was trained with), and these cells are not all such; use source='encoder' "
                "(optionally with refine_epochs=N) for new cells."
            )
        if source != "encoder" and modalities is not None:
            raise VennCellInputError(
                f"modalities=... picks which encoders embed a cell; source={source!r} reads the stage-1 "
                "latents, which every modality fitted. Use source='encoder' with modalities."
            )
        if source == "encoder":
            lat = (
                self.refine(mdata, modalities, refine_epochs)
                if refine_epochs
                else embed_cells(
                    self.module, self._data_for(mdata, modalities), modalities=modalities
                )
            )
        else:
            # the rows were matched against the data as read, whose latents these are, whatever mdata is now
            lat = stage1_latents(
                self.module, self._require_data("read the stage-1 latents", current=False)
            )
            lat = {key: z[rows] for key, z in lat.items()}
            if source == "average":
                lat = average_latents(lat, embed_cells(self.module, self._data_for(mdata)))
        return pick_block(lat, block, list(self.specs), list(self.module.regions))

    def refine(
        self,
        mdata: md.MuData | None = None,
        modalities: list[str] | None = None,
        epochs: int = 20,
        batch_size: int = 256,
        lr_latent: float = 5e-2,
        seed: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Test-time refinement: encoder latents of ``mdata``'s cells, then ``epochs`` of stage-1 optimisation of
        those latents with every trained network weight frozen. Only the ``modalities`` given (default all) drive
        it; other modalities' private blocks stay as the encoders gave them. Returns every block (``shared``,
        ``private:<m>``).

        Cells of batches the model never saw are mapped onto it (query mapping, as scArches does for scvi-tools
        models): each new batch gets a one-hot input of its own in the decoders of ``modalities``, started at the
        trained batches' mean, fitted for ``epochs`` to the encoders' latents and then for ``epochs`` along with the
        latents, so that the new batch's effect goes there rather than into the latents. The trained model is not
        changed; the new batches' inputs last for the call.

        The fit is stochastic, as training is (it samples each latent's posterior, and the leakage penalties read
        a batch of cells at a time): another ``seed``, ``batch_size`` or split of the cells into calls moves each
        latent by a fraction of refinement's own shift. The same call on the same cells gives the same
        latents."""
        self._require_trained()
        check_range("refine_epochs (refine(epochs=...))", epochs, 1, integer=True)
        check_range("refine(batch_size=...)", batch_size, 1, integer=True)
        check_range("refine(lr_latent=...)", lr_latent, 0.0)
        if seed is not None:
            check_range("refine(seed=...)", seed, 0, integer=True)
        self._check_modalities(modalities)  # all before the data are read
        return self._refine(
            self._data_for(mdata, modalities, warn_new_batches=False),
            modalities,
            epochs,
            batch_size,
            lr_latent,
            seed,
        )

    def _require_known_batches(
        self, data: MultiModalData, what: str, unseen_ok: bool = False
    ) -> None:
        """The decoders read the batch: cells without one, or (unless ``unseen_ok``: refinement learns them) of a
        batch the model never saw, cannot go through them."""
        if data.batch_missing:
            raise VennCellInputError(
                self.registry.missing_message(
                    data.obs_columns, f" ({what} reads the batch)", data.batch_holders, unseen_ok
                )
            )
        if data.unseen_batches and not unseen_ok:
            raise VennCellInputError(
                self.registry.unseen_message(data.unseen_batches, f"; {what} reads them")
            )

    def _refine(self, data, modalities, epochs, batch_size=256, lr_latent=5e-2, seed=None):
        """``refine`` on data already read and arguments already checked (so a caller that needs the data too
        reads them once)."""
        from venncell.train.caller_state import caller_state
        from venncell.train.refine import refine_latents

        self._require_known_batches(data, "refinement (refine_epochs)", unseen_ok=True)
        small = [
            f"'{b}' ({n} cell{'s' if n > 1 else ''})"
            for b, n in zip(data.unseen_batches, data.unseen_sizes)
            if n < MIN_CELLS
        ]
        if small:
            warnings.warn(
                f"New batch(es) {', '.join(small[:5])}{' ...' if len(small) > 5 else ''} have fewer than "
                f"{MIN_CELLS} cells: refinement learns each new batch's effect from its own cells, and from so few "
                "it takes up their biology too. Give such cells one label for the whole query (e.g. "
                f"`mdata.obs['{self.registry.batch_key}'] = 'query'`) or the label of the training batch they are "
                "closest to.",
                VennCellInputWarning,
                stacklevel=user_stacklevel(),
            )
        use = list(modalities) if modalities is not None else list(self.specs)
        start = embed_cells(self.module, data, modalities=use)
        # building the new cells' latent tables draws from torch's generator, and Lightning's seeding and
        # deterministic=True are process-wide: the caller's process is left as it was
        with caller_state():
            return refine_latents(
                self.module,
                data.with_new_batch_codes(),
                start,
                use,
                epochs,
                batch_size,
                lr_latent,
                self.seed if seed is None else seed,
                new_batches=len(data.unseen_batches),
            )

    def predict_modality(
        self,
        mdata: md.MuData | None = None,
        source: list[str] | str = ("rna",),
        target: str = "protein",
        scale: str = "normalised",
    ) -> np.ndarray:
        """Expected values of ``target`` predicted from the ``source`` modalities only, or, with ``target`` among
        them, the target's denoised values (scvi-tools' ``get_normalized_expression``).

        The shared latent is encoded from the sources; the target's shared-only decoder maps it to the target
        (its private latent is, by construction, unknowable from other modalities). With ``target`` in
        ``source`` the target's full decoder reads the shared, its Venn-region and its private latents, all from
        the encoders, for training cells too (``get_latent_representation``'s default for them also averages in
        their stage-1 latents), so that private signal is kept; cells without the target get NaN. The decoder reads each
        cell's batch; cells of a batch the model never saw (or without the batch column) get the mean of their
        predictions as each training batch (batch-neutral), with a warning.

        Parameters
        ----------
        mdata
            The cells (default: the training data).
        source
            Modalities to predict from; include ``target`` to denoise it, best with every modality the cells
            have, whose encoders all inform the shared latent (e.g. ``source=["rna", "protein"], target="rna"``).
        target
            The modality to predict.
        scale
            ``"normalised"`` (proportions for counts, probabilities for binary, values for Gaussian) or
            ``"counts"`` (times the target's median training library size; count modalities only). ``nb_mixture``
            gives the denoised (background-free) protein counts on both scales; ``bernoulli_factors`` (ATAC)
            gives, on the normalised scale, the probabilities of a cell at the median training depth; ``zinb``
            includes the dropout.

        Returns
        -------
        Cells x the target's features as the model knows them, ``model.specs[target].feature_names`` (without
        the features setup dropped, ``zero_variance="drop"``), in that order.
        """
        self._require_trained()
        source = [source] if isinstance(source, str) else list(source)
        if not isinstance(target, str):
            raise VennCellInputError(
                f"target must be the name of one modality, e.g. target={next(iter(self.specs))!r}, got {target!r}; "
                "predict several by calling predict_modality once for each."
            )
        if target not in self.specs:
            raise VennCellInputError(
                f"target '{target}' is not a modality of the model ({list(self.specs)})."
                + kind_hint([target], self.specs)
            )
        if not source:
            raise VennCellInputError(
                f"source is empty: name the modalities to predict '{target}' from, e.g. "
                f"source={[m for m in self.specs if m != target][:1]}."
            )
        self._check_modalities(source)
        denoise = target in source
        if scale not in ("normalised", "counts"):
            raise VennCellInputError(f"scale must be 'normalised' or 'counts', got {scale!r}.")
        spec = self.specs[target]
        if scale == "counts" and spec.likelihood not in COUNT_LIKELIHOODS:
            raise VennCellInputError(
                f"scale='counts' needs a count modality; '{target}' is {spec.likelihood}."
            )
        # cells of new batches: said below, for the prediction
        data = self._data_for(mdata, warn_new_batches=False, reads=source)
        blocks = embed_cells(self.module, data, modalities=source)
        z = blocks["shared"]
        lacking = f"none of the source modalities {source}"
        if denoise:  # what the full decoder reads, in its order
            z = self.module.decoder_input(
                target,
                torch.as_tensor(z),
                torch.as_tensor(blocks[f"private:{target}"]),
                {r: torch.as_tensor(blocks[block_key(r)]) for r in self.module.regions_of[target]},
            ).numpy()
            lacking = f"no '{target}' of their own to denoise"
        missing = np.isnan(z).any(1)
        if missing.all():
            what = (
                f"'{target}' to denoise" if denoise else f"any of the source modalities {source}"
            )
            raise VennCellInputError(
                f"No cell has {what}; predict from modalities the cells have."
            )
        if missing.any():  # like get_latent_representation(modalities=...): NaN rows, said once
            warnings.warn(
                f"{int(missing.sum())} of {len(z)} cell(s) have {lacking}; their predictions are NaN.",
                VennCellInputWarning,
                stacklevel=2,
            )
        dec = (self.module.decoders if denoise else self.module.shared_decoders)[target]
        self._warn_untrained_batches(data, dec, target, ~missing)
        out = []
        with torch.no_grad():
            for start in range(0, len(z), 4096):
                zb = torch.as_tensor(z[start : start + 4096])
                b = (
                    None
                    if data.batch is None
                    else torch.as_tensor(data.batch[start : start + 4096])
                )
                out.append(dec.expected(zb, b).numpy())
        pred = np.concatenate(out)
        if (
            scale == "counts" and spec.likelihood != "nb_mixture"
        ):  # nb_mixture's normalised scale is already counts
            pred = pred * spec.median_library
        if spec.data_scale is not None:  # back to the data's own units
            pred = pred * np.asarray(spec.data_scale, dtype=pred.dtype)
        return pred

    def _warn_untrained_batches(self, data, dec, target: str, cells: np.ndarray) -> None:
        """Cells of a batch in which no training cell was measured in ``target``, of a batch the model never saw
        or without the batch column are predicted batch-neutral (the mean of the trained batches' effects): say
        so, with the batches."""
        if data.batch is None:
            return
        key = self.registry.batch_key
        new = cells & (data.batch < 0)
        if new.any():
            holders = self.registry.batch_holders(data.obs_columns, data.batch_holders)
            which = (
                f"are of batch(es) {data.unseen_batches[:5]} the model never saw"
                if not data.batch_missing
                else f"have no {key!r} column in mdata.obs"
                + (
                    f" (the .obs of {holders} holds it; copy it up: {copy_up(self.registry.batch_key, holders)})"
                    if holders
                    else ""
                )
            )
            warnings.warn(
                f"{int(new.sum())} cell(s) {which}: their '{target}' is the mean of its predictions as each "
                f"training batch (batch-neutral). To predict them as one of those batches instead, set their {key!r} "
                "to it.",
                VennCellInputWarning,
                stacklevel=3,
            )
        hit, names = self._untrained_batch_cells(dec, data, cells)
        if hit.any():
            warnings.warn(
                f"{int(hit.sum())} cell(s) are of batch(es) {names}, in which no training cell was measured in "
                f"'{target}': their '{target}' is the mean of its predictions as each batch that was (batch-neutral). To "
                f"predict them as one of those batches instead, set their {self.registry.batch_key!r} to it.",
                VennCellInputWarning,
                stacklevel=3,
            )

    def write_latents(
        self,
        mdata: md.MuData | None = None,
        modalities: list[str] | None = None,
        refine_epochs: int = 0,
    ) -> md.MuData:
        """Put the latents where scverse tools look: ``obsm["X_venn_shared"]``, ``obsm["X_venn_private_<m>"]`` and,
        with Venn regions, ``obsm["X_venn_shared_<a>+<b>"]``: the latents ``get_latent_representation`` gives by
        default. For training cells (without ``modalities`` or ``refine_epochs``) also ``*_encoder`` and
        ``*_stage1`` (the two latents averaged there) and ``obs["venn_split"]``; other writes remove the two
        estimates (``venn_split`` stays: it still says which cells trained). ``modalities``: those whose encoders
        give the shared block; each private block always comes from its own modality's encoder.
        ``uns["venncell_latents"]`` records what the keys hold (``keys``: those written; ``source``: ``average``,
        ``encoder`` or ``refined``; the ``modalities`` read; ``refine_epochs``). The keys an earlier write recorded
        there and this one does not write (another model's modalities) are removed, with a warning. Returns the
        MuData written to."""
        self._require_trained()
        check_range("refine_epochs", refine_epochs, 0, integer=True)
        self._check_modalities(modalities)
        target = self.mdata if mdata is None else mdata
        if target is None:
            raise VennCellInputError(
                "This model was loaded without its training data: pass the cells to write to (write_latents(mdata))."
            )
        enc = (
            self.refine(mdata, modalities, refine_epochs)
            if refine_epochs
            else embed_cells(self.module, self._data_for(mdata, modalities), modalities=modalities)
        )
        latents = enc
        # the two estimates the default averages, only when that default is what is written (not an estimate
        # from some modalities or a refinement, which would sit under *_encoder as if it were the encoders')
        rows = self._training_rows(target)
        names = obsm_names(self.module)
        source = "refined" if refine_epochs else "encoder"
        if rows is not None and modalities is None and not refine_epochs:
            st1 = {key: z[rows] for key, z in stage1_latents(self.module, self.data).items()}
            for key, name in names.items():
                target.obsm[f"{name}_encoder"] = enc[key]
                target.obsm[f"{name}_stage1"] = st1[key]
            target.obs["venn_split"] = np.where(self.is_train[rows], "train", "validation")
            latents = average_latents(st1, enc)
            source = "average"
            written = [f"{n}{s}" for n in names.values() for s in ("", "_encoder", "_stage1")]
        else:
            # the two estimates of an earlier write describe another latent than the one written now
            for name in names.values():
                for suffix in ("_encoder", "_stage1"):
                    target.obsm.pop(f"{name}{suffix}", None)
            written = list(names.values())
        drop_stale_keys(target.obsm, recorded(target.uns, "venncell_latents"), written, "obsm")
        for key, name in names.items():
            target.obsm[name] = latents[key]
        # what the X_venn_* keys hold, for whoever reads them later
        target.uns["venncell_latents"] = {
            "keys": written,
            "source": source,
            "modalities": list(modalities)
            if modalities is not None
            else [m for m in self.specs if m in target.mod],
            "refine_epochs": int(refine_epochs),
        }
        return target

    def _check_modalities(self, modalities) -> None:
        if modalities is None:
            return
        if isinstance(modalities, str):
            raise VennCellInputError(
                f"modalities must be a list of names, e.g. [{modalities!r}], not a string."
            )
        if not len(modalities):
            raise VennCellInputError(
                "modalities=[] names no modality; leave it out to use every modality a cell has."
            )
        missing = [m for m in modalities if m not in self.specs]
        if missing:
            raise VennCellInputError(
                f"modalities {missing} are not in the model (it has {list(self.specs)})."
                + kind_hint(missing, self.specs)
            )

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise VennCellInputError(
                "The model is not trained yet; call model.train() first (or VennCell.load() a trained one)."
            )

    def _require_data(
        self, what: str, new_cells: bool = False, current: bool = True
    ) -> MultiModalData:
        """The training data; ``new_cells``: the call also takes other cells (``mdata=...``), which the fix says;
        ``current``: the call reads ``self.mdata`` too, or stands for it, so it must not have changed since."""
        if self.data is None:
            fix = "Pass the cells as mdata=..., or load" if new_cells else "Load"
            raise VennCellInputError(
                f"This model was loaded without its training data, which is needed to {what}. "
                f"{fix} it with its training data: VennCell.load(path, mdata=training)."
            )
        if current:
            self._check_unchanged(what)
        return self.data

    def _check_unchanged(self, what: str) -> None:
        """Refuse to ``what`` when the MuData the model read has changed since: its reading would be stale."""
        if self._fingerprint is None:
            return
        changes = fingerprint_changes(
            self._fingerprint, source_fingerprint(self.mdata, self.specs)
        )
        if changes:
            values = all("values" in c for c in changes)
            fix = (
                # new cells are read as the model reads them (raw counts): normalised ones would be refused
                "Put back the values it read (e.g. the raw counts, into .X or the layer set up), "
                if values
                else "To embed or predict the cells as they are now, pass them as new cells: "
                "`model.get_latent_representation(mdata.copy())`; "
            )
            raise VennCellInputError(
                f"Cannot {what}: the MuData this model was built on has changed since VennCell(mdata) read it "
                f"({'; '.join(changes)}), and the model holds the data as they were read. {fix}or build a new "
                "model on the data as they are now: `VennCell(mdata)`. Make later edits on a copy (`mdata.copy()`)."
            )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, overwrite: bool = True) -> None:
        """Weights, configuration and data registry (features, preprocessing statistics), in a folder.

        Written to a temporary folder and renamed into place, so a crash never leaves half a model. ``overwrite``
        replaces a model saved there before; a folder holding anything else is refused, never emptied. After a
        multi-process (DDP) ``train()`` in a script, every rank holds the same model and only global rank 0 writes.
        """
        _check_path(path, "save(path)")
        if not isinstance(overwrite, bool):  # overwrite="no" is truthy
            raise VennCellInputError(f"overwrite must be True or False, got {overwrite!r}.")
        rank = self.history.get("ddp", {}).get("global_rank", 0)
        if rank != 0:
            # every rank runs the script's save(); writing the same folder at once, they would delete each other's
            log.info("DDP rank %d: global rank 0 writes the model to %s", rank, path)
            return
        if not self.is_trained:
            warnings.warn(
                "The model is not trained: the saved model holds its untrained weights, and a model loaded from it "
                "can only be trained. Call model.train() before saving.",
                VennCellInputWarning,
                stacklevel=user_stacklevel(),
            )
        # the real folder: a link would itself be swapped for a folder, and "." has no name to put one beside
        path = Path(path).resolve()
        if path.exists() and not overwrite:
            raise VennCellInputError(f"{path} exists; pass overwrite=True or choose another path.")
        if path.is_file():
            raise VennCellInputError(
                f"Cannot write the model to {path}: it is a file, not a folder."
            )
        if path == Path.cwd().resolve() or path in Path.cwd().resolve().parents:
            # saving swaps the whole folder for the new one: the process would be left in a deleted folder
            raise VennCellInputError(
                f"Cannot write the model to {path}: it is the current folder (or holds it). Save into a folder of "
                f"its own, e.g. model.save('model')."
            )
        other = (
            sorted(p.name for p in path.iterdir() if p.name not in (*MODEL_FILES, ".DS_Store"))
            if path.is_dir()
            else []
        )
        if other:
            raise VennCellInputError(
                f"Cannot write the model to {path}: the folder holds other files ({', '.join(other[:5])}"
                f"{', ...' if len(other) > 5 else ''}), which saving would delete. Save into a new or empty folder "
                f"(e.g. {path / 'model'})."
            )
        output_folder(path.parent, "the model")
        # one fixed name, so the next save replaces what a killed one left
        tmp = path.parent / f".{path.name}.tmp"
        try:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            tmp.mkdir()
        except OSError as e:
            raise VennCellInputError(
                f"Cannot write the model to {path}: {e.strerror or e}."
            ) from None
        meta = {
            "format": MODEL_FORMAT,
            "venncell_version": package_version(),
            "config": asdict(self.config),
            "registry": self.registry.to_dict(),
            "seed": self.seed,
            "validation_fraction": self.validation_fraction,
            "n_cells": self.n_cells,
            "is_trained": self.is_trained,
            "history": self.history,
        }
        try:
            (tmp / "venncell.json").write_text(json.dumps(meta, indent=1))
            torch.save(self.module.state_dict(), tmp / "model.pt")
            # a model loaded without its data, with backed data (no totals read up front) or with data no totals
            # could check keeps its file's
            totals = (
                cell_totals(self.data)
                if self.data is not None and not self.data.backed and self._totals_trusted
                else self._saved_totals
            )
            np.savez_compressed(
                tmp / "cells.npz",
                obs_names=self.train_obs_names,
                is_train=self.is_train,
                **{f"total_{m}": t for m, t in totals.items()},
            )
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise VennCellInputError(
                f"Cannot write the model to {path}: {e.strerror or e}."
            ) from None
        old = path.with_name(f".{path.name}.old")
        try:
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)  # left by a save killed between its renames
                os.replace(path, old)
            os.replace(tmp, path)
        except OSError as e:
            if old.exists() and not path.exists():  # the earlier model goes back where it was
                os.replace(old, path)
            shutil.rmtree(tmp, ignore_errors=True)
            raise VennCellInputError(
                f"Cannot write the model to {path}: {e.strerror or e}."
            ) from None
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, path: str | Path, mdata: md.MuData | None = None) -> VennCell:
        """A saved model. With ``mdata`` (its training data, checked by the cells' names and each modality's
        per-cell totals) the stage-1 latents and the split line up with it; without, it embeds and predicts any
        new data."""
        _check_path(path, "load(path, mdata=None)")
        path = Path(path)
        meta_file = path / "venncell.json"
        if not meta_file.exists():
            raise VennCellInputError(f"{path} is not a saved VennCell model (no venncell.json).")
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VennCellInputError(f"{meta_file} is unreadable or truncated: {e}.") from None
        if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else "?"
            release = FORMAT_RELEASES.get(found) if isinstance(found, int) else None
            raise VennCellInputError(
                f"{path}: model format {found}"
                + (f" (VennCell {release}.x)" if release else "")
                + f" is not supported by this VennCell {package_version()} (it reads format {MODEL_FORMAT}); "
                + (f"load it with VennCell {release}.x, or retrain." if release else "retrain.")
            )
        if "venncell_version" not in meta:
            warnings.warn(
                f"{path} was saved by a VennCell that recorded no version (0.2.0 or a development build after it). "
                "The training cells' default latents are now the mean of the encoders' and the stage-1 latents "
                "(source='average'); VennCell 0.2.0 gave the encoders' alone, which source='encoder' gives. New "
                "cells are embedded as before. Saving the model again records this version.",
                VennCellInputWarning,
                stacklevel=user_stacklevel(),
            )
        try:
            registry = DataRegistry.from_dict(meta["registry"])
            cells = np.load(path / "cells.npz", allow_pickle=False)
            obs_names, is_train = cells["obs_names"], cells["is_train"]
            # models saved before the totals were kept have none (their data are checked by name only)
            totals = {k[len("total_") :]: cells[k] for k in cells.files if k.startswith("total_")}
        except (KeyError, TypeError, ValueError, OSError, zipfile.BadZipFile) as e:
            raise VennCellInputError(
                f"{path} is damaged ({type(e).__name__}: {e}); retrain or restore it."
            ) from None
        if mdata is not None:
            names = np.asarray(mdata.obs_names).astype(str)
            if len(names) != len(obs_names) or (names != obs_names).any():
                raise VennCellInputError(_other_cells_message(names, obs_names, path))
        self = cls(
            mdata,
            seed=meta["seed"],
            validation_fraction=meta["validation_fraction"],
            backed=bool(getattr(mdata, "isbacked", False)),
            registry=registry,
            # models saved before the image augmentation existed were trained without it (refine keeps to that)
            **{"image_augment": False, **meta["config"]},
        )
        self.n_cells = int(meta["n_cells"])
        self._saved_totals = totals
        if (
            self.data is not None and totals
        ):  # nothing to check the data against without saved totals
            _check_same_data(cell_totals(self.data), totals, path)
            self._totals_trusted = True
        with _seeded(
            self.seed
        ):  # the weights are overwritten below; the seed keeps the caller's stream untouched
            self.module = VennModule(registry.specs, self.n_cells, self.config, registry.n_batches)
        try:
            state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
            # models saved before the mixing weights existed averaged their blocks equally
            state.setdefault("mix_weights", self.module.equal_mix_weights())
            # models saved before the Gaussian heads' offsets existed had none
            for key, value in self.module.state_dict().items():
                if key.endswith("likelihood.offset"):
                    state.setdefault(key, torch.zeros_like(value))
            self.module.load_state_dict(state)
        except (
            RuntimeError,
            EOFError,
            OSError,
            pickle.UnpicklingError,
            zipfile.BadZipFile,
            KeyError,
            AttributeError,
            TypeError,
            ValueError,
        ) as e:
            raise VennCellInputError(
                f"{path / 'model.pt'} is unreadable or does not match the saved config "
                f"({type(e).__name__}); retrain or restore the file."
            ) from None
        self.module.eval()
        self.is_train, self.train_obs_names = is_train, obs_names
        self.history = meta.get("history", {})
        self.is_trained = bool(meta.get("is_trained", False))
        return self

    # ------------------------------------------------------------------ analysis
    def attribution(self, markers=None, **kwargs):
        """Which latent block carries each feature and marker: shared or a modality's private one.

        Parameters
        ----------
        markers
            ``.obs`` columns or features (``"CD4"``, ``"protein:CD4"``); None = the categorical ``.obs`` columns.
        **kwargs
            ``AttributionConfig`` fields (``venncell.analysis.attribution``), and ``write_var`` (store per-feature
            fractions in ``mdata[mod].var``, default True; the ``venn_*`` columns and loadings an earlier run left
            in a modality this model lacks, or that it does not write, are removed with a warning).

        Returns
        -------
        An ``AttributionResult``; ``.markers`` holds the verdicts.
        """
        from venncell.analysis.attribution import attribute
        from venncell.analysis.writers import training_summary

        self._require_trained()
        data = self._require_data("attribute features and markers")
        result = attribute(self.module, data, self.mdata, markers, **kwargs)
        result.training = training_summary(self.history or {})
        return result

    def check_markers(self, markers) -> None:
        """Raise the error ``attribution(markers)`` would give for a marker it cannot find (unknown, ambiguous),
        without training or computing anything: ``venncell-train report=...`` checks its markers before training."""
        from venncell.analysis.markers import resolve_marker

        data = self._require_data("check markers")
        for name in [markers] if isinstance(markers, str) else list(markers):
            resolve_marker(self.mdata, data, name, np.arange(min(1, data.n_cells)))

    def cell_modality_weights(
        self,
        mdata: md.MuData | None = None,
        refine_epochs: int | None = None,
        write_obs: bool = True,
    ) -> pd.DataFrame:
        """Per cell, how much each modality determines its shared latent (weights summing to 1).

        Each modality's weight is how much better the cell's fitted shared latent explains that modality's data
        than the population's mean latent does (its reconstruction gain, normalised over the modalities;
        ``venncell.analysis.cell_weights`` gives the rule). Noisy, uninformative or corrupted data of a modality in a
        cell show as a low weight there.

        Parameters
        ----------
        mdata
            New cells (default: the training data, whose stage-1 latents are the reference; so are they when the
            training cells are passed, e.g. a copy or a subset of the training MuData). New cells must carry a
            training batch's label: the weights read the trained decoders, which know no other batch.
        refine_epochs
            New cells only: epochs of test-time refinement that fit their reference latents (None: 20).
        write_obs
            Store the weights as ``obs["venn_weight_<modality>"]`` of the cells' MuData (an earlier write's columns
            of other modalities are removed, with a warning).

        Returns
        -------
        A cells x modalities DataFrame; a modality the cell lacks has weight 0.
        """
        from venncell.analysis.cell_weights import cell_modality_weights

        self._require_trained()
        # the training cells however passed (the MuData itself, a copy, a subset, reordered) keep their
        # stage-1 latents as the reference, as get_latent_representation does
        rows = self._training_rows(mdata) if mdata is not None else None
        if (mdata is None or rows is not None) and refine_epochs is not None:
            raise VennCellInputError(
                f"cell_modality_weights(refine_epochs={refine_epochs}) on the training cells: their reference "
                "is their stage-1 latents, nothing is refined. Drop refine_epochs, or pass new cells as mdata."
            )
        refine_epochs = 20 if refine_epochs is None else refine_epochs
        if mdata is not None:
            check_range("refine_epochs (refine(epochs=...))", refine_epochs, 1, integer=True)
        # cells of new batches are refused below, with the fix
        data = self._data_for(mdata, warn_new_batches=False)
        if mdata is None:
            reference = stage1_latents(self.module, data)["shared"]
        elif rows is not None:
            population = stage1_latents(self.module, self.data)["shared"]
            reference = population[rows]
        else:
            # the weights read the trained decoders, which know the training batches only
            self._require_known_batches(data, "cell weights")
            reference = self._refine(data, None, refine_epochs)["shared"]
        self._warn_unfitted_batch_columns(data)
        # training cells, however many are passed, are weighed against the whole training population
        weights = cell_modality_weights(
            self.module, data, reference, population=population if rows is not None else None
        )
        if write_obs:
            target = self.mdata if mdata is None else mdata
            columns = [f"venn_weight_{m}" for m in weights.columns]
            drop_stale_keys(target.obs, recorded(target.uns, WEIGHTS_RECORD), columns, "obs")
            for m, column in zip(weights.columns, columns):
                target.obs[column] = weights[m].to_numpy()
            target.uns[WEIGHTS_RECORD] = columns
        return weights

    def _untrained_batch_cells(self, dec, data, cells: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Which of ``cells`` are of a training batch whose column in decoder ``dec`` never trained, and the names
        of those batches."""
        untrained = ~dec.batch_trained.numpy()
        hit = cells & (data.batch >= 0) & untrained[np.maximum(data.batch, 0)]
        return hit, [str(self.registry.batch_categories[c]) for c in np.unique(data.batch[hit])]

    def _warn_unfitted_batch_columns(self, data) -> None:
        """Cell weights read each modality through its decoder's column for the cell's batch: say so where no
        training cell of that batch was measured in the modality (``_why_unfitted``), whose column training never
        fitted."""
        if data.batch is None:
            return
        for m in self.specs:
            hit, names = self._untrained_batch_cells(
                self.module.shared_decoders[m], data, data.present(m)
            )
            if hit.any():
                warnings.warn(
                    f"{int(hit.sum())} cell(s) are of batch(es) {names[:5]}, in which no training cell was "
                    f"measured in '{m}' ({self._why_unfitted(m, data.batch[hit])}): their '{m}' weight reads a "
                    "batch effect training never fitted, so compare it only within such batches.",
                    VennCellInputWarning,
                    stacklevel=user_stacklevel(),
                )

    def _why_unfitted(self, m: str, codes: np.ndarray) -> str:
        """Why batches ``codes`` trained no column of ``m``'s decoders: their cells with ``m`` were all held out (a
        small batch: give it more cells), or the training data had none."""
        if self.data is None or self.data.batch is None:
            return "its cells with it were all held out, or the training data had none"
        held = np.isin(self.data.batch, np.unique(codes)) & self.data.present(m)
        if held.any():
            return "all its cells with it were held out; give such batches more cells or merge them with a like one"
        return f"the training data had no '{m}' in it"

    def plan_measurements(self, targets=None, features=None, **kwargs):
        """Which modalities (and which features of a panel) to measure, and which the others predict.

        For each target modality and each subset of the other modalities, the accuracy with which the subset
        predicts every target feature on held-out cells, against what the model explains when the target is
        measured; a verdict per feature (``predict``, ``measure`` or ``unexplained``) and per modality the
        fraction of its explainable signal that is recoverable without measuring it
        (``venncell.analysis.planner`` documents the rule).

        Parameters
        ----------
        targets
            Modalities to plan for (default: every one, or with ``features`` the modalities those features belong to).
        features
            A panel of target features (e.g. the proteins of a planned panel); default: all.
        **kwargs
            ``PlanConfig`` fields (``predict_min``, ``min_r2``, ``n_boot``, ``max_cells``, ...).

        Returns
        -------
        A ``PlanResult``: ``.summary`` (one row per target and source subset), ``.features[target]`` (ranked
        per-feature table), ``.write(dir)`` for CSV and JSON.
        """
        from venncell.analysis.planner import plan_measurements

        self._require_trained()
        data = self._require_data("plan measurements")
        return plan_measurements(self.module, data, self.is_train, targets, features, **kwargs)

    def enrich_regions(self, gene_sets=None, modalities=None, attribution=None, **kwargs):
        """Gene sets per Venn block: the features each latent block holds most of (and those moving along each
        latent direction) tested against gene-set collections.

        Parameters
        ----------
        gene_sets
            Bundled collection names (``GO_Biological_Process_2023``, ``KEGG_2021_Human``; needs
            ``pip install 'venncell[genesets]'``), paths of ``.gmt`` files and/or dicts ``{term: [genes]}``
            of your own; None = both bundled ones. Nothing is downloaded. A modality is tested when at least 10
            of its features are genes of the collections, and a set when between ``min_size`` (5) and
            ``max_size`` (500) of its genes are features of the modality.
        modalities
            Modalities to test; None = those whose features are gene symbols (RNA).
        attribution
            An ``AttributionResult`` of this model to reuse; None = computed here (features only, no markers).
        **kwargs
            ``EnrichmentConfig`` fields (``venncell.analysis.gene_sets``): ``method`` (``ora`` | ``prerank``),
            ``top_n``, ``min_size``, ``max_size``, ``fdr``, ``n_terms``, ``permutations``, ``seed``.

        Returns
        -------
        An ``EnrichmentResult``: ``.terms`` (every test), ``.top`` (best significant terms per block and
        direction), ``.notes``, ``.write(dir)``.
        """
        from venncell.analysis.block_enrichment import (
            check_modalities,
            enrich_blocks,
            enrichment_config,
        )

        self._require_trained()
        data = self._require_data("test gene sets per block")
        if gene_sets is not None:  # EnrichmentConfig takes one name or path as well as a list
            kwargs["gene_sets"] = gene_sets
        # every setting is checked before the attribution's slow steps
        if modalities is not None:
            kwargs["modalities"] = modalities
        cfg = enrichment_config(kwargs)
        self._check_modalities(cfg.modalities)
        check_modalities(self.specs, cfg)
        if attribution is None:
            attribution = self.attribution(markers=[], write_var=False, progress=False)
        return enrich_blocks(data, attribution, config=cfg)


def _failed_temporary_run(err: BaseException, run_dir: Path) -> None:
    """A failed run's temporary folder: removed when no checkpoint was written (nothing to resume), else named in
    the error (training's own errors name it already), which would otherwise leave it unseen in the temp folder."""
    if not any(run_dir.rglob("*.ckpt")):
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    if str(run_dir) in str(err):
        return
    kept = (
        f"VennCell: the run's checkpoints are kept in {run_dir}; model.train(run_dir='{run_dir}', resume=True, "
        "...) with the same training settings continues it, or delete the folder."
    )
    if hasattr(err, "add_note"):  # Python >= 3.11
        err.add_note(kept)
    else:
        warnings.warn(kept, VennCellInputWarning, stacklevel=3)


class _seeded:
    """Seeds torch's CPU generator for a block and restores its state after: building a model draws from it, and
    a constructor must not change the caller's random stream."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        torch.random.set_rng_state(self.state)


def _read_h5mu(path, backed: bool = False) -> md.MuData:
    from venncell.data.readers import read_h5mu

    return read_h5mu(path, backed=backed)


def _other_cells_message(names: np.ndarray, trained: np.ndarray, path: Path) -> str:
    """Why ``load(path, mdata)`` refuses mdata's cells (the stage-1 latents are one row per training cell, in
    training order), and the fix for each case."""
    new_cells = np.setdiff1d(names, trained)
    if not new_cells.size and len(names) == len(trained) and len(np.unique(names)) == len(names):
        return (
            "mdata holds the model's training cells in another order; the stage-1 latents are stored in training "
            f"order. Reorder them: `mdata = mdata[VennCell.load('{path}').train_obs_names].copy()`."
        )
    if not new_cells.size:
        what = f"{len(np.unique(names))} of the model's {len(trained)} training cells"
    else:
        what = f"{new_cells.size} cell(s) the model was not trained on (first: {new_cells[:3].tolist()})"
    return (
        f"mdata holds {what}; load(path, mdata) takes the training data as they were. Load without mdata and "
        "pass these cells to get_latent_representation(mdata=...) (the encoders' latents) instead."
    )


# where cell_modality_weights records the obs columns it wrote
WEIGHTS_RECORD = "venncell_weights"

# where each kind of setting goes, for a setting given to the wrong call
_SETTING_PLACES = {
    "VennCell.setup_mudata(mdata, ...)": {"batch_key", "modalities"},
    "VennCell(mdata, ...)": {f.name for f in fields(ModelConfig)},
    "model.train(...)": {f.name for f in fields(TrainConfig)} - {"seed"},
}
# each modality's options that no other call takes (private_dim is also the model's)
_PER_MODALITY = (set(MODALITY_OPTIONS) | set(IMAGE_OPTIONS)) - set().union(
    *_SETTING_PLACES.values()
)
# scvi-tools' and Lightning's names for the epochs
_EPOCH_NAMES = ("n_epochs", "max_epochs", "epochs")


def _check_placement(given: dict, call: str) -> None:
    """Settings that belong to another call (a training option given to the constructor, say) are named with the
    call they go to, before the unknown-option error's closest spellings mislead."""
    for key in given:
        if key in _PER_MODALITY:
            raise VennCellInputError(
                f"{key} is an option of each modality, given to setup_mudata: "
                f"`VennCell.setup_mudata(mdata, modalities={{'rna': {{'{key}': ...}}, ...}})`, not {call}."
            )
        if key in _EPOCH_NAMES:
            raise VennCellInputError(
                f"{call} takes no {key}: the two stages have their own epochs, "
                "model.train(stage1_epochs=..., stage2_epochs=...)."
            )
        if key in ("lr", "learning_rate"):
            raise VennCellInputError(
                f"{call} takes no {key}: the networks, the latent tables and the encoders have their own "
                "learning rates, model.train(lr_network=..., lr_latent=..., lr_encoder=...)."
            )
        for place, names in _SETTING_PLACES.items():
            if key in names and place != call:
                raise VennCellInputError(
                    f"{key} is a setting of {place}, not of {call}: give it there."
                )


def _check_path(path, call: str) -> None:
    """A folder path where one is due: a MuData or None there is named, not passed on to pathlib."""
    if not isinstance(path, str | os.PathLike):
        raise VennCellInputError(
            f"{call}: path must be a folder path (str or pathlib.Path), got {type(path).__name__}"
            + (
                " (the path comes first, the MuData after it as mdata=...)."
                if isinstance(path, md.MuData)
                else "."
            )
        )


def cell_totals(data: MultiModalData) -> dict[str, np.ndarray]:
    """Each tabular modality's sum of absolute values per training cell (NaN where a cell lacks it), as the model
    reads the data, in float64: kept with a saved model so that loading it with other values under the training
    cells' names is refused. Absolute values, so that standardised columns do not cancel to a near-0 total whose
    rounding depends on the matrix's layout."""
    out = {}
    for m, spec in data.specs.items():
        x = data.x.get(m)
        if spec.kind == "image" or x is None or data.backed:  # no matrix read up front
            continue
        t = np.full(data.n_cells, np.nan)
        present = data.present(m)
        t[present] = _abs_row_sums(x)[data.row[m][present]]
        out[m] = t
    return out


def _abs_row_sums(x, chunk: int = 4096) -> np.ndarray:
    """Row sums of |x| in float64; a dense matrix in row chunks, so no cells x features copy is made."""
    if sp.issparse(x):
        return np.asarray(abs(x).sum(1, dtype=np.float64)).ravel()
    x = np.asarray(x)
    return np.concatenate(
        [np.abs(x[i : i + chunk]).sum(1, dtype=np.float64) for i in range(0, len(x), chunk)]
        or [np.zeros(0)]
    )


def _check_same_data(totals: dict, saved: dict, path: Path) -> None:
    """``load(path, mdata)``: mdata's cells carry the training cells' names; their values must be the training
    values too, or every stage-1 latent would be another cell's."""
    for m in sorted(set(totals) & set(saved)):
        # a cell now without the modality holds no other values (its stage-1 latents stay its own)
        now = np.isfinite(totals[m])
        differ = now & ~np.isclose(totals[m], saved[m], rtol=1e-5, atol=1e-8)
        if differ.any():
            raise VennCellInputError(
                f"Modality '{m}': mdata's cells have the training cells' names but other data ({int(differ.sum())} "
                f"of {len(differ)} cells' totals differ from training), so the stored stage-1 latents are not "
                f"theirs. Load without mdata and embed them: `VennCell.load('{path}').get_latent_representation("
                "mdata)`; or pass the training data as they were."
            )


__all__ = ["VennCell", "atomic_write"]
