"""The integration harness's candidate rows: ``venncell:<variant>`` names the settings a row fits with."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "integration"))
from methods import variant_settings  # noqa: E402

from venncell.module.config import PRESETS, ModelConfig  # noqa: E402


def test_a_variant_is_a_preset_or_field_changes_the_model_accepts():
    assert variant_settings("fast") == PRESETS["fast"]
    settings = variant_settings("encoder_dropout=0.2+shared_dim=16+joint_encoder=true")
    assert settings == {"encoder_dropout": 0.2, "shared_dim": 16, "joint_encoder": True}
    cfg = ModelConfig.from_kwargs(**settings)
    assert (cfg.encoder_dropout, cfg.shared_dim, cfg.joint_encoder) == (0.2, 16, True)
