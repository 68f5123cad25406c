"""The command line's configuration: Hydra structured configs built from the package's own dataclasses, so every
default is written once (``ModelConfig``, ``TrainConfig``, ``AttributionConfig``) and checked in one place (their
``__post_init__``, run when the CLI turns a config into an object).

Groups: ``data`` (synthetic, mudata), ``model`` (``venncell.module.config.PRESETS``: venncell, apollo, fast, ...),
``trainer`` (default, fast, ddp, ddp_cpu: ``venncell.train.config.PRESETS``), ``logger`` (csv, wandb, none).
``conf/config.yaml`` picks one of each and holds the run's top-level keys and Hydra's own settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from venncell.analysis.attribution import AttributionConfig
from venncell.analysis.gene_sets import EnrichmentConfig
from venncell.analysis.planner import PlanConfig
from venncell.data.samplers import DEFAULT_CHUNK_SIZE
from venncell.data.split import VALIDATION_FRACTION
from venncell.data.validate import VennCellInputError, check_range, config_from
from venncell.module.config import PRESETS as MODEL_PRESETS
from venncell.module.config import ModelConfig
from venncell.train.config import PRESETS as TRAIN_PRESETS
from venncell.train.config import TrainConfig


@dataclass
class MuDataConfig:
    """A user's MuData (.h5mu). Every modality is used unless ``register`` lists some; ``register`` takes
    ``VennCell.setup_mudata``'s per-modality options, e.g. ``{rna: {kind: rna, layer: counts}, adt: protein}``.
    ``backed``: train out of core, reading rows from the file per chunk of ``chunk_size`` cells (the run then writes
    venn_latents.h5ad, latents only, instead of a copy of the input). ``build``: the command that makes ``path``
    (an ``experiment=`` preset's), shown when the file is missing."""

    name: str = "mudata"
    path: Optional[str] = None
    build: Optional[str] = None
    # Any, not Optional[dict]: Hydra cannot merge a command-line dict into a typed None (data_settings checks it)
    register: Any = None
    batch_key: Optional[str] = None
    # modalities stained with different panels per batch: venncell.data.split_panels, before set-up
    split_panels: Any = None
    validation_fraction: float = VALIDATION_FRACTION
    backed: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE


@dataclass
class SyntheticConfig:
    """The built-in default: paired RNA + protein + ATAC generated from known shared and private factors. Every
    generator key left null takes ``venncell.make_synthetic``'s default (its signature is the one place they are
    written): ``n_cells``, ``modalities`` ({name: features}), ``shared_dim`` / ``private_dim`` (the true factors'),
    ``n_clusters``, ``n_batches`` (>= 2 adds a technical batch shift to every modality), ``batch_effect``,
    ``region_factors`` ({"protein+rna": 2}: factors shared by some modalities only, for ``model.venn_regions``),
    ``seed``."""

    name: str = "synthetic"
    n_cells: Optional[int] = None
    modalities: Any = None
    shared_dim: Optional[int] = None
    private_dim: Optional[int] = None
    n_clusters: Optional[int] = None
    n_batches: Optional[int] = None
    batch_effect: Optional[float] = None
    region_factors: Any = None
    seed: Optional[int] = None
    batch_key: Optional[str] = None
    validation_fraction: float = VALIDATION_FRACTION
    # Any, not Optional[dict]: Hydra cannot merge a command-line dict into a typed None (data_settings checks it)
    register: Any = None


@dataclass
class LoggerConfig:
    """``kind``: csv (one metrics.csv per stage), wandb (one offline W&B run, ``wandb sync`` later) or none."""

    kind: str = "csv"
    project: str = "venncell"
    mode: str = "offline"
    entity: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class ReportConfig:
    """``venncell-report``'s settings (see conf/report.yaml for its usage)."""

    run_dir: str = "???"
    markers: Optional[Any] = None
    umap: bool = True
    write_h5mu: bool = True
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    plan: bool = False  # also the measure-or-predict plan (plan_*.csv, a report section)
    planner: PlanConfig = field(default_factory=PlanConfig)
    enrich: bool = (
        False  # also gene sets per block (enrichment_*.csv, a report section; venncell[genesets])
    )
    enrichment: EnrichmentConfig = field(default_factory=EnrichmentConfig)


def register_configs() -> None:
    """Put every group's nodes into Hydra's ConfigStore (called by each CLI entry point before Hydra runs)."""
    cs = ConfigStore.instance()
    cs.store(group="data", name="mudata", node=MuDataConfig)
    cs.store(group="data", name="synthetic", node=SyntheticConfig)
    for name, overrides in MODEL_PRESETS.items():
        cs.store(group="model", name=name, node=replace(ModelConfig(), **overrides))
    for name, overrides in TRAIN_PRESETS.items():
        cs.store(
            group="trainer", name=name, node=_without_seed(replace(TrainConfig(), **overrides))
        )
    cs.store(group="logger", name="csv", node=LoggerConfig("csv"))
    cs.store(group="logger", name="wandb", node=LoggerConfig("wandb"))
    cs.store(group="logger", name="none", node=LoggerConfig("none"))
    cs.store(name="report_schema", node=ReportConfig)


def _without_seed(train: TrainConfig):
    """The trainer group without ``seed``: a run's one seed is the top-level ``seed=`` (model and training), and a
    ``trainer.seed=`` beside it would be ignored."""
    node = OmegaConf.structured(train)
    OmegaConf.set_struct(node, False)
    del node["seed"]
    OmegaConf.set_struct(node, True)
    return node


def to_object(cls, node) -> Any:
    """A dataclass from a (resolved) config node; its ``__post_init__`` checks every value, so a bad setting is a
    one-line error naming it."""
    from omegaconf import OmegaConf

    values = (
        OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
    )
    return config_from(cls, values, cls.__name__)


def data_settings(cfg) -> dict:
    """The data group as a dict, its shared numbers checked and ``register`` a plain list or dict (or None)."""
    d = dict(cfg)
    check_range(
        "data.validation_fraction", d.get("validation_fraction", VALIDATION_FRACTION), 0.0, 0.9
    )
    register = d.get("register")
    if OmegaConf.is_config(register):
        register = OmegaConf.to_container(register, resolve=True)
    if register is not None and not isinstance(register, (dict, list)):
        raise VennCellInputError(
            f"data.register={register!r} must list the modalities to use, e.g. data.register=[rna,protein], or "
            "give their options: data.register='{rna: {kind: rna, layer: counts}, adt: protein}'."
        )
    d["register"] = register or None
    split = d.get("split_panels")
    if OmegaConf.is_config(split):
        split = OmegaConf.to_container(split, resolve=True)
    if isinstance(split, str):
        split = [split]
    if split is not None and not (
        isinstance(split, list) and all(isinstance(n, str) for n in split)
    ):
        raise VennCellInputError(
            f"data.split_panels={split!r} must list modalities, e.g. data.split_panels=[adt]."
        )
    d["split_panels"] = split or []
    if d.get("name") == "mudata":
        check_range("data.chunk_size", d.get("chunk_size", DEFAULT_CHUNK_SIZE), 1, integer=True)
    return d


__all__ = [
    "LoggerConfig",
    "MuDataConfig",
    "ReportConfig",
    "SyntheticConfig",
    "data_settings",
    "register_configs",
    "to_object",
]
