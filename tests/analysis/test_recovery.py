"""The scientific claim on synthetic ground truth: shared recovers shared factors, each private block its own
modality's private factors, with little leakage — and the plain APOLLO recipe leaks more."""

from __future__ import annotations

import numpy as np
import pytest

from venncell import VennCell
from venncell.analysis.recovery import (
    cv_r2,
    evaluate_recovery,
    recovery_matrix,
    summarise_recovery,
)


@pytest.fixture(scope="module")
def synthetic(recovery_cells, helpers):
    return helpers.training_cells(recovery_cells)


@pytest.fixture(scope="module")
def venn_model(synthetic, tmp_path_factory, helpers):
    mdata, _ = synthetic
    mdata = mdata.copy()
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=8, private_dim=4, seed=0)
    model.train(run_dir=tmp_path_factory.mktemp("venn"), **helpers.RECOVERY_TRAIN)
    return model


def test_recovery_metric_detects_leakage():
    """The metric itself: a block copied into the wrong latent must show up as leakage."""
    rng = np.random.default_rng(0)
    truth = {"shared": rng.normal(size=(500, 2)), "private:a": rng.normal(size=(500, 2))}
    clean = {
        "shared": truth["shared"] + 0.1 * rng.normal(size=(500, 2)),
        "private:a": truth["private:a"],
    }
    leaky = {
        "shared": np.hstack([truth["shared"], truth["private:a"]]),
        "private:a": truth["private:a"],
    }
    s_clean = summarise_recovery(recovery_matrix(clean, truth))
    s_leaky = summarise_recovery(recovery_matrix(leaky, truth))
    assert s_clean["shared_recovery"] > 0.9 and s_clean["leak_private_into_shared"] < 0.05
    assert s_leaky["leak_private_into_shared"] > 0.8
    assert cv_r2(rng.normal(size=(300, 3)), rng.normal(size=(300, 1)), probe="linear") < 0.05
    # one target column, both probes: a well-predicted factor scores near 1 (a shape slip once gave the linear
    # probe -397 here, which the line above could not notice)
    x = rng.normal(size=(300, 2))
    y = x[:, 0] + 0.1 * rng.normal(size=300)
    for probe in ("linear", "knn"):
        assert cv_r2(x, y, probe=probe) > 0.85 and cv_r2(x, y[:, None], probe=probe) > 0.85, probe


def test_recovery_scores_a_private_block_on_the_cells_that_have_it():
    """A private block is NaN where a cell lacks the modality; those rows fed the kNN distances and gave nonsense
    (a well recovered block scored below 0) instead of being left out."""
    rng = np.random.default_rng(1)
    truth = {"shared": rng.normal(size=(400, 2)), "private:a": rng.normal(size=(400, 2))}
    learned = {
        "shared": truth["shared"] + 0.1 * rng.normal(size=(400, 2)),
        "private:a": truth["private:a"].copy(),
    }
    learned["private:a"][:100] = np.nan  # 100 cells without modality a
    with_gaps = summarise_recovery(recovery_matrix(learned, truth))
    have = slice(100, None)
    complete = recovery_matrix(
        {"private:a": learned["private:a"][have]}, {"private:a": truth["private:a"][have]}
    ).loc["private:a", "private:a"]
    assert with_gaps["private:a_recovery"] == pytest.approx(complete) and complete > 0.9
    assert with_gaps["shared_recovery"] > 0.9


def test_venncell_recovers_shared_and_private_without_leakage(venn_model, synthetic, helpers):
    helpers.assert_recovers_venn(venn_model, synthetic[1])


def test_new_cells_embedded_from_any_single_modality(venn_model, recovery_cells, helpers):
    """Cells the model never saw: the shared latent from each modality alone, and from all, recovers the
    true shared factors (a broken encoder, or a modality's encoder ignoring shared signal, fails)."""
    mdata, truth = recovery_cells
    new = mdata[helpers.N_TRAIN :].copy()
    target = truth.shared[helpers.N_TRAIN :]
    for m in [*venn_model.specs, None]:
        z = venn_model.get_latent_representation(new, modalities=None if m is None else [m])
        assert cv_r2(z, target, probe="linear") >= 0.8, m
        assert cv_r2(z, target, probe="knn", k=10) >= 0.7, m


def test_training_fits_held_out_cells(venn_model):
    st2 = venn_model.history["stage2"]
    # encoders reproduce most of the held-out cells' fitted latents (1 - R^2 well below 1)
    for m in venn_model.specs:
        assert st2[f"stage2/val/latent_shared/{m}"] < 0.5, (m, st2)
    st1 = venn_model.history["stage1"]
    for m in venn_model.specs:
        # held-out reconstruction is close to training reconstruction: decoders generalise
        assert st1[f"stage1/val/recon/{m}"] < 1.2 * st1[f"stage1/train/recon/{m}_epoch"] + 0.05


def test_apollo_preset_leaks_more(venn_model, synthetic, tmp_path, helpers):
    mdata, truth = synthetic
    mdata = mdata.copy()
    VennCell.setup_mudata(mdata)
    apollo = VennCell(
        mdata,
        shared_dim=8,
        private_dim=4,
        seed=0,
        consistency_weight=0.0,
        independence_weight=0.0,
        shared_only_detach=False,
        latent_init="random",
        latent_init_std=0.1,
    )
    apollo.train(run_dir=tmp_path, **helpers.RECOVERY_TRAIN)
    s_a = evaluate_recovery(helpers.learned_blocks(apollo), truth.blocks())["knn"]["summary"]
    s_v = evaluate_recovery(helpers.learned_blocks(venn_model), truth.blocks())["knn"]["summary"]
    leak_a = max(s_a["leak_private_into_shared"], s_a["leak_shared_into_private"])
    leak_v = max(s_v["leak_private_into_shared"], s_v["leak_shared_into_private"])
    assert leak_a > 0.15 and leak_a > leak_v + 0.1, (s_a, s_v)


@pytest.mark.slow
def test_defaults_on_the_synthetic_default_meet_the_venn_bars(tmp_path, helpers):
    """What a user gets from ``venncell-train`` with nothing set: the built-in synthetic default (3,000 cells) and
    the package defaults (no size, epoch or learning-rate override). Shared recovery >= 0.95, every private
    >= 0.90, leakage <= 0.05 both ways, from the encoders (the latents a user takes)."""
    from venncell import make_synthetic

    mdata, truth = make_synthetic()
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata)
    model.train(run_dir=tmp_path, progress_bar="none")
    helpers.assert_recovers_venn(
        model, truth, recovery=0.95, private=0.90, leak=0.05, sources=("encoder",)
    )


def test_recovery_on_a_subset_of_cells_when_asked():
    """venncell-train scored recovery on every cell, silently, for longer than a short training took; it now
    scores a random subset beyond ``max_cells`` and gives the same answer on data this clear."""
    from venncell.analysis.recovery import evaluate_recovery

    rng = np.random.default_rng(0)
    t = rng.normal(size=(3000, 2))
    learned = {
        "shared": t + 0.05 * rng.normal(size=t.shape),
        "private:a": rng.normal(size=(3000, 2)),
    }
    truth = {"shared": t, "private:a": learned["private:a"] + 0.05 * rng.normal(size=t.shape)}
    full = evaluate_recovery(learned, truth)["knn"]["summary"]
    part = evaluate_recovery(learned, truth, max_cells=500)["knn"]["summary"]
    assert part["shared_recovery"] > 0.9 and full["shared_recovery"] > 0.9
    assert abs(part["shared_recovery"] - full["shared_recovery"]) < 0.05
    assert part != full  # a subset was scored, not every cell
