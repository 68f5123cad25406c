"""The user-facing model object, scverse style: setup, train, latents, prediction, save/load.

The Hydra CLI (``venncell.cli``) drives this same class, so both faces share one training path.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import asdict, fields
from pathlib import Path

import mudata as md
import numpy as np
import torch

from venncell.data.dataset import MultiModalData, make_loader
from venncell.data.spec import (KINDS, KIND_DEFAULT_LIKELIHOOD, ModalitySpec, default_transform, guess_kind, infer_likelihood,
                                not_counts_reason)
from venncell.data.spec import BINARY_LIKELIHOODS, TRANSFORMS
from venncell.data.validate import VennCellInputError, VennCellInputWarning, check_range, check_zero_variance_policy
from venncell.model.init import init_likelihoods, spectral_init
from venncell.model.venn import VennConfig, VennModule
from venncell.nn.likelihoods import LIKELIHOODS
from venncell.train.schedule import TrainConfig, run_two_stage

REGISTRY_KEY = "_venncell"
_MODALITY_KEYS = {"kind", "likelihood", "layer", "binarize", "private_dim", "weight", "zero_variance", "transform"}
_IMAGE_KEYS = {"obsm_key", "store", "channels"}  # kind: image (venncell.data.images)


class VennCell:
    """One shared latent plus one private latent per modality, learned in two stages.

    >>> VennCell.setup_mudata(mdata, modalities={"rna": "rna", "prot": "protein"})
    >>> model = VennCell(mdata, shared_dim=8, private_dim=4)
    >>> model.train()
    >>> mdata.obsm["X_venn_shared"] = model.get_latent_representation()
    """

    # ------------------------------------------------------------------ setup
    @staticmethod
    def setup_mudata(mdata: md.MuData, modalities: dict | list | None = None, batch_key: str | None = None) -> None:
        """Register which modality is which kind and how it is modelled.

        ``modalities`` maps a modality name to a kind (``"rna"``, ``"atac"``, ``"protein"``,
        ``"features"``) or to a dict with any of ``kind``, ``likelihood`` (``nb``, ``zinb``, ``nb_mixture``
        (totalVI-style protein background/foreground), ``bernoulli``, ``bernoulli_factors`` (ATAC with
        per-cell depth and per-peak factors, the ATAC default), ``gaussian`` or ``auto``), ``transform``
        (``clr``: muon-style CLR of protein counts, then ``gaussian``), ``layer`` (``None`` = ``.X``), ``binarize``, ``private_dim``,
        ``weight``, ``zero_variance`` (``warn`` | ``drop`` | ``keep`` features with zero variance).
        ``None`` registers every modality with its kind guessed from its name and its
        likelihood inferred from its values. The registry is stored in ``mdata.uns["_venncell"]``.
        Image modalities (kind ``"image"``) take ``obsm_key`` or ``store`` (a ``.npy``/``.zarr`` path) and
        ``channels`` instead of ``layer``/``likelihood``; see ``venncell.data.images.register_image``.
        """
        if not isinstance(mdata, md.MuData):
            raise VennCellInputError(f"setup_mudata needs a MuData, got {type(mdata).__name__}.")
        if modalities is None:
            modalities = list(mdata.mod)
        if isinstance(modalities, (list, tuple)):
            modalities = {m: {} for m in modalities}
        if len(modalities) < 2:
            raise VennCellInputError(
                f"VennCell needs at least two modalities, got {list(modalities)}; a MuData with one modality has "
                "no shared/private split to learn."
            )
        registry = {}
        for name, opts in modalities.items():
            if name not in mdata.mod:
                raise VennCellInputError(
                    f"Modality '{name}' is not in the MuData (it has {list(mdata.mod)}). Fix the name in `modalities`."
                )
            opts = {"kind": opts} if isinstance(opts, str) else dict(opts or {})
            unknown = set(opts) - _MODALITY_KEYS - _IMAGE_KEYS
            if unknown:
                raise VennCellInputError(f"Modality '{name}': unknown option(s) {sorted(unknown)}; use {sorted(_MODALITY_KEYS)}.")
            check_zero_variance_policy(name, opts.get("zero_variance", "warn"))
            kind = opts.get("kind") or guess_kind(name)
            if kind not in KINDS:
                raise VennCellInputError(f"Modality '{name}': kind '{kind}' is not one of {KINDS}.")
            a = mdata.mod[name]
            if kind == "image" or set(opts) & _IMAGE_KEYS:
                from venncell.data.images import register_image

                registry[name] = register_image(name, kind, a, opts)
                continue
            layer = opts.get("layer")
            if layer is not None and layer not in a.layers:
                raise VennCellInputError(
                    f"Modality '{name}': layer '{layer}' does not exist (layers: {list(a.layers) or 'none'})."
                )
            x = a.X if layer is None else a.layers[layer]
            if x is None:
                raise VennCellInputError(f"Modality '{name}': .X is empty; name a layer with the data.")
            lik = opts.get("likelihood") or "auto"
            transform = opts.get("transform")
            if transform not in TRANSFORMS:
                raise VennCellInputError(f"Modality '{name}': transform {transform!r} is not one of {list(TRANSFORMS)}.")
            if transform == "clr":
                if lik not in ("auto", "gaussian"):
                    raise VennCellInputError(
                        f"Modality '{name}': transform='clr' turns counts into real values, which need "
                        f"likelihood='gaussian' (got '{lik}'). Drop the likelihood or the transform."
                    )
                lik = "gaussian"
            if lik == "auto":
                from venncell.data.backed import head_rows  # a backed matrix: guess from its first rows only

                head = head_rows(x) if x.shape[0] and x.shape[1] else None
                lik = infer_likelihood(name, kind, head) if head is not None else KIND_DEFAULT_LIKELIHOOD[kind]
                # (head is None only where lik is the kind's default, so the reason is needed only with data)
                if lik == "gaussian" and KIND_DEFAULT_LIKELIHOOD[kind] != "gaussian" and (reason := not_counts_reason(head)):
                    # e.g. log-normalised .X handed over where raw counts were meant: say so rather than quietly
                    # fitting a different model
                    warnings.warn(
                        f"Modality '{name}' (kind '{kind}') has {reason}, so it is modelled as "
                        f"Gaussian, not with the {kind} count likelihood ('{KIND_DEFAULT_LIKELIHOOD[kind]}'). If these "
                        "are normalised values, give the raw counts (e.g. `layer='counts'`); to keep the Gaussian "
                        "model and silence this, register the modality with `likelihood='gaussian'`.",
                        VennCellInputWarning, stacklevel=2)
            if lik not in LIKELIHOODS:
                raise VennCellInputError(f"Modality '{name}': likelihood '{lik}' is not one of {sorted(LIKELIHOODS)}.")
            binarize = bool(opts.get("binarize", lik in BINARY_LIKELIHOODS and kind == "atac"))
            registry[name] = {
                "kind": kind, "likelihood": lik, "layer": layer, "binarize": binarize,
                "private_dim": opts.get("private_dim"), "weight": float(opts.get("weight", 1.0)),
                "zero_variance": opts.get("zero_variance", "warn"), "transform": transform,
            }
        if batch_key is not None and batch_key not in mdata.obs:
            raise VennCellInputError(f"batch_key '{batch_key}' is not a column of mdata.obs (columns: {list(mdata.obs)[:10]}).")
        mdata.uns[REGISTRY_KEY] = json.dumps({"modalities": registry, "batch_key": batch_key})

    @staticmethod
    def _registry(mdata: md.MuData) -> dict:
        if REGISTRY_KEY not in mdata.uns:
            VennCell.setup_mudata(mdata)
        return json.loads(mdata.uns[REGISTRY_KEY])

    # ------------------------------------------------------------------ construction
    def __init__(self, mdata: md.MuData | str | Path, shared_dim: int = 8, private_dim: int = 4,
                 validation_fraction: float = 0.1, seed: int = 0, backed: bool = False,
                 chunk_size: int | None = None, **model_kwargs):
        """``backed=True`` trains out of core: ``mdata`` is an .h5mu path or a MuData opened with
        ``mudata.read_h5mu(path, backed=True)``, and each modality's rows are read from disk per chunk of
        ``chunk_size`` cells (default 1024; see ``venncell.data.backed``)."""
        if backed and isinstance(mdata, (str, Path)):
            mdata = md.read_h5mu(str(mdata), backed=True)
        unknown = set(model_kwargs) - {f.name for f in fields(VennConfig)}
        if unknown:
            raise VennCellInputError(f"Unknown model option(s) {sorted(unknown)}; valid: {[f.name for f in fields(VennConfig)]}.")
        self.config = VennConfig(shared_dim=shared_dim, private_dim=private_dim, **model_kwargs)
        _check_config(self.config)
        check_range("validation_fraction", validation_fraction, 0.0, 0.9)
        reg = self._registry(mdata)
        specs = {
            name: ModalitySpec(name=name, kind=o["kind"], likelihood=o["likelihood"], layer=o["layer"],
                               binarize=o["binarize"], private_dim=o["private_dim"], weight=o["weight"],
                               zero_variance=o.get("zero_variance", "warn"), transform=o.get("transform"),
                               encoder_transform=default_transform(o["likelihood"], o["kind"]),
                               **{k: o[k] for k in ("image_key", "image_store", "channels") if k in o})
            for name, o in reg["modalities"].items()
        }
        for name, s in specs.items():
            if s.private_dim is not None:
                check_range(f"modalities.{name}.private_dim", s.private_dim, 1, integer=True)
        images = [name for name, s in specs.items() if s.kind == "image"]
        if self.config.joint_encoder and images:
            raise VennCellInputError(f"joint_encoder=True reads every modality's features side by side, but modality "
                                     f"{images[0]!r} is an image; leave joint_encoder off for image modalities (each "
                                     "keeps its own convolutional encoder).")
        self.mdata = mdata
        self.batch_key = reg["batch_key"]
        self.data = MultiModalData(mdata, specs, batch_key=self.batch_key, backed=backed, chunk_size=chunk_size)
        self.specs = specs
        self.seed = seed
        self.validation_fraction = validation_fraction
        torch.manual_seed(seed)
        self.module = VennModule(specs, self.data.n_cells, self.config, self.data.n_batches)
        init_likelihoods(self.module, self.data, seed=seed)
        if self.config.latent_init == "spectral":
            start = spectral_init(self.data, self.config.shared_dim, self.module.private_dims, seed=seed)
            if start is not None:
                self.module.set_latents(*start)
        rng = np.random.default_rng(seed)
        n_val = int(round(validation_fraction * self.data.n_cells))
        self.is_train = np.ones(self.data.n_cells, dtype=bool)
        self.is_train[rng.permutation(self.data.n_cells)[:n_val]] = False
        self.train_obs_names = self.data.obs_names
        self.history: dict = {}
        self.is_trained = False

    def __repr__(self) -> str:
        n = self.data.n_cells
        # partially paired data: how many cells each modality has, where not all
        mods = ", ".join(f"{m} ({s.kind}, {s.likelihood}, {s.n_features} features"
                         + (f", {k} of {n} cells" if (k := int(self.data.present(m).sum())) < n else "") + ")"
                         for m, s in self.specs.items())
        return (f"VennCell(shared_dim={self.config.shared_dim}, private_dims={self.module.private_dims}, "
                f"cells={self.data.n_cells}, modalities=[{mods}], trained={self.is_trained})")

    @property
    def registry(self) -> dict[str, dict]:
        """Per-modality kind, likelihood, preprocessing and feature names (what save() stores)."""
        return {m: s.to_dict() for m, s in self.specs.items()}

    # ------------------------------------------------------------------ training
    def train(self, stage1_epochs: int | None = None, stage2_epochs: int | None = None, batch_size: int | None = None,
              run_dir: str | Path | None = None, logger=None, resume: bool = False, **train_kwargs) -> dict:
        """Run stage 1 then stage 2 through Lightning. Extra keywords are ``TrainConfig`` fields
        (learning rates, accelerator, devices, progress_bar, ...) or go to ``lightning.Trainer``."""
        known = {f.name for f in fields(TrainConfig)}
        trainer_kwargs = {k: train_kwargs.pop(k) for k in list(train_kwargs) if k not in known}
        # None = TrainConfig's default, so the API and conf/trainer/default.yaml share one set of defaults
        given = {"stage1_epochs": stage1_epochs, "stage2_epochs": stage2_epochs, "batch_size": batch_size}
        train_kwargs.update({k: v for k, v in given.items() if v is not None})
        cfg = TrainConfig(seed=self.seed, trainer_kwargs=trainer_kwargs, **train_kwargs)
        check_range("stage1_epochs", cfg.stage1_epochs, 1, integer=True)
        check_range("stage2_epochs", cfg.stage2_epochs, 1, integer=True)
        check_range("batch_size", cfg.batch_size, 2, integer=True)
        check_range("num_workers", cfg.num_workers, 0, integer=True)
        if cfg.num_workers and self.data.chunk_size:
            raise VennCellInputError(
                f"num_workers={cfg.num_workers} with backed data: worker processes cannot share the open HDF5 file. "
                "Fix: num_workers=0 (trainer.num_workers=0 on the command line), or read the data into memory.")
        if run_dir is None:
            run_dir = tempfile.mkdtemp(prefix="venncell_")
        self.history = run_two_stage(self.module, self.data, self.is_train, cfg, run_dir,
                                     loggers=logger if logger is not None else False, resume=resume)
        self.is_trained = True
        return self.history

    # ------------------------------------------------------------------ inference
    def _data_for(self, mdata: md.MuData | None) -> MultiModalData:
        if mdata is None or mdata is self.mdata:
            return self.data
        return MultiModalData(mdata, self.specs, batch_key=self.batch_key, batch_categories=self.data.batch_categories,
                              fit_transform=False, allow_missing_modalities=True,
                              backed=bool(getattr(mdata, "isbacked", False)))

    @torch.no_grad()
    def _embed(self, data: MultiModalData, modalities=None, batch_size: int = 2048) -> dict[str, np.ndarray]:
        self.module.eval()
        chunks: dict[str, list] = {}
        for batch in make_loader(data, np.arange(data.n_cells), batch_size, shuffle=False):
            for k, v in self.module.embed(batch, modalities).items():
                chunks.setdefault(k, []).append(v.numpy())
        return {k: np.concatenate(v) for k, v in chunks.items()}

    def _stage1_latents(self) -> dict[str, np.ndarray]:
        out = {"shared": self.module.shared_table.weight.detach().numpy().copy()}
        for m, t in self.module.private_tables.items():
            z = t.weight.detach().numpy().copy()
            z[~self.data.present(m)] = np.nan
            out[f"private:{m}"] = z
        return out

    def get_latent_representation(self, mdata: md.MuData | None = None, block: str = "shared",
                                  modalities: list[str] | None = None, source: str = "encoder",
                                  refine_epochs: int = 0) -> np.ndarray:
        """Latents for every cell of ``mdata`` (default: the training data).

        block: ``"shared"``, ``"private:<modality>"`` or ``"all"`` (shared then every private, concatenated).
        modalities: which of the cell's modalities the encoders may use for the shared block (default all
        available). source: ``"encoder"`` (stage 2) or ``"stage1"`` (the optimised latents; training data only).
        Cells lacking a modality get NaN in that modality's private block. refine_epochs > 0: start from the
        encoder latents and refine them against the frozen decoders (see ``refine``).
        """
        self._require_trained()
        if refine_epochs and source != "encoder":
            raise VennCellInputError("refine_epochs refines encoder latents; use it with source='encoder'.")
        if modalities is not None:
            missing = [m for m in modalities if m not in self.specs]
            if missing:
                raise VennCellInputError(f"modalities {missing} are not in the model (it has {list(self.specs)}).")
        if source == "stage1":
            if mdata is not None and mdata is not self.mdata:
                raise VennCellInputError("source='stage1' exists only for the training cells; use source='encoder' "
                                         "(optionally with refine_epochs=N) for new cells.")
            lat = self._stage1_latents()
        elif source == "encoder":
            lat = self.refine(mdata, modalities, refine_epochs) if refine_epochs else self._embed(self._data_for(mdata), modalities)
        else:
            raise VennCellInputError(f"source must be 'encoder' or 'stage1', got {source!r}.")
        return _pick_block(lat, block, list(self.specs))

    def refine(self, mdata: md.MuData | None = None, modalities: list[str] | None = None, epochs: int = 20,
               batch_size: int = 256, lr_latent: float = 5e-2, seed: int | None = None) -> dict[str, np.ndarray]:
        """Test-time refinement: encoder latents of ``mdata``'s cells, then ``epochs`` of stage-1 optimisation of
        those latents with every network frozen (through ``Stage1Plan``). Only the ``modalities`` given (default
        all) drive it; other modalities' private blocks stay as the encoders gave them. Returns every block."""
        from venncell.train.refine import refine_latents

        self._require_trained()
        check_range("refine_epochs (refine(epochs=...))", epochs, 1, integer=True)
        use = list(modalities) if modalities is not None else list(self.specs)
        missing = [m for m in use if m not in self.specs]
        if missing:
            raise VennCellInputError(f"modalities {missing} are not in the model (it has {list(self.specs)}).")
        data = self._data_for(mdata)
        start = self._embed(data, use)
        return refine_latents(self.module, data, start, use, epochs, batch_size, lr_latent,
                              self.seed if seed is None else seed)

    def predict_modality(self, mdata: md.MuData | None = None, source: list[str] | str = ("rna",),
                         target: str = "protein", scale: str = "normalised") -> np.ndarray:
        """Expected values of ``target`` predicted from the ``source`` modalities only.

        The shared latent is encoded from the sources; the target's shared-only decoder maps it to the
        target (its private latent is, by construction, unknowable from other modalities).
        ``scale``: ``"normalised"`` (proportions for counts, probabilities for binary, values for
        Gaussian) or ``"counts"`` (times the median training library size of the target). ``nb_mixture``
        gives the denoised (background-free) protein counts on both scales; ``bernoulli_factors`` gives the
        probabilities of a cell at the median training depth; ``zinb`` includes the dropout.
        """
        self._require_trained()
        source = [source] if isinstance(source, str) else list(source)
        if target not in self.specs:
            raise VennCellInputError(f"target '{target}' is not a modality of the model ({list(self.specs)}).")
        if target in source:
            raise VennCellInputError(f"target '{target}' is also a source; cross-modal prediction needs them disjoint.")
        data = self._data_for(mdata)
        z = self._embed(data, source)["shared"]
        if np.isnan(z).any():
            raise VennCellInputError(f"{int(np.isnan(z).any(1).sum())} cell(s) have none of the source modalities {source}.")
        dec = self.module.shared_decoders[target]
        out = []
        with torch.no_grad():
            for start in range(0, len(z), 4096):
                zb = torch.as_tensor(z[start:start + 4096])
                b = None if data.batch is None else torch.as_tensor(data.batch[start:start + 4096])
                out.append(dec.likelihood.normalised_mean(dec(zb, b)).numpy())
        pred = np.concatenate(out)
        if scale == "counts":
            if self.specs[target].likelihood not in ("nb", "zinb", "nb_mixture"):
                raise VennCellInputError(f"scale='counts' needs a count modality; '{target}' is {self.specs[target].likelihood}.")
            if self.specs[target].likelihood != "nb_mixture":  # nb_mixture's normalised scale is already counts
                pred = pred * float(np.median(self.data.library[target]))
        elif scale != "normalised":
            raise VennCellInputError(f"scale must be 'normalised' or 'counts', got {scale!r}.")
        return pred

    def write_latents(self, mdata: md.MuData | None = None, modalities: list[str] | None = None,
                      refine_epochs: int = 0) -> md.MuData:
        """Put the latents where scverse tools look: ``mdata.obsm["X_venn_shared"]`` and
        ``mdata.obsm["X_venn_private_<mod>"]`` (plus ``*_stage1`` for the training data)."""
        target = self.mdata if mdata is None else mdata
        enc = self.refine(mdata, modalities, refine_epochs) if refine_epochs else self._embed(self._data_for(mdata), modalities)
        target.obsm["X_venn_shared"] = enc["shared"]
        for m in self.specs:
            target.obsm[f"X_venn_private_{m}"] = enc[f"private:{m}"]
        if mdata is None or mdata is self.mdata:
            st1 = self._stage1_latents()
            target.obsm["X_venn_shared_stage1"] = st1["shared"]
            for m in self.specs:
                target.obsm[f"X_venn_private_{m}_stage1"] = st1[f"private:{m}"]
            target.obs["venn_split"] = np.where(self.is_train, "train", "validation")
        return target

    def _require_trained(self):
        if not self.is_trained:
            raise RuntimeError("The model is not trained yet; call model.train() first (or VennCell.load()).")

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, overwrite: bool = True) -> None:
        """Weights, hyper-parameters, modality registry (with preprocessing and feature names).

        Written to a temporary folder and renamed into place, so a crash never leaves half a model.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True.")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
        meta = {
            "format": 1,
            "config": asdict(self.config),
            "specs": self.registry,
            "batch_key": self.batch_key,
            "batch_categories": self.data.batch_categories,
            "seed": self.seed,
            "validation_fraction": self.validation_fraction,
            "n_cells": self.data.n_cells,
            "history": self.history,
        }
        (tmp / "venncell.json").write_text(json.dumps(meta, indent=1))
        torch.save(self.module.state_dict(), tmp / "model.pt")
        np.savez_compressed(tmp / "cells.npz", obs_names=self.train_obs_names, is_train=self.is_train)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            _rmtree(old)
        else:
            os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path, mdata: md.MuData | None = None) -> VennCell:
        """Load a saved model. With ``mdata`` (the training data), stage-1 latents and the split line up
        with it; without, the model embeds and predicts for any new data."""
        path = Path(path)
        meta_file = path / "venncell.json"
        if not meta_file.exists():
            raise VennCellInputError(f"{path} is not a saved VennCell model (no venncell.json).")
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as e:
            raise VennCellInputError(f"{meta_file} is unreadable or truncated: {e}.") from None
        if meta.get("format") != 1:
            raise VennCellInputError(f"{path}: model format {meta.get('format')} is not supported by this VennCell.")
        self = cls.__new__(cls)
        self.config = VennConfig(**meta["config"])
        self.specs = {m: ModalitySpec.from_dict(d) for m, d in meta["specs"].items()}
        self.batch_key = meta["batch_key"]
        self.seed = meta["seed"]
        self.validation_fraction = meta["validation_fraction"]
        self.history = meta.get("history", {})
        cells = np.load(path / "cells.npz", allow_pickle=False)
        self.train_obs_names = cells["obs_names"]
        self.is_train = cells["is_train"]
        self.module = VennModule(self.specs, meta["n_cells"], self.config, len(meta["batch_categories"] or []))
        try:
            state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
            self.module.load_state_dict(state)
        except (RuntimeError, EOFError, OSError) as e:
            raise VennCellInputError(f"{path / 'model.pt'} is unreadable or does not match the saved config: {e}") from None
        self.module.eval()
        self.is_trained = True
        if mdata is not None:
            names = np.asarray(mdata.obs_names).astype(str)
            if len(names) != len(self.train_obs_names) or (names != self.train_obs_names).any():
                raise VennCellInputError("mdata's cells differ from the training cells; load without mdata and pass "
                                         "the new data to get_latent_representation(mdata=...) instead.")
            self.mdata = mdata
            self.data = MultiModalData(mdata, self.specs, batch_key=self.batch_key,
                                       batch_categories=meta["batch_categories"], fit_transform=False,
                                       backed=bool(getattr(mdata, "isbacked", False)))
        else:
            self.mdata = None
            self.data = _NoData(meta["batch_categories"])
        return self

    # ------------------------------------------------------------------ analysis
    def attribution(self, markers=None, **kwargs):
        """Which latent block carries each feature and marker: shared or a modality's private one.

        ``markers``: ``.obs`` columns or features (``"CD4"``, ``"protein:CD4"``); ``None`` = the categorical
        ``.obs`` columns. Writes ``venn_shared_fraction`` etc. into ``mdata[mod].var`` and returns an
        ``AttributionResult`` (``.markers`` holds the verdicts). Keywords: see ``venncell.analysis.attribution``.
        """
        from venncell.analysis.attribution import attribute

        return attribute(self, markers, **kwargs)


class _NoData:
    """Placeholder for a model loaded without its training data."""

    def __init__(self, batch_categories):
        self.batch_categories = batch_categories
        self.n_batches = len(batch_categories or [])

    def __getattr__(self, item):
        raise RuntimeError("This model was loaded without its training data; pass mdata= to the method or to load().")


def _pick_block(lat: dict[str, np.ndarray], block: str, modalities: list[str]) -> np.ndarray:
    if block == "all":
        return np.hstack([lat["shared"]] + [lat[f"private:{m}"] for m in modalities])
    if block in lat:
        return lat[block]
    raise VennCellInputError(f"block must be 'shared', 'all' or one of {[f'private:{m}' for m in modalities]}; got {block!r}.")


def _check_config(cfg: VennConfig) -> None:
    check_range("shared_dim", cfg.shared_dim, 1, integer=True)
    check_range("private_dim", cfg.private_dim, 1, integer=True)
    check_range("hidden", cfg.hidden, 1, integer=True)
    check_range("encoder_hidden", cfg.encoder_hidden, 1, integer=True)
    check_range("n_layers", cfg.n_layers, 0, integer=True)
    check_range("dropout", cfg.dropout, 0.0, 0.99)
    check_range("encoder_dropout", cfg.encoder_dropout, 0.0, 0.99)
    if cfg.latent_init not in ("spectral", "random"):
        raise VennCellInputError(f"Config value latent_init={cfg.latent_init!r} must be 'spectral' or 'random'.")
    if cfg.latent_posterior not in ("point", "variational"):
        raise VennCellInputError(f"Config value latent_posterior={cfg.latent_posterior!r} must be 'point' (a latent per "
                                 "cell) or 'variational' (a Gaussian per cell with a KL to the prior).")
    check_range("latent_init_logvar", cfg.latent_init_logvar, -12.0, 4.0)
    check_range("consistency_cells", cfg.consistency_cells, 0, integer=True)
    if 0 < cfg.consistency_cells < 8:
        raise VennCellInputError(f"Config value consistency_cells={cfg.consistency_cells} is too few cells to estimate "
                                 "the unexplained fraction; use 0 (every cell of the batch) or at least 8.")
    check_range("leakage_every", cfg.leakage_every, 1, integer=True)
    for name in ("latent_noise", "latent_l2", "kl_weight", "shared_only_weight", "consistency_weight",
                 "independence_weight", "stage2_recon_weight"):
        check_range(name, getattr(cfg, name), 0.0)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def atomic_write_h5mu(mdata: md.MuData, path: str | Path) -> None:
    """Write to a temporary file beside the target and rename: readers see the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata.write(str(tmp))
    os.replace(tmp, path)


__all__ = ["VennCell", "atomic_write_h5mu"]
