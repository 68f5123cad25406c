"""Every shipped Hydra config composes, and every key it sets is one the code reads and accepts: a typo in a preset
or an experiment (``model.kl_wieght``) fails here, not only when someone runs that experiment on its data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from venncell.cli.store import data_settings, register_configs, to_object
from venncell.data.registry import IMAGE_OPTIONS, MODALITY_OPTIONS
from venncell.module.config import PRESETS as MODEL_PRESETS
from venncell.module.config import ModelConfig
from venncell.train.config import PRESETS as TRAIN_PRESETS
from venncell.train.config import TrainConfig

register_configs()
EXPERIMENTS = sorted(
    p.stem
    for p in (Path(__file__).resolve().parents[2] / "venncell" / "conf" / "experiment").glob(
        "*.yaml"
    )
)
CHOICES = (
    [("model", n) for n in MODEL_PRESETS]
    + [("trainer", n) for n in TRAIN_PRESETS]
    + [("logger", n) for n in ("csv", "wandb", "none")]
    + [("data", n) for n in ("synthetic", "mudata")]
    + [("experiment", n) for n in EXPERIMENTS]
)


def _compose(overrides, name="config"):
    with initialize_config_module(config_module="venncell.conf", version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.mark.parametrize("group,name", CHOICES, ids=[f"{g}={n}" for g, n in CHOICES])
def test_config_composes_to_known_keys(group, name):
    cfg = _compose([f"{group}={name}"])
    to_object(ModelConfig, cfg.model)  # unknown keys and out-of-range values raise here
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert set(trainer) <= {f.name for f in dataclasses.fields(TrainConfig)}, set(trainer)
    to_object(TrainConfig, cfg.trainer)
    data_settings(cfg.data)
    register = cfg.data.get("register")
    for m, entry in (OmegaConf.to_container(register) if register else {}).items():
        if isinstance(entry, dict):
            assert set(entry) <= set(MODALITY_OPTIONS) | set(IMAGE_OPTIONS), (m, entry)
    if group == "experiment" and cfg.data.get("build"):  # a missing file's error names this script
        script = cfg.data.build.split()[1]
        assert (Path(__file__).resolve().parents[2] / script).is_file(), cfg.data.build


def test_presets_are_the_dataclasses_defaults_changed():
    """The defaults are written once: a group's node is the dataclass with only its preset's changes."""
    cs = ConfigStore.instance()
    fast = cs.load("model/fast.yaml").node
    base = OmegaConf.structured(ModelConfig)
    changed = {k for k in base if fast[k] != base[k]}
    assert changed == set(MODEL_PRESETS["fast"]), changed
    assert to_object(ModelConfig, _compose(["model=fast"]).model).leakage_every == 3


def test_kl_weight_follows_the_regions_unless_given():
    """kl_weight left unset is 4 for a model without region blocks and 1 for one with them, in Python and on the
    command line; a given value is kept."""
    assert ModelConfig().kl_weight is None
    assert ModelConfig().kl_weight_for(has_regions=False) == 4.0
    assert ModelConfig(venn_regions="pairs").kl_weight_for(has_regions=True) == 1.0
    assert ModelConfig(kl_weight=2.0).kl_weight_for(has_regions=True) == 2.0
    for overrides, kl in (
        (["model.venn_regions=pairs"], None),
        (["model.venn_regions=pairs", "model.kl_weight=2"], 2.0),
    ):
        assert to_object(ModelConfig, _compose(overrides).model).kl_weight == kl, overrides


def test_every_experiment_config_is_checked():
    assert set(EXPERIMENTS) >= {
        "pbmc10k_cite",
        "scicar_a549",
        "bmmc_cite",
        "bmmc_multiome",
        "bbbc021",
    }


def test_report_config_carries_the_attribution_defaults():
    from venncell.analysis.attribution import AttributionConfig

    cfg = _compose(["run_dir=x"], name="report")
    assert OmegaConf.to_container(cfg.attribution) == dataclasses.asdict(AttributionConfig())


def test_synthetic_region_factors_reach_the_generator():
    """``data.region_factors`` was refused (and ``+data.region_factors`` ignored): Venn-region data could not be made
    from the command line."""
    from venncell.cli.common import load_data

    cfg = _compose(["data.n_cells=60", "data.region_factors={protein+rna: 2}"])
    assert "true_region_protein+rna" in load_data(cfg).obsm


def test_progress_bar_takes_scvi_tools_booleans():
    """``model.train(progress_bar=False)``, as scvi-tools takes it, was refused."""
    assert TrainConfig(progress_bar=False).progress_bar == "none"
    assert TrainConfig(progress_bar=True).progress_bar == "rich"
    assert (
        to_object(TrainConfig, _compose(["trainer.progress_bar=false"]).trainer).progress_bar
        == "none"
    )


def test_the_run_has_one_seed():
    """``trainer.seed=`` was accepted and ignored beside the top-level ``seed=`` (a sweep over it gave identical
    runs); now the key does not exist, and forcing it in is refused."""
    from hydra.errors import ConfigCompositionException

    from venncell.cli.train import run_train
    from venncell.data.validate import VennCellInputError

    with pytest.raises(ConfigCompositionException, match="trainer.seed"):
        _compose(["trainer.seed=1"])
    with pytest.raises(VennCellInputError, match="top-level `seed=`"):
        run_train(_compose(["+trainer.seed=1"]), Path("unused"))


def test_trainer_seed_on_the_command_line_gets_the_runs_seed_message(helpers):
    """Hydra answered ``trainer.seed=1`` with "use +trainer.seed=1", which is refused in turn."""
    res = helpers.run_cli(["venncell-train", "trainer.seed=1"], ok=False)
    assert (
        res.returncode == 2
        and "top-level `seed=`" in res.stderr
        and "+trainer.seed" not in res.stderr
    )
