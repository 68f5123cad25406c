"""The default image augmentation: crops turned and mirrored at random during training give latents that describe
a cell's stains and shape, not which way the cell points in its crop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold, cross_val_score
from sklearn.neighbors import KNeighborsRegressor

from venncell import VennCell
from venncell.nn.cnn import random_dihedral

SIZE = 16


def oriented_images(n=400, seed=0):
    """Two channels of one cell: the shared factor sets both blobs' brightness; each channel's private factor sets
    how far its blob sits from the centre; the direction (one of four, the same in both channels) is a nuisance."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(-1, 1, size=(n, 3))
    direction = rng.integers(0, 4, n)
    unit = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]], dtype=np.float32)[direction]
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    c = SIZE / 2 - 0.5
    amp = (1.0 + 0.7 * f[:, 0])[:, None, None]

    def blob(dist):
        y = c + unit[:, 0] * dist
        x = c + unit[:, 1] * dist
        d2 = (yy[None] - y[:, None, None]) ** 2 + (xx[None] - x[:, None, None]) ** 2
        return np.exp(-d2 / (2 * 1.5**2))

    img = np.stack([amp * blob(3 + 2 * f[:, 1]), amp * blob(3 + 2 * f[:, 2])], axis=1)
    img = img + 0.05 * rng.normal(size=img.shape)
    return img.astype(np.float32), f


def knn_r2(z, y):
    cv = KFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(KNeighborsRegressor(15), z, y, cv=cv, scoring="r2").mean())


@pytest.fixture(scope="module")
def fits(tmp_path_factory, helpers):
    img, f = oriented_images()
    turned = np.ascontiguousarray(np.rot90(img, 1, axes=(2, 3)))
    out = {}
    for augment in (True, False):
        mdata = helpers.image_mudata(img)
        model = VennCell(mdata, **dict(helpers.IMAGE_MODEL, image_augment=augment))
        model.train(
            stage1_epochs=30,
            stage2_epochs=20,
            batch_size=64,
            progress_bar="none",
            run_dir=tmp_path_factory.mktemp(f"aug_{augment}"),
        )
        z = model.get_latent_representation(block="all")
        z_turned = model.get_latent_representation(helpers.image_mudata(turned), block="all")
        out[augment] = (model, z, z_turned)
    return out, f


def test_augmentation_is_on_by_default(helpers):
    img, _ = oriented_images(n=20)
    assert VennCell(helpers.image_mudata(img)).config.image_augment is True


def test_random_dihedral_moves_pixels_only():
    torch.manual_seed(0)
    x = torch.randn(200, 2 * 5 * 5)
    y = random_dihedral(x, (2, 5, 5))
    assert torch.equal(x.sort(1).values, y.sort(1).values)  # the same pixels, rearranged
    assert not torch.equal(x, y)
    # one asymmetric crop, many times: every symmetry of the square turns up, and nothing else
    one = torch.arange(9.0).repeat(400, 1)
    seen = {tuple(r.tolist()) for r in random_dihedral(one, (1, 3, 3))}
    square = torch.arange(9.0).reshape(3, 3)
    group = {
        tuple(t.rot90(k).flatten().tolist()) for t in (square, square.flip(-1)) for k in range(4)
    }
    assert seen == group and len(group) == 8


def test_latents_ignore_the_cells_orientation(fits):
    """Turning every crop a quarter turn moves the augmented model's latents far less than the unaugmented one's,
    relative to how much the latents vary between cells."""
    out, _ = fits

    def moved(augment):
        _, z, z_turned = out[augment]
        return float(((z - z_turned) ** 2).sum(1).mean() / ((z - z.mean(0)) ** 2).sum(1).mean())

    assert moved(True) < 0.25, moved(True)
    assert moved(True) < 0.5 * moved(False), (moved(True), moved(False))


def test_augmented_latents_keep_the_factors(fits):
    """The shared block still holds the shared factor and each private block its channel's factor."""
    out, f = fits
    model = out[True][0]
    shared = model.get_latent_representation()
    assert knn_r2(shared, f[:, 0]) > 0.8
    for k, m in ((1, "ch0"), (2, "ch1")):
        own = knn_r2(model.get_latent_representation(block=f"private:{m}"), f[:, k])
        assert own > 0.7, (m, own)


def test_the_setting_is_saved_and_older_models_keep_training_without_it(fits, tmp_path):
    model = fits[0][True][0]
    model.save(tmp_path / "m")
    assert VennCell.load(tmp_path / "m").config.image_augment is True
    meta_file = tmp_path / "m" / "venncell.json"
    meta = json.loads(meta_file.read_text())
    del meta["config"]["image_augment"]  # a model saved before the setting existed
    meta_file.write_text(json.dumps(meta))
    assert VennCell.load(tmp_path / "m").config.image_augment is False


def test_every_channel_of_a_crop_turns_together_and_wide_crops_get_half_turns_and_mirrors():
    torch.manual_seed(1)
    x = torch.randn(300, 3, 4, 4)
    y = random_dihedral(x.reshape(300, -1), (3, 4, 4)).reshape(300, 3, 4, 4)
    options = torch.stack(
        [t.rot90(k, (-2, -1)) for t in (x, x.flip(-1)) for k in range(4)]
    )  # (8, cells, C, H, W): the whole crop under each symmetry
    assert ((options == y[None]).flatten(2).all(2)).any(0).all()
    wide = torch.arange(12.0).reshape(3, 4)
    allowed = {
        tuple(t.flatten().tolist()) for t in (wide, wide.flip(-1), wide.flip(-2), wide.rot90(2))
    }
    seen = {tuple(r.tolist()) for r in random_dihedral(wide.flatten().repeat(200, 1), (1, 3, 4))}
    assert seen == allowed


def test_embeddings_read_the_crops_as_they_are(fits):
    model = fits[0][True][0]
    np.testing.assert_array_equal(
        model.get_latent_representation(block="all"), model.get_latent_representation(block="all")
    )
