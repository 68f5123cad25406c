"""The shared block's mixing weights: the average of the modalities' encoder estimates that best reproduces the
stage-1 latents (``fit_mix_weights``), used by every encoder embedding and saved with the model."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import torch

from venncell import VennCell
from venncell.module.embed import embed_cells, fit_mix_weights, min_variance_weights


def test_independent_errors_are_weighted_by_their_inverse_variance():
    w = min_variance_weights(np.diag([1.0, 4.0]), floor=0.0)
    np.testing.assert_allclose(w, [0.8, 0.2])


def test_weights_minimise_the_error_over_the_simplex():
    rng = np.random.default_rng(0)
    grid = [
        np.array(p) / 20
        for p in itertools.product(range(21), repeat=3)
        if sum(p) == 20  # every point of the simplex on a 0.05 grid
    ]
    for _ in range(20):
        a = rng.normal(size=(3, 3)) * rng.uniform(0.2, 3, size=3)
        gram = a @ a.T + 0.01 * np.eye(3)  # correlated errors: the optimum is often on a face
        w = min_variance_weights(gram, floor=0.0)
        assert w.min() >= 0 and abs(w.sum() - 1) < 1e-9
        assert w @ gram @ w <= min(p @ gram @ p for p in grid) + 1e-9
        floored = min_variance_weights(gram)
        assert floored.min() >= 0.01 - 1e-12 and abs(floored.sum() - 1) < 1e-9


def _train_error(model, shared) -> float:
    cells = model.is_train
    target = model.get_latent_representation(source="stage1")
    return float(np.mean((shared[cells] - target[cells]) ** 2))


def test_fitted_weights_reproduce_the_stage1_latents_better_than_the_mean(trained_tiny):
    model, _, _ = trained_tiny
    module = model.module
    w = module.mix_weights.numpy()
    assert w.shape == (1, 3) and abs(w.sum() - 1) < 1e-6 and w.min() > 0
    fitted = _train_error(model, model.get_latent_representation())
    saved = module.mix_weights.clone()
    try:
        module.mix_weights.copy_(module.equal_mix_weights())
        equal = _train_error(model, model.get_latent_representation())
    finally:
        module.mix_weights.copy_(saved)
    assert fitted <= equal + 1e-7


def test_a_worse_encoder_gets_less_weight(trained_tiny):
    model, _, _ = trained_tiny
    module = copy.deepcopy(model.module)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # spoil the protein encoder: its estimates become noise
        for p in module.encoders["protein"].parameters():
            p.add_(torch.randn(p.shape, generator=gen))
    w = dict(
        zip(
            module.modalities,
            fit_mix_weights(module, model.data, np.flatnonzero(model.is_train))[0],
        )
    )
    assert w["protein"] < 0.1 < min(w["rna"], w["atac"])
    target = model.get_latent_representation(source="stage1")
    fitted = np.mean((embed_cells(module, model.data)["shared"] - target) ** 2)
    module.mix_weights.copy_(module.equal_mix_weights())
    equal = np.mean((embed_cells(module, model.data)["shared"] - target) ** 2)
    # the equal mean keeps a ninth of the spoiled estimate's error; the fitted weights hardly any
    assert fitted < 0.5 * equal, (fitted, equal)


def test_weights_survive_save_load_and_old_models_average_equally(trained_tiny, tmp_path):
    model, mdata, _ = trained_tiny
    model.save(tmp_path / "m")
    again = VennCell.load(tmp_path / "m", mdata)
    np.testing.assert_array_equal(
        again.module.mix_weights.numpy(), model.module.mix_weights.numpy()
    )
    np.testing.assert_allclose(
        again.get_latent_representation(), model.get_latent_representation(), atol=1e-6
    )
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    del state["mix_weights"]  # a model saved before the weights existed
    torch.save(state, tmp_path / "m" / "model.pt")
    old = VennCell.load(tmp_path / "m", mdata)
    np.testing.assert_allclose(old.module.mix_weights.numpy(), np.full((1, 3), 1 / 3), atol=1e-7)
