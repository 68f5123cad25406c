"""The integration harness: candidate rows (``venncell:<variant>`` names the settings a row fits with), the Venn
bars of a candidate, and README's headline table (written from results.json)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "integration"))
from methods import variant_settings  # noqa: E402
from report import README_END, README_START, headline_table, venn_bars, write_readme  # noqa: E402

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


ROOT = Path(__file__).resolve().parents[1]


def _run(knn, total):
    return {"labels": {"cell_type": {"knn": knn, "Total": total, "Bio conservation": total}}}


def test_the_headline_row_names_the_best_peer_and_baseline_and_the_gap(tmp_path):
    res = {
        "bmmc_cite": {
            "venncell": {"0": _run(0.70, 0.60), "1": _run(0.72, 0.62)},
            "totalvi": {"0": _run(0.75, 0.50)},
            "mofa": {"0": _run(0.60, 0.65)},
            "pca:rna": {"0": _run(0.65, 0.55)},
            "concat_pca": {"0": _run(0.50, 0.58)},
        }
    }
    (row,) = headline_table(res)[2:]
    assert row.startswith(
        "| bmmc_cite (`cell_type`) | 2 | 0.710 | totalVI 0.750 (-0.040) | PCA of rna 0.650 (+0.060)"
    )
    assert row.endswith(
        "| 0.610 | MOFA+ 0.650 (-0.040) | 0.610 | concatenated PCA/LSI 0.580 (+0.030) |"
    )
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold table\n{README_END}\nrest\n")
    write_readme(res, readme)
    assert (
        readme.read_text()
        == f"intro\n{README_START}\n" + "\n".join(headline_table(res)) + f"\n{README_END}\nrest\n"
    )


def test_readme_headline_table_is_the_one_results_json_gives():
    """Edit results.json (run the harness) and README together: `run.py --page-only` rewrites the table."""
    results = json.loads((ROOT / "benchmarks" / "integration" / "results.json").read_text())
    text = (ROOT / "README.md").read_text()
    block = text.split(README_START, 1)[1].split(README_END, 1)[0]
    assert block.strip() == "\n".join(headline_table(results))


def test_a_candidate_page_puts_each_setting_next_to_the_defaults_per_dataset():
    sys.path.insert(0, str(ROOT / "experiments"))
    from harness_candidates import candidate_table, recovery_table

    def run(knn, leak):
        rec = {
            "shared_recovery": 0.96,
            "min_private_recovery": 0.92,
            "leak_shared_into_private": leak,
        }
        rec |= {"leak_private_into_shared": -0.05, "leak_private_into_other_private": -0.05}
        labels = {"cluster": {"knn": knn, "Bio conservation": 0.6, "Total": 0.6}}
        return {"labels": labels, "recovery": rec}

    results = {
        "synthetic": {
            "venncell": {"0": run(0.90, -0.02), "1": run(0.92, -0.04)},
            "venncell:x=1": {"0": run(0.80, 0.10), "1": run(0.84, 0.20)},
        }
    }
    rows = candidate_table(results, ["synthetic", "scicar"], {"venncell:x=1": "x at 1"})
    assert rows[2].startswith("| synthetic (cluster) | the defaults | 0.910 ± 0.010 |")
    assert rows[3].startswith("| synthetic (cluster) | x at 1 | 0.820 ± 0.020 |")
    assert rows[3].endswith("| 2 |") and len(rows) == 4  # scicar has no rows: left out
    rec = recovery_table(results, {"venncell:x=1": "x at 1"})
    assert rec[3].startswith("| x at 1 | 0.960 ± 0.000 | 0.920 ± 0.000 | 0.150 ± 0.050 |")
