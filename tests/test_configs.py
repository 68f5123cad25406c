"""Every shipped Hydra config composes, and every key it sets is one the code reads: a typo in a preset or an
experiment (``model.kl_wieght``) would otherwise fail only when someone runs that experiment on its data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from venncell.api import _check_config
from venncell.cli import _model_kwargs, config_dir
from venncell.data.spec import ModalitySpec
from venncell.model.venn import VennConfig
from venncell.train.schedule import TrainConfig

CONF = Path(config_dir())
CHOICES = [(group, p.stem) for group in ("model", "trainer", "logger", "data", "experiment")
           for p in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize("group,name", CHOICES, ids=[f"{g}={n}" for g, n in CHOICES])
def test_config_composes_to_known_keys(group, name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"{group}={name}"])
    model = _model_kwargs(cfg)
    fields = {f.name for f in dataclasses.fields(VennConfig)}
    assert set(model) <= fields, set(model) - fields
    _check_config(VennConfig(**model))  # values in range (raises VennCellInputError otherwise)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert set(trainer) <= {f.name for f in dataclasses.fields(TrainConfig)}, set(trainer)
    spec_keys = {f.name for f in dataclasses.fields(ModalitySpec)}
    register = cfg.data.get("register")
    for m, entry in (OmegaConf.to_container(register) if register else {}).items():
        if isinstance(entry, dict):
            assert set(entry) <= spec_keys, (m, set(entry) - spec_keys)


def test_every_experiment_config_is_checked():
    assert {n for g, n in CHOICES if g == "experiment"} >= {"pbmc10k_cite", "scicar_a549", "bmmc_cite",
                                                             "bmmc_multiome", "bbbc021"}
