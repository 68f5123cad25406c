"""``joint_encoder``: one stage-2 encoder over all modalities, used for the cells measured in every modality only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from venncell import VennCell


@pytest.fixture(scope="module")
def joint_model(tmp_path_factory, helpers):
    from venncell.data import make_synthetic

    mdata, _ = make_synthetic(n_cells=240, modalities={"rna": 60, "protein": 20}, seed=3)
    VennCell.setup_mudata(mdata)
    model = VennCell(
        mdata,
        shared_dim=4,
        private_dim=2,
        hidden=32,
        encoder_hidden=32,
        seed=0,
        joint_encoder=True,
    )
    model.train(run_dir=tmp_path_factory.mktemp("joint"), **helpers.FAST)
    return model


def test_joint_encoder_embeds_fully_measured_cells_only(joint_model):
    """Fully measured cells take shared and private blocks from the joint encoder; a cell lacking a modality, or a
    ``modalities`` subset, falls back to the per-modality encoders (a joint encoder reading the zeros of a missing
    modality would give such cells a wrong latent)."""
    mod, data = joint_model.module, joint_model.data
    mod.eval()
    batch = data.get(np.arange(10))
    with torch.no_grad():
        joint_s, joint_p = mod.encode_joint(batch, torch.arange(10))
        per = {m: mod.encode(m, batch) for m in mod.modalities}
        out = mod.embed(batch)
        np.testing.assert_allclose(out["shared"].numpy(), joint_s.numpy(), atol=1e-6)
        for m in mod.modalities:
            np.testing.assert_allclose(out[f"private:{m}"].numpy(), joint_p[m].numpy(), atol=1e-6)
        # the per-modality estimates differ from the joint one: the comparisons above test something
        assert not torch.allclose(per["rna"][0], joint_s, atol=1e-3)
        rna_only = mod.embed(batch, modalities=["rna"])
        np.testing.assert_allclose(rna_only["shared"].numpy(), per["rna"][0].numpy(), atol=1e-6)
        batch.mask["protein"][:5] = False  # cells 0-4 lack protein
        batch.n_present["protein"] = 5  # the host count that goes with the mask
        part = mod.embed(batch)
        np.testing.assert_allclose(
            part["shared"][:5].numpy(), per["rna"][0][:5].numpy(), atol=1e-6
        )
        np.testing.assert_allclose(part["shared"][5:].numpy(), joint_s[5:].numpy(), atol=1e-6)
        assert torch.isnan(part["private:protein"][:5]).all()
    # stage 2 scores it on the held-out cells (its quality: test_variational's recovery test)
    assert np.isfinite(joint_model.history["stage2"]["stage2/val/latent_shared/joint"])


def test_joint_encoder_survives_save_load(joint_model, tmp_path):
    joint_model.save(tmp_path / "m")
    again = VennCell.load(tmp_path / "m", joint_model.mdata)
    np.testing.assert_allclose(
        again.get_latent_representation(), joint_model.get_latent_representation(), atol=1e-6
    )


def test_joint_encoder_is_not_used_with_image_modalities(helpers):
    """Image crops keep their own convolutional encoders: with an image modality the joint encoder (a default) is
    left out, and the per-modality encoders embed every cell."""
    img, _ = helpers.make_images(n=20)
    model = VennCell(helpers.image_mudata(img), joint_encoder=True, **helpers.IMAGE_MODEL)
    assert not model.module.use_joint and not hasattr(model.module, "joint")
