"""Variational latent tables (``latent_posterior="variational"``): the KL and the sampling are what they claim, the
log-variances train, persist and stay sharded like the latents, and the Venn structure is still recovered."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from venncell import VennCell
from venncell.data import VennCellInputError
from venncell.module import ModelConfig as VennConfig
from venncell.module import VennModule


def _module(**kw) -> VennModule:
    from venncell.data.spec import ModalitySpec

    specs = {
        m: ModalitySpec(name=m, features=[f"{m}{i}" for i in range(k)])
        for m, k in (("a", 5), ("b", 3))
    }
    return VennModule(specs, n_cells=10, cfg=VennConfig(shared_dim=3, private_dim=2, **kw))


def test_kl_and_sampling_match_the_gaussian_posterior():
    """prior_cost is the closed-form KL(N(mu, s^2) || N(0, 1)) (weighted by kl_weight on the reconstruction's scale), samples have sd s around mu
    (a swapped log-variance / sd, or a KL missing its variance terms, fails)."""
    mod = _module(latent_posterior="variational", kl_weight=0.5, latent_init_logvar=-1.0)
    idx = torch.arange(10)
    mu = torch.randn(10, 3)
    with torch.no_grad():
        mod.logvar_tables["shared"].weight[:] = torch.linspace(-3, 1, 10)[:, None]
    lv = mod.logvar_tables["shared"].weight.detach()
    kl = 0.5 * (mu**2 + lv.exp() - 1 - lv).sum(1)
    assert torch.allclose(mod.prior_cost("shared", mu, idx), kl)
    # each NLL is a mean per feature, so the KL is put on the scale of the smallest modality (3 features):
    # kl_weight = 1 is then the ELBO over that count, whichever rule weights the modalities
    assert mod.prior_weight == pytest.approx(0.5 / 3)
    equal = _module(latent_posterior="variational", kl_weight=0.5, modality_weights="equal")
    assert equal.prior_weight == pytest.approx(0.5 / 3)
    torch.manual_seed(0)
    draws = torch.stack([mod.perturbed("shared", mu, idx).detach() for _ in range(4000)])
    assert torch.allclose(draws.mean(0), mu, atol=0.1)
    assert torch.allclose(draws.std(0), (0.5 * lv).exp(), rtol=0.06)
    # point latents: the fixed noise and the L2 pull, no log-variance tables
    point = _module(latent_posterior="point", latent_noise=0.2, latent_l2=0.01)
    assert not hasattr(point, "logvar_tables") and len(point.latent_parameters()) == 3
    assert (
        torch.allclose(point.prior_cost("shared", mu, idx), mu.pow(2).sum(1))
        and point.prior_weight == 0.01
    )
    assert (
        len(mod.latent_parameters()) == 6
    )  # the log-variances go to RowAdam and DDP sharding with the means


def test_bad_latent_posterior_is_refused(tiny_mdata):
    """An unknown latent_posterior or start_batch_alignment, or a starting log-variance outside the clamp, is a
    config error naming the key; a misspelt option name gets the closest valid one."""
    VennCell.setup_mudata(tiny_mdata)
    with pytest.raises(VennCellInputError, match="latent_posterior='vae'"):
        VennCell(tiny_mdata, latent_posterior="vae")
    with pytest.raises(VennCellInputError, match="latent_init_logvar"):
        VennCell(tiny_mdata, latent_posterior="variational", latent_init_logvar=9.0)
    with pytest.raises(VennCellInputError, match="start_batch_alignment='whiten'"):
        VennCell(tiny_mdata, start_batch_alignment="whiten")
    with pytest.raises(
        VennCellInputError, match="did you mean 'start_batch_aligment' -> 'start_batch_alignment'"
    ):
        VennCell(tiny_mdata, start_batch_aligment="covariance")


def test_log_variances_train_and_survive_save_load(tiny_mdata, tmp_path, helpers):
    VennCell.setup_mudata(tiny_mdata)
    model = VennCell(
        tiny_mdata,
        shared_dim=4,
        private_dim=2,
        hidden=32,
        encoder_hidden=32,
        seed=0,
        latent_posterior="variational",
        latent_init_logvar=-2.0,
    )
    model.train(run_dir=tmp_path / "run", **helpers.FAST)
    lv = model.module.logvar_tables["shared"].weight.detach().numpy()
    assert np.abs(lv + 2.0).max() > 1e-3  # stage 1 moved them
    model.save(tmp_path / "m")
    again = VennCell.load(tmp_path / "m", tiny_mdata)
    assert again.module.cfg.latent_posterior == "variational"
    np.testing.assert_array_equal(again.module.logvar_tables["shared"].weight.detach().numpy(), lv)
    np.testing.assert_allclose(
        again.get_latent_representation(), model.get_latent_representation(), atol=1e-6
    )


def test_private_kl_scale_weights_the_private_blocks_kl_only(tiny_mdata):
    """``private_kl_scale`` multiplies the private blocks' KL and nothing else: the stage-1 loss moves by exactly
    (scale - 1) x the private KL term (a scale applied to the shared block, or to every block, fails)."""
    VennCell.setup_mudata(tiny_mdata)
    with pytest.raises(VennCellInputError, match="private_kl_scale"):
        VennCell(tiny_mdata, private_kl_scale=-1.0)
    loss, private_kl = {}, {}
    for scale in (1.0, 3.0):
        module = VennCell(tiny_mdata, seed=0, private_kl_scale=scale).module
        assert module.private_prior_weight == pytest.approx(scale * module.prior_weight)
        batch = VennCell(tiny_mdata, seed=0).data.get(np.arange(64))
        module.eval()
        with torch.no_grad():
            loss[scale] = module.stage1_loss(batch, noise=False, leakage=0.0).loss
            _, z_p = module.latents(batch.idx)
            private_kl[scale] = sum(
                (module.prior_cost(m, z_p[m], batch.idx) * batch.mask[m]).sum()
                / batch.mask[m].sum()
                for m in module.modalities
            )
    torch.testing.assert_close(private_kl[3.0], private_kl[1.0])
    assert private_kl[1.0] > 0
    torch.testing.assert_close(loss[3.0] - loss[1.0], 2 * module.prior_weight * private_kl[1.0])
