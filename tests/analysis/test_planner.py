"""The measure-or-predict planner on synthetic ground truth: features driven only by a modality's private factors
must come out "measure", those driven only by shared factors "predict"; and its tables, options and errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from venncell import VennCell, make_synthetic
from venncell.data.validate import VennCellInputError, VennCellInputWarning

MODS = {"rna": 150, "protein": 30, "atac": 150}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    mdata, _ = make_synthetic(n_cells=1200, modalities=dict(MODS), seed=1)
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=8, private_dim=4, seed=0, validation_fraction=0.2)
    model.train(
        run_dir=tmp_path_factory.mktemp("plan"),
        stage1_epochs=50,
        stage2_epochs=15,
        batch_size=128,
        progress_bar="none",
    )
    return model, mdata


@pytest.fixture(scope="module")
def plan(trained):
    return trained[0].plan_measurements(n_boot=50)


def test_pure_features_get_the_right_verdict(trained, plan):
    """>= 90 % of the features with a known answer are right in every modality (shared-driven: predict,
    private-driven: measure); an untrained model or a planner reading the wrong decoder fails this."""
    _, mdata = trained
    for t, df in plan.features.items():
        driver = mdata[t].var.loc[df.index, "true_driver"].astype(str)
        known = driver.isin(["shared", "private"])
        truth = np.where(driver[known] == "shared", "predict", "measure")
        accuracy = float((df.loc[known, "verdict"].to_numpy() == truth).mean())
        assert accuracy >= 0.9, (t, accuracy, pd.crosstab(driver, df["verdict"]))
        # and the recoverable fractions themselves are far apart, not just on either side of the threshold
        rec = df.groupby(driver)["recoverable"].median()
        assert rec["shared"] > 0.75 and rec["private"] < 0.15, (t, rec)


def test_an_unexplained_feature_has_no_recoverable_fraction():
    """r2_measured 0.02 and r2_predicted 0.01: the ratio, clipped, read recoverable 1.0 with an interval [0, 1];
    the model explains too little of the feature for a fraction. A feature the other modalities predict better
    than the full decoder fits it (measured -0.2, predicted 0.3) was `unexplained`; measuring it gives at least
    the prediction, so it is `predict`. A draw where both R^2 turn negative recovers nothing (it read 1.0, then
    was dropped, which kept a rare population's interval above predict_min when the prediction's reached -0.7)."""
    from venncell.analysis.planner import PlanConfig, _tables

    n, boot = 100, 5
    ones = np.ones((1 + boot, 4))
    measured = np.array([98.0, 50.0, 50.0, 120.0]) * ones  # R^2 0.02, 0.5, 0.5, -0.2
    predicted = np.array([99.0, 60.0, 80.0, 70.0]) * ones  # R^2 0.01, 0.4, 0.2, 0.3
    measured[1, 1] = predicted[1, 1] = 103.0  # a draw where both are negative
    acc = {
        "sy": 0 * ones,
        "syy": 100 * ones,
        "sse:measured": measured,
        "sse:rna": predicted,
        "sp:rna": np.zeros(4),
        "spp:rna": np.full(4, 10.0),
        "syp:rna": np.full(4, 5.0),
    }
    df, rows = _tables(
        "protein", acc, np.array(["a", "b", "c", "d"]), np.arange(4), PlanConfig(), n
    )
    assert df.loc["a", "verdict"] == "unexplained"
    assert df.loc["a", ["recoverable", "recoverable_lo", "recoverable_hi"]].isna().all()
    assert df.loc["b", "recoverable"] == pytest.approx(0.8)
    assert df.loc["b", "recoverable_lo"] < 0.5 and df.loc["b", "recoverable_hi"] == pytest.approx(
        0.8
    )
    assert df.loc["c", "recoverable"] == pytest.approx(0.4) and df.loc["d", "recoverable"] == 1.0
    assert list(df.loc[["b", "c", "d"], "verdict"]) == ["predict", "measure", "predict"]
    (row,) = rows
    assert row["n_explained"] == 3 and (row["n_predict"], row["n_measure"]) == (2, 1)


def test_summary_and_feature_tables(plan):
    s = plan.summary
    assert plan.cells == "held-out" and (s["n_cells"] == plan.n_cells).all()
    # each target from each non-empty subset of the others: 3 targets x 3 subsets
    assert len(s) == 9 and set(s["target"]) == set(MODS)
    assert set(s.loc[s["target"] == "protein", "sources"]) == {"rna", "atac", "atac+rna"}
    assert (s["recoverable_lo"] <= s["recoverable"] + 1e-12).all()
    assert (s["recoverable"] <= s["recoverable_hi"] + 1e-12).all()
    np.testing.assert_allclose(s["lost"], 1 - s["recoverable"])
    # a feature the model does not explain has no recoverable fraction (it read 1.0 from two near-zero R^2, with
    # an interval of [0, 1] from draws whose signs flipped); every explained one has one, inside its interval
    n_off = 0
    for t, df in plan.features.items():
        off = df["verdict"] == "unexplained"
        n_off += off.sum()
        assert (
            df.loc[off, ["recoverable", "recoverable_lo", "recoverable_hi"]].isna().all().all()
        ), t
        on = df.loc[~off]
        assert (
            on["recoverable"].notna().all()
            and (on["recoverable_lo"] <= on["recoverable"] + 1e-12).all()
        )
    assert n_off > 0  # the test sees such features
    # pure-private features are a fifth of each modality, so a large part of every modality is lost
    assert ((s["lost"] > 0.1) & (s["lost"] < 0.9)).all(), s
    for t, df in plan.features.items():
        assert len(df) == MODS[t] and list(df["rank"]) == list(range(1, MODS[t] + 1))
        assert df["r2_predicted"].is_monotonic_decreasing
        assert set(df["verdict"]) <= {"predict", "measure", "unexplained"}
        # the best subset's R^2 is the row's predicted R^2
        best = [df.loc[f, f"r2_from_{src}"] for f, src in df["best_source"].items()]
        np.testing.assert_allclose(df["r2_predicted"], best)
        assert df[[c for c in df if c.startswith("pearson_from_")]].abs().max().max() <= 1


def test_a_panel_and_its_file_outputs(trained, tmp_path):
    model, mdata = trained
    panel = list(mdata["protein"].var_names[:5])
    plan = model.plan_measurements(
        targets="protein", features=panel[:3] + [f"protein:{panel[3]}"], n_boot=5
    )
    assert list(plan.features) == ["protein"]
    assert sorted(plan.features["protein"].index) == sorted(panel[:4])
    written = {p.name for p in plan.write(tmp_path)}
    assert written == {"plan.json", "plan_summary.csv", "plan_features_protein.csv"}
    assert json.loads((tmp_path / "plan.json").read_text())["cells"] == "held-out"
    back = pd.read_csv(tmp_path / "plan_features_protein.csv", index_col=0)
    assert list(back.index) == list(plan.features["protein"].index)


def test_planner_errors_name_the_problem(trained):
    model, _ = trained
    with pytest.raises(VennCellInputError, match="targets \\['hic'\\]"):
        model.plan_measurements(targets=["hic"])
    with pytest.raises(VennCellInputError, match="None of the panel features"):
        model.plan_measurements(targets="protein", features=["CD4"])
    with pytest.raises(VennCellInputError, match="Unknown planner option"):
        model.plan_measurements(predict_minimum=0.5)
    with pytest.raises(VennCellInputError, match="predict_min"):
        model.plan_measurements(predict_min=1.5)


def test_a_plan_on_few_held_out_cells_says_its_verdicts_can_move(tmp_path):
    """A 600-cell pilot's plan on its 60 held-out cells: per-feature verdicts changed with the seed (which cells
    were held out) far beyond their intervals, without a word."""
    mdata, _ = make_synthetic(n_cells=600, modalities={"rna": 30, "protein": 10}, seed=2)
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=3, private_dim=2, seed=0)
    model.train(run_dir=tmp_path, stage1_epochs=2, stage2_epochs=1, progress_bar="none")
    with pytest.warns(
        VennCellInputWarning, match="scored on 60 held-out cells.*validation_fraction"
    ) as caught:
        plan = model.plan_measurements(n_boot=5)
    assert plan.cells == "held-out" and plan.n_cells == 60
    assert caught[0].filename == __file__  # the warning points at the user's line


def test_in_sample_fallback_is_flagged(tmp_path):
    mdata, _ = make_synthetic(n_cells=200, modalities={"rna": 30, "protein": 10}, seed=2)
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=3, private_dim=2, seed=0, validation_fraction=0.0)
    model.train(run_dir=tmp_path, stage1_epochs=2, stage2_epochs=1, progress_bar="none")
    with pytest.warns(VennCellInputWarning, match="validation_fraction"):
        plan = model.plan_measurements(n_boot=5)
    assert plan.cells == "training (in-sample)" and plan.n_cells == 200
    # cells missing a modality are left out: every subset is scored on the same cells
    partial = mdata.copy()
    partial.mod["protein"] = partial["protein"][:5].copy()
    partial.update()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VennCellInputWarning)
        with pytest.raises(VennCellInputError, match="Only 5 cells have every modality"):
            VennCell.load(_saved(model, tmp_path), partial).plan_measurements()


def _saved(model, tmp_path):
    model.save(tmp_path / "m")
    return tmp_path / "m"


def test_a_panel_without_targets_plans_the_modalities_its_features_belong_to(trained_tiny):
    model, mdata, _ = trained_tiny
    protein = list(mdata["protein"].var_names[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VennCellInputWarning)  # tiny data: scored in sample
        plan = model.plan_measurements(features=protein, n_boot=5)
    assert set(plan.summary["target"]) == {"protein"}
    assert sorted(plan.features["protein"].index) == sorted(protein)
    with pytest.raises(VennCellInputError, match="targets is empty"):
        model.plan_measurements(targets=[])
    # the example is a feature of this model (it named 'protein:CD4' to models without proteins)
    example = f"e.g. 'rna:{mdata['rna'].var_names[0]}'"
    with pytest.raises(
        VennCellInputError, match=f"is a feature of a modality of the model.*{example}"
    ):
        model.plan_measurements(features=["no_such_gene"])


def test_a_plain_panel_name_in_two_modalities_is_ambiguous():
    from types import SimpleNamespace

    from venncell.analysis.planner import _modalities_of

    specs = {
        "rna": SimpleNamespace(feature_names=["CD4", "CD8A"]),
        "protein": SimpleNamespace(feature_names=["CD4", "CD19"]),
    }
    assert _modalities_of(["CD19", "rna:CD4"], specs) == ["protein", "rna"]
    with pytest.raises(VennCellInputError, match=r"'CD4' is a feature of \['rna', 'protein'\]"):
        _modalities_of(["CD4"], specs)


def test_the_summary_interval_holds_its_estimate_on_a_briefly_trained_model():
    """A resample that left out the few cells of a sparse feature gave it an R^2 of minus hundreds, which dragged
    the draws' means down: after 10 epochs the atac rows' intervals ([0, 0.13]) missed their estimates (0.19)."""
    mdata, _ = make_synthetic(n_cells=600, modalities=dict(MODS), seed=0)
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, seed=0)
    model.train(stage1_epochs=10, stage2_epochs=3, batch_size=128, progress_bar="none")
    s = model.plan_measurements(n_boot=100).summary
    assert (s["recoverable"] > 0.1).any(), s  # some rows estimate something: not 0 in [0, 0]
    inside = (s["recoverable_lo"] <= s["recoverable"] + 1e-12) & (
        s["recoverable"] <= s["recoverable_hi"] + 1e-12
    )
    assert inside.all(), s


def test_one_pathological_feature_does_not_sink_the_modality_summary():
    """One gene predicted at R^2 -4,676 took the mean R^2 of its modality to -8.5: the summary read recoverable 0,
    lost 1, next to 399 features called "predict". Each R^2 is floored at -1 (guessing a random cell's value)."""
    from venncell.analysis.planner import PlanConfig, _tables

    draws, n = 3, 100.0
    full = lambda v: np.tile(np.asarray(v, dtype=float), (draws, 1))  # noqa: E731
    acc = {
        "sy": full([0, 0, 0]),
        "syy": full([100, 100, 100]),  # each feature's total sum of squares: 100
        "sse:measured": full([20, 20, 20]),  # R^2 measured 0.8
        "sse:rna": full([40, 40, 467_700]),  # R^2 predicted 0.6, 0.6 and -4,676
        "sp:rna": np.zeros(3),  # the prediction's sums (for Pearson's r): not bootstrapped
        "spp:rna": np.full(3, 50.0),
        "syp:rna": np.array([40.0, 40.0, 1.0]),
    }
    _, rows = _tables("protein", acc, ["a", "b", "c"], np.arange(3), PlanConfig(), n)
    (row,) = rows
    assert row["recoverable"] == pytest.approx((0.6 + 0.6 - 1) / 3 / 0.8)
    assert row["mean_r2_predicted"] == pytest.approx(0.2 / 3) and row["n_predict"] == 2


def test_modality_names_that_cannot_name_a_file_are_written(plan, tmp_path):
    """A modality named 'ADT/HTO' (or of 250 characters) trains, saves and loads, but writing its tables failed
    with FileNotFoundError ('plan_features_ADT/.HTO.csv.tmp') after some files were written."""
    from dataclasses import replace

    from venncell.data.files import file_part

    names = ["ADT/HTO", "protéine " + "Y" * 250]
    odd = replace(plan, features={n: df for n, df in zip(names, plan.features.values())})
    written = {p.name for p in odd.write(tmp_path)}
    assert {f"plan_features_{file_part(n)}.csv" for n in names} <= written
    assert len({file_part(n) for n in ["a/b", "a_b", "a\\b"]}) == 3 and file_part("rna") == "rna"
    assert all(p.parent == tmp_path for p in tmp_path.iterdir())
