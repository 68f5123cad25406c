"""Hydra entry points: ``venncell-train``, ``venncell-embed``, ``venncell-predict``.

Each is a thin layer over ``venncell.api.VennCell``; there is no second training loop.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
import mudata as md
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from venncell.api import VennCell, atomic_write_h5mu
from venncell.data.synthetic import make_synthetic, truth_from_mudata
from venncell.data.validate import VennCellInputError

log = logging.getLogger("venncell")


def config_dir() -> str:
    """The ``conf/`` folder: shipped inside the package (wheel) or beside it (editable checkout)."""
    here = Path(__file__).resolve().parent
    for cand in (here / "conf", here.parent / "conf"):
        if (cand / "config.yaml").exists():
            return str(cand)
    raise FileNotFoundError("VennCell's Hydra configs (conf/config.yaml) were not found next to the package.")


def read_mudata(path: str, backed: bool = False) -> md.MuData:
    p = Path(path)
    if not p.exists():
        raise VennCellInputError(f"data.path={path}: no such file.")
    try:
        if p.suffix == ".h5ad":
            raise VennCellInputError(f"data.path={path} is a single AnnData; VennCell needs a MuData (.h5mu) with "
                                     "two or more modalities (build one with `mudata.MuData({'rna': a, 'prot': b})`).")
        return md.read_h5mu(str(p), backed=backed)
    except VennCellInputError:
        raise
    except Exception as e:  # h5py raises several types for damaged files
        raise VennCellInputError(f"data.path={path} could not be read as .h5mu (unreadable or truncated): {e}") from None


def data_path(cfg: DictConfig) -> str:
    """``data.path``, or a one-line error when it was not given (omegaconf's would be a traceback)."""
    if "path" not in cfg.data or OmegaConf.is_missing(cfg.data, "path") or cfg.data.path is None:
        raise VennCellInputError("data.path is not set: name the MuData file to read, e.g. "
                                 "`data=mudata data.path=my.h5mu`.")
    return str(cfg.data.path)


def load_data(cfg: DictConfig) -> md.MuData:
    d = cfg.data
    if d.name == "synthetic":
        mdata, _ = make_synthetic(n_cells=d.n_cells, modalities=dict(d.modalities), shared_dim=d.true_shared_dim,
                                  private_dim=d.true_private_dim, n_clusters=d.n_clusters, seed=d.seed,
                                  n_batches=d.get("n_batches", 0), batch_effect=d.get("batch_effect", 1.0))
        return mdata
    if d.name == "mudata":
        return read_mudata(data_path(cfg), backed=bool(d.get("backed", False)))
    raise VennCellInputError(f"data.name={d.name!r} is not known; use data=synthetic or data=mudata.")


def make_loggers(cfg: DictConfig, run_dir: Path):
    """A factory: one logger per stage so each stage's CSV has its own step axis."""
    kind = cfg.logger.kind
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return lambda stage: CSVLogger(save_dir=str(run_dir), name="logs", version=stage)
    if kind == "wandb":  # one W&B run for both stages; wandb is imported only here
        from venncell.tracking import wandb_logger_factory

        return wandb_logger_factory(cfg, run_dir)
    raise VennCellInputError(f"logger.kind={kind!r} is not known; use logger=csv, logger=wandb or logger=none.")


def _model_kwargs(cfg: DictConfig) -> dict:
    m = OmegaConf.to_container(cfg.model, resolve=True)
    m.pop("name", None)
    return m


def model_preset(name: str) -> dict:
    """The VennCell keywords that ``conf/model/<name>.yaml`` changes on top of the defaults (``model=venncell``).

    For Python callers (benchmarks, experiments, tests) that want a preset without the CLI; not inside a Hydra app.
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        base, preset = (_model_kwargs(compose("config", overrides=[f"model={n}"])) for n in ("venncell", name))
    return {k: v for k, v in preset.items() if base.get(k) != v}


def _train_kwargs(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.trainer, resolve=True)


def run_train(cfg: DictConfig, run_dir: Path) -> dict:
    """Everything ``venncell-train`` does, callable from Python (tests, sweeps)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    mdata = load_data(cfg)
    register = cfg.data.get("register")
    VennCell.setup_mudata(mdata, modalities=OmegaConf.to_container(register) if register else None,
                          batch_key=cfg.data.get("batch_key"))
    backed = bool(getattr(mdata, "isbacked", False))
    model = VennCell(mdata, validation_fraction=cfg.data.validation_fraction, seed=cfg.seed, backed=backed,
                     chunk_size=cfg.data.get("chunk_size") if backed else None, **_model_kwargs(cfg))
    log.info("%s", model)
    history = model.train(run_dir=run_dir, logger=make_loggers(cfg, run_dir), resume=cfg.resume, **_train_kwargs(cfg))
    if history.get("ddp", {}).get("global_rank", 0) != 0:
        # a DDP worker (Lightning re-ran this command for it): rank 0 holds the gathered model and writes outputs
        return {"history": history, "model": repr(model)}
    model.save(run_dir / "model")
    model.write_latents()
    metrics = {"history": history, "model": repr(model)}
    truth = truth_from_mudata(mdata)
    if truth is not None and cfg.evaluate_recovery:
        from venncell.analysis.recovery import evaluate_recovery

        metrics["recovery"] = {}
        for source in ("encoder", "stage1"):
            learned = {"shared": model.get_latent_representation(block="shared", source=source)}
            for m in model.specs:
                learned[f"private:{m}"] = model.get_latent_representation(block=f"private:{m}", source=source)
            metrics["recovery"][source] = evaluate_recovery(learned, truth.blocks())
        log.info("recovery (kNN R^2, encoder latents): %s", metrics["recovery"]["encoder"]["knn"]["summary"])
    atomic_write_json(metrics, run_dir / "metrics.json")
    if cfg.report:  # before venn.h5mu is written, so that it carries the venn_* .var columns
        from venncell.cli_report import write_run_report
        write_run_report(model, run_dir)
    if backed:  # copying the out-of-core input into the run folder would defeat the point: latents only
        import anndata as ad

        ad.AnnData(obs=mdata.obs[[]].assign(venn_split=mdata.obs["venn_split"]),
                   obsm={k: v for k, v in mdata.obsm.items() if k.startswith("X_venn")}).write_h5ad(run_dir / "venn_latents.h5ad")
    else:
        atomic_write_h5mu(mdata, run_dir / "venn.h5mu")
    from venncell.tracking import finish_run

    finish_run(cfg, run_dir, metrics)  # keep last: logs recovery and <run_dir>/figures/*.png to W&B, closes the run
    log.info("Wrote %s", run_dir)
    return metrics


def atomic_write_json(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _objective(metrics: dict, key: str) -> float:
    flat = {**metrics["history"].get("stage1", {}), **metrics["history"].get("stage2", {})}
    if key in flat:
        return float(flat[key])
    rec = metrics.get("recovery", {}).get("encoder", {}).get("knn", {}).get("summary", {})
    if key in rec:
        return float(rec[key])
    raise KeyError(f"objective {key!r} not among the run's metrics ({sorted(flat)[:10]} ...)")


def _in_multirun() -> bool:
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _log_to_files(message: str) -> None:
    """An ERROR record for the run's log file only (sweep summaries read a failed job's error there); the terminal
    gets the one stderr line, not the same message twice."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for logger in (log, logging.getLogger()):
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)


def _friendly(fn):
    """Turn VennCell's input errors into one clear line instead of a traceback."""

    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VennCellInputError as e:
            _log_to_files(f"{e}")
            print(f"venncell: error: {e}", file=sys.stderr)
            if _in_multirun():  # an exception (not an exit) lets Hydra record it and run the other jobs
                raise
            raise SystemExit(2) from None

    return wrapper


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def train(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = _friendly(run_train)(cfg, run_dir)
    return _objective(metrics, cfg.objective)


def _load_for_apply(cfg: DictConfig):
    if not cfg.get("model_dir"):
        raise VennCellInputError("model_dir=DIR is required (a run's <run_dir>/model folder).")
    model = VennCell.load(cfg.model_dir)
    mdata = read_mudata(data_path(cfg))
    return model, mdata


def run_embed(cfg: DictConfig, run_dir: Path) -> Path:
    model, mdata = _load_for_apply(cfg)
    mods = list(cfg.modalities) if cfg.get("modalities") else None
    model.write_latents(mdata, modalities=mods, refine_epochs=int(cfg.get("refine_epochs") or 0))
    out = run_dir / cfg.output
    atomic_write_h5mu(mdata, out)
    log.info("Wrote %s", out)
    return out


def run_predict(cfg: DictConfig, run_dir: Path) -> Path:
    model, mdata = _load_for_apply(cfg)
    source = list(cfg.source)
    pred = model.predict_modality(mdata, source=source, target=cfg.target, scale=cfg.scale)
    key = f"X_venn_predicted_{cfg.target}"
    mdata.obsm[key] = pred
    mdata.uns["venn_predicted_features"] = {cfg.target: list(model.specs[cfg.target].features)}
    out = run_dir / cfg.output
    atomic_write_h5mu(mdata, out)
    log.info("Wrote %s (obsm['%s'])", out, key)
    return out


@hydra.main(config_path=config_dir(), config_name="embed", version_base="1.3")
def embed(cfg: DictConfig) -> None:
    _friendly(run_embed)(cfg, Path(HydraConfig.get().runtime.output_dir))


@hydra.main(config_path=config_dir(), config_name="predict", version_base="1.3")
def predict(cfg: DictConfig) -> None:
    _friendly(run_predict)(cfg, Path(HydraConfig.get().runtime.output_dir))
