"""``model=fast`` (leakage control on every 3rd batch, weighted 3 times; consistency on 32 cells of it) on the
synthetic ground truth of test_recovery: the cheaper steps must not buy speed with leakage."""

from __future__ import annotations

import numpy as np
import pytest

from venncell import VennCell
from venncell.analysis.recovery import evaluate_recovery
from venncell.module.config import PRESETS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synthetic(recovery_cells, helpers):
    return helpers.training_cells(recovery_cells)


@pytest.fixture(scope="module")
def fast_kwargs():
    kwargs = dict(PRESETS["fast"])
    assert kwargs["leakage_every"] > 1 and kwargs["consistency_cells"] > 0
    return {**kwargs, "shared_dim": 8, "private_dim": 4}


def _summary(synthetic, tmp_path, helpers, seed: int = 0, **kwargs) -> dict:
    mdata, truth = synthetic
    mdata = mdata.copy()
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, seed=seed, **kwargs)
    model.train(run_dir=tmp_path, **helpers.RECOVERY_TRAIN)
    return evaluate_recovery(helpers.learned_blocks(model), truth.blocks())["knn"]["summary"]


def test_fast_preset_meets_the_recovery_thresholds(synthetic, fast_kwargs, tmp_path, helpers):
    """The same thresholds as the defaults in test_recovery."""
    s = _summary(synthetic, tmp_path, helpers, **fast_kwargs)
    assert s["shared_recovery"] >= 0.9 and s["min_private_recovery"] >= 0.85, s
    assert (
        max(
            s["leak_private_into_shared"],
            s["leak_shared_into_private"],
            s["leak_private_into_other_private"],
        )
        <= 0.15
    ), s


def test_fast_preset_still_controls_leakage_from_a_random_start(
    synthetic, fast_kwargs, tmp_path, helpers
):
    """From the spectral start these data barely leak even without leakage control, so the test above cannot
    tell whether the preset's leakage control runs. From a small random start it shows: the fast schedule keeps
    the private factors out of the shared latent clearly better than with the leakage terms off (kNN R^2 of
    private factors from the shared block, mean over seeds 0-2, measured 0.48 and 0.56; the every-batch default,
    measured 0.43, is not refitted here to keep the suite short). One seed is not enough: from a random start a
    single fit's leakage moves by about 0.1 with the seed."""
    start = {"latent_init": "random", "latent_init_std": 0.1}
    arms = {
        "fast": fast_kwargs,
        "off": {**fast_kwargs, "consistency_weight": 0.0, "independence_weight": 0.0},
    }
    leak = {
        name: np.mean(
            [
                _summary(synthetic, tmp_path / f"{name}{seed}", helpers, seed=seed, **kw, **start)[
                    "leak_private_into_shared"
                ]
                for seed in (0, 1, 2)
            ]
        )
        for name, kw in arms.items()
    }
    assert leak["fast"] <= leak["off"] - 0.05, leak
