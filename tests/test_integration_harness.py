"""The integration harness's candidate rows: ``venncell:<variant>`` names the settings a row fits with."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "integration"))
from methods import variant_settings  # noqa: E402
from report import venn_bars  # noqa: E402

from venncell.module.config import PRESETS, ModelConfig  # noqa: E402


def test_a_variant_is_a_preset_or_field_changes_the_model_accepts():
    assert variant_settings("fast") == PRESETS["fast"]
    settings = variant_settings("encoder_dropout=0.2+shared_dim=16+joint_encoder=true")
    assert settings == {"encoder_dropout": 0.2, "shared_dim": 16, "joint_encoder": True}
    cfg = ModelConfig.from_kwargs(**settings)
    assert (cfg.encoder_dropout, cfg.shared_dim, cfg.joint_encoder) == (0.2, 16, True)


def test_a_candidate_that_leaks_on_the_synthetic_set_is_marked():
    def run(leak):
        return {
            "recovery": {
                "shared_recovery": 0.96,
                "min_private_recovery": 0.92,
                "leak_shared_into_private": leak,
                "leak_private_into_shared": -0.05,
                "leak_private_into_other_private": -0.05,
            }
        }

    clean = {"synthetic": {"venncell:x=1": {"0": run(-0.02), "1": run(0.0)}}}
    leaky = {"synthetic": {"venncell:x=1": {"0": run(0.02), "1": run(0.12)}}}
    assert "bars (≥ 0.95, ≥ 0.90, ≤ 0.05) hold" in venn_bars(clean, "venncell:x=1")[0]
    line = venn_bars(leaky, "venncell:x=1")[0]
    assert "**do not hold**" in line and "largest leakage 0.070" in line
    assert venn_bars({"scicar": {}}, "venncell:x=1") == []
