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


def test_a_trainer_setting_goes_to_train():
    from methods import train_settings

    model, trainer = train_settings(variant_settings("stage1_epochs=50+shared_dim=12"))
    assert model == {"shared_dim": 12} and trainer == {"stage1_epochs": 50}


def test_your_own_data_is_copied_with_modalities_named_by_kind(tmp_path, monkeypatch):
    """The harness's own-data path (run.py --data): a user's gex + adt MuData, partly paired, is scored as CITE-seq
    on its paired cells; a changed file is new data; modalities the harness cannot score are refused by name."""
    import anndata as ad
    import datasets
    import mudata as md
    import numpy as np
    import pandas as pd
    import pytest
    from report import headline_table as table

    monkeypatch.setattr(datasets, "DATA", tmp_path / "data")
    monkeypatch.setattr(datasets, "OWN", tmp_path / "data" / "own.json")
    import report

    registry = dict(datasets.DATASETS)
    monkeypatch.setattr(datasets, "DATASETS", registry)
    monkeypatch.setattr(report, "DATASETS", registry)
    rng = np.random.default_rng(0)
    cells = [f"c{i}" for i in range(40)]
    gex = ad.AnnData(rng.poisson(2, (40, 30)).astype(np.float32), obs=pd.DataFrame(index=cells))
    adt = ad.AnnData(
        rng.poisson(5, (30, 8)).astype(np.float32), obs=pd.DataFrame(index=cells[10:])
    )
    mine = md.MuData({"gex": gex, "adt": adt})
    mine.obs["celltype"] = np.array(["a", "b"] * 20, dtype=object)
    mine.obs.loc["c39", "celltype"] = (
        np.nan
    )  # unlabelled: left out by the scores, not a class "nan"
    path = tmp_path / "mine.h5mu"
    mine.write(str(path))
    assert datasets.own_dataset("mine", str(path), ["celltype"])
    ds = datasets.DATASETS["mine"]
    copy = ds.load()
    assert ds.own and ds.kind == "cite" and sorted(copy.mod) == ["protein", "rna"]
    assert list(copy.obs_names) == cells[10:] and list(copy.obs["celltype"][:-1]) == [
        "a",
        "b",
    ] * 14 + ["a"]
    assert copy.obs["celltype"].isna().sum() == 1
    assert not datasets.own_dataset("mine", str(path), ["celltype"])  # the same file: kept
    assert datasets.own_dataset("mine", str(path), ["celltype"], None) is False
    mine.write(str(path))  # rewritten: new data
    assert datasets.own_dataset("mine", str(path), ["celltype"])
    # the README's table holds the shipped sets only
    row = {"labels": {"celltype": {"knn": 0.5, "Total": 0.5, "Bio conservation": 0.5}}}
    assert len(table({"mine": {"venncell": {"0": row}, "mofa": {"0": row}}})) == 2
    odd = md.MuData({"gex": gex, "imaging": ad.AnnData(np.ones((40, 3), np.float32), obs=gex.obs)})
    odd.obs["celltype"] = mine.obs["celltype"].reindex(odd.obs_names).to_numpy()
    odd.write(str(tmp_path / "odd.h5mu"))
    with pytest.raises(SystemExit, match="'imaging': 'features'.*Rename them"):
        datasets.own_dataset("odd", str(tmp_path / "odd.h5mu"), ["celltype"])
    with pytest.raises(SystemExit, match=r"\['cell_type'\] not in mdata.obs"):
        datasets.own_dataset("mine", str(path), ["cell_type"])
