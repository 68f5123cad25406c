"""``venncell-embed`` and ``venncell-predict``: apply a saved model to new cells."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from venncell.cli.common import (
    CONFIG_PATH,
    check_output_dir,
    check_overrides,
    data_path,
    friendly,
    log,
)
from venncell.data.files import atomic_write
from venncell.data.readers import read_h5mu
from venncell.data.validate import VennCellInputError, check_range
from venncell.model import VennCell


def _load_for_apply(cfg: DictConfig):
    if not cfg.get("model_dir") or cfg.model_dir == "???":
        raise VennCellInputError("model_dir=DIR is required (a run's <run_dir>/model folder).")
    model = VennCell.load(cfg.model_dir)
    return model, read_h5mu(data_path(cfg))


def _output(run_dir: Path, output: str) -> Path:
    """Where ``output=`` goes: inside the run's folder unless absolute. Checked before any work, so that an output
    that cannot be written fails first; its missing folders are made when it is written, as model.save makes its
    parents."""
    out = run_dir / output
    existing = out.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OSError(errno.ENOTDIR, "Not a directory", str(existing))
    if not os.access(existing, os.W_OK):
        raise OSError(errno.EACCES, "Permission denied", str(existing))
    return out


def _write(mdata, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(mdata, out)


def run_embed(cfg: DictConfig, run_dir: Path) -> Path:
    """Shared and private latents of new cells -> ``<run_dir>/<output>``."""
    refine = 0 if cfg.get("refine_epochs") is None else cfg.refine_epochs
    # checked before any conversion: 2.9 or true are refused, not rounded
    check_range("refine_epochs", refine, 0, integer=True)
    out = _output(run_dir, cfg.output)
    model, mdata = _load_for_apply(cfg)
    mods = cfg.get("modalities")
    if mods is not None:  # modalities=rna (a string) as [rna]; [] is refused by the model
        mods = [mods] if isinstance(mods, str) else list(mods)
    model.write_latents(mdata, modalities=mods, refine_epochs=refine)
    _write(mdata, out)
    log.info("Wrote %s", out)
    return out


def run_predict(cfg: DictConfig, run_dir: Path) -> Path:
    """One modality of new cells predicted from others -> ``obsm["X_venn_predicted_<target>"]`` of the output."""
    out = _output(run_dir, cfg.output)
    model, mdata = _load_for_apply(cfg)
    source = [cfg.source] if isinstance(cfg.source, str) else list(cfg.source)
    pred = model.predict_modality(mdata, source=source, target=cfg.target, scale=cfg.scale)
    key = f"X_venn_predicted_{cfg.target}"
    mdata.obsm[key] = pred
    mdata.uns["venn_predicted_features"] = {cfg.target: model.specs[cfg.target].feature_names}
    _write(mdata, out)
    log.info("Wrote %s (obsm['%s'])", out, key)
    return out


@hydra.main(config_path=CONFIG_PATH, config_name="embed", version_base="1.3")
def _embed_app(cfg: DictConfig) -> None:
    friendly(run_embed)(cfg, Path(HydraConfig.get().runtime.output_dir))


@hydra.main(config_path=CONFIG_PATH, config_name="predict", version_base="1.3")
def _predict_app(cfg: DictConfig) -> None:
    friendly(run_predict)(cfg, Path(HydraConfig.get().runtime.output_dir))


def embed() -> None:
    """Console entry point of venncell-embed."""
    check_output_dir(sys.argv[1:])
    check_overrides(sys.argv[1:], "embed")
    _embed_app()


def predict() -> None:
    """Console entry point of venncell-predict."""
    check_output_dir(sys.argv[1:])
    check_overrides(sys.argv[1:], "predict")
    _predict_app()
