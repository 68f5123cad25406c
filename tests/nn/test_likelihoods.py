"""Likelihood heads against scipy's reference densities: a wrong formula or shape fails here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from venncell.data.spec import BINARY_LIKELIHOODS, LIKELIHOODS
from venncell.nn import make_likelihood


def test_negative_binomial_matches_scipy():
    rng = np.random.default_rng(0)
    lik = make_likelihood("nb", 5)
    with torch.no_grad():
        lik.log_theta.copy_(torch.log(torch.tensor([0.5, 1.0, 3.0, 10.0, 50.0])))
    raw = torch.tensor(rng.normal(size=(4, 5)), dtype=torch.float32)
    library = torch.tensor([[100.0], [1000.0], [50.0], [3000.0]])
    x = torch.tensor(rng.poisson(20, size=(4, 5)), dtype=torch.float32)
    mu = (torch.softmax(raw, -1) * library).numpy()
    theta = np.exp(lik.log_theta.detach().numpy())
    ref = -stats.nbinom.logpmf(x.numpy(), theta, theta / (theta + mu))
    got = lik.nll(raw, x, library).detach().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lik.mean(raw, library).detach().numpy(), mu, rtol=1e-5)
    np.testing.assert_allclose(lik.normalised_mean(raw).sum(-1).detach().numpy(), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "name", LIKELIHOODS
)  # every head: a new one is tested without being added here
def test_cell_nll_is_the_mean_of_the_per_feature_nll(name):
    """The training term (``cell_nll``: NB takes a sparse path through the non-zeros) equals the reference
    per-feature NLL averaged over features, in value and in gradient, with and without the loader's non-zeros."""
    from venncell.data.dataset import _csr_rows

    rng = np.random.default_rng(1)
    n, g = 6, 40
    lik = make_likelihood(name, g)
    with torch.no_grad():
        for p in lik.parameters():
            p.copy_(torch.as_tensor(rng.normal(scale=0.5, size=p.shape), dtype=torch.float32))
    counts = rng.poisson(rng.gamma(0.3, 4.0, size=(n, g))).astype(np.float32)
    counts[2] = 0.0  # an all-zero cell
    x = torch.tensor(counts if name not in BINARY_LIKELIHOODS else (counts > 0).astype(np.float32))
    library = torch.tensor(counts.sum(1, keepdims=True)).clamp_min(1.0)
    raw = torch.tensor(
        rng.normal(size=(n, g * lik.n_raw)), dtype=torch.float32, requires_grad=True
    )
    import scipy.sparse as sp

    csr = sp.csr_matrix(x.numpy())
    nonzeros = torch.from_numpy(_csr_rows(csr, np.arange(n))[1])
    assert torch.equal(nonzeros, x.nonzero().T)

    def value_and_grads(fn):
        raw.grad = None
        lik.zero_grad()
        v = fn()
        v.sum().backward()
        return v.detach(), [raw.grad.clone()] + [
            p.grad.clone() for p in lik.parameters() if p.grad is not None
        ]

    ref, ref_grads = value_and_grads(lambda: lik.nll(raw, x, library).mean(1))
    for nz in (None, nonzeros):
        got, grads = value_and_grads(lambda: lik.cell_nll(raw, x, library, nz))
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        assert len(grads) == len(ref_grads)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_batches_carry_nonzeros_of_count_modalities_only():
    """The loader lists NB modalities' non-zeros (from the CSR, masked-out cells excluded) and nothing else."""
    import anndata as ad
    import mudata as md
    import scipy.sparse as sp

    from venncell import VennCell

    rng = np.random.default_rng(0)
    rna = rng.poisson(0.5, size=(30, 12)).astype(np.float32)
    prot = rng.poisson(5.0, size=(30, 4)).astype(np.float32)
    mdata = md.MuData({"rna": ad.AnnData(sp.csr_matrix(rna)), "protein": ad.AnnData(prot)})
    VennCell.setup_mudata(
        mdata, {"rna": "rna", "protein": {"kind": "protein", "likelihood": "zinb"}}
    )
    model = VennCell(mdata, validation_fraction=0.0)
    idx = np.array([5, 0, 17, 3])
    batch = model.data.get(idx)
    assert "protein" not in batch.nz
    assert torch.equal(batch.nz["rna"], batch.x["rna"].nonzero().T)
    # a subset of the batch (held-out cells, the consistency term's cells) keeps its rows' non-zeros, renumbered
    for keep in (torch.tensor([True, False, True, True]), torch.tensor([3, 0])):
        sub = batch.subset(keep)
        flat = sub.nz["rna"][0] * 12 + sub.nz["rna"][1]
        assert torch.equal(flat.sort().values, sub.x["rna"].reshape(-1).nonzero().squeeze(1))
    # cells missing from a modality: the CSR holds only the present cells' rows, placed at their batch rows
    part = md.MuData({"rna": mdata["rna"][[5, 17]].copy(), "protein": mdata["protein"].copy()})
    VennCell.setup_mudata(
        part, {"rna": "rna", "protein": {"kind": "protein", "likelihood": "zinb"}}
    )
    names = list(part.obs_names)
    got = VennCell(part, validation_fraction=0.0).data.get(
        np.array([names.index(c) for c in ("0", "5", "3", "17")])
    )
    dense = np.zeros((4, 12), dtype=np.float32)
    dense[[1, 3]] = rna[[5, 17]]
    np.testing.assert_array_equal(got.x["rna"].numpy(), dense)
    np.testing.assert_array_equal(got.nz["rna"].numpy(), np.stack(np.nonzero(dense)))


def test_bernoulli_matches_scipy():
    lik = make_likelihood("bernoulli", 3)
    raw = torch.tensor([[0.0, 2.0, -1.0], [3.0, -2.0, 0.5]])
    x = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    p = 1 / (1 + np.exp(-raw.numpy()))
    np.testing.assert_allclose(
        lik.nll(raw, x, None).numpy(), -stats.bernoulli.logpmf(x.numpy(), p), rtol=1e-5
    )


def test_gaussian_matches_scipy():
    lik = make_likelihood("gaussian", 2)
    with torch.no_grad():
        lik.log_scale.copy_(torch.tensor([0.0, np.log(2.0)]))
    raw = torch.tensor([[0.5, -1.0]])
    x = torch.tensor([[1.5, 3.0]])
    ref = -stats.norm.logpdf(x.numpy(), raw.numpy(), np.array([1.0, 2.0]))
    np.testing.assert_allclose(lik.nll(raw, x, None).detach().numpy(), ref, rtol=1e-5)


@pytest.mark.parametrize(
    "name,data", [("nb", "counts"), ("bernoulli", "binary"), ("gaussian", "real")]
)
def test_fitting_recovers_a_known_mean(name, data):
    """Maximising each likelihood over a free mean lands on the data's mean (catches sign/shape bugs)."""
    rng = np.random.default_rng(1)
    if data == "counts":
        p = np.array([0.1, 0.3, 0.6])
        x = rng.multinomial(200, p, size=500).astype(np.float32)
        target = p
    elif data == "binary":
        target = np.array([0.2, 0.5, 0.9])
        x = (rng.random((500, 3)) < target).astype(np.float32)
    else:
        target = np.array([-1.0, 0.0, 2.0])
        x = (target + rng.normal(size=(2000, 3))).astype(np.float32)
    lik = make_likelihood(name, 3)
    raw = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.Adam([raw, *lik.parameters()], lr=0.05)
    xt = torch.tensor(x)
    lib = xt.sum(1, keepdim=True) if name == "nb" else None
    for _ in range(1500):
        opt.zero_grad()
        lik.nll(raw.expand(len(xt), 3), xt, lib).mean().backward()
        opt.step()
    est = lik.normalised_mean(raw).detach().numpy().ravel()
    mle = (
        x.sum(0) / x.sum() if name == "nb" else x.mean(0)
    )  # the closed-form maximum-likelihood mean
    np.testing.assert_allclose(est, mle, atol=0.02)
    np.testing.assert_allclose(est, target, atol=0.1)


# --------------------------------------------------------------------------------- heads for real modalities
from scipy.special import expit, logsumexp  # noqa: E402

from venncell.data.validate import VennCellInputError  # noqa: E402


def _set(param, values):
    with torch.no_grad():
        param.copy_(torch.as_tensor(values, dtype=torch.float32))


def test_zinb_matches_scipy_and_mean_is_expected_value():
    rng = np.random.default_rng(0)
    lik = make_likelihood("zinb", 5)
    assert lik.n_raw == 2
    _set(lik.log_theta, np.log([0.5, 1.0, 3.0, 10.0, 50.0]))
    raw = torch.tensor(rng.normal(size=(4, 10)), dtype=torch.float32)
    library = torch.tensor([[100.0], [1000.0], [50.0], [3000.0]])
    x = torch.tensor(
        rng.poisson(5, size=(4, 5)) * rng.integers(0, 2, size=(4, 5)), dtype=torch.float32
    )
    assert (x == 0).any() and (x > 0).any()
    mu = (torch.softmax(raw[:, :5], -1) * library).numpy()
    pi = expit(raw[:, 5:].numpy())
    theta = np.exp(lik.log_theta.detach().numpy())
    xn = x.numpy()
    nb = stats.nbinom.logpmf(xn, theta, theta / (theta + mu))
    ref = -np.where(xn == 0, np.log(pi + (1 - pi) * np.exp(nb)), np.log1p(-pi) + nb)
    got = lik.nll(raw, x, library).detach().numpy()
    assert got.shape == (4, 5)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lik.mean(raw, library).detach().numpy(), (1 - pi) * mu, rtol=1e-5)
    np.testing.assert_allclose(
        (lik.normalised_mean(raw) * library).detach().numpy(), (1 - pi) * mu, rtol=1e-5
    )
    # a dropout logit of -inf is plain NB
    raw_nb = torch.cat([raw[:, :5], torch.full((4, 5), -1e4)], 1)
    np.testing.assert_allclose(
        lik.nll(raw_nb, x, library).detach().numpy(), -nb, rtol=1e-4, atol=1e-4
    )


def test_nb_mixture_matches_scipy_and_means():
    rng = np.random.default_rng(1)
    lik = make_likelihood("nb_mixture", 4)
    _set(lik.log_theta, np.log([2.0, 5.0, 10.0, 30.0]))
    _set(lik.log_background, np.log([1.0, 5.0, 20.0, 3.0]))
    raw = torch.tensor(rng.normal(size=(3, 8)) * 2, dtype=torch.float32)
    x = torch.tensor(rng.poisson(15, size=(3, 4)), dtype=torch.float32)
    bg = np.array([1.0, 5.0, 20.0, 3.0])
    fg = bg * (1 + np.log1p(np.exp(raw[:, :4].numpy())))
    pi = expit(raw[:, 4:].numpy())
    theta = np.exp(lik.log_theta.detach().numpy())
    xn = x.numpy()
    ref = -logsumexp(
        [
            np.log(pi) + stats.nbinom.logpmf(xn, theta, theta / (theta + bg)),
            np.log1p(-pi) + stats.nbinom.logpmf(xn, theta, theta / (theta + fg)),
        ],
        axis=0,
    )
    got = lik.nll(raw, x, None).detach().numpy()
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        lik.mean(raw, None).detach().numpy(), pi * bg + (1 - pi) * fg, rtol=1e-5
    )
    np.testing.assert_allclose(lik.normalised_mean(raw).detach().numpy(), (1 - pi) * fg, rtol=1e-5)


def test_bernoulli_factors_typical_cell_is_one_with_open_peaks():
    """With a few peaks, most cells have none open; their factor floor (1e-3) was the median, and every ATAC
    prediction came out a thousandth of the observed frequency (0.0002 for 0.25)."""
    import scipy.sparse as sp

    lik = make_likelihood("bernoulli_factors", 2)
    depth = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2], dtype=float)
    x = sp.csr_matrix(np.array([[0, 0]] * 6 + [[1, 0], [0, 1], [1, 1], [1, 1]], dtype=np.float32))
    lik.init_from_data(x, depth)
    # the cells with open peaks: factors 1/1.5, 1/1.5, 1, 1
    assert float(lik.ref_depth) == 1.5 and abs(float(lik.median_factor) - 5 / 6) < 1e-6
    assert float(lik.normalised_mean(torch.full((1, 2), 6.0)).mean()) > 0.2


def test_bernoulli_factors_matches_scipy_and_cell_factor():
    rng = np.random.default_rng(2)
    lik = make_likelihood("bernoulli_factors", 3)
    r = np.array([0.2, 0.5, 0.9])
    _set(lik.region_logit, np.log(r / (1 - r)))
    lik.ref_depth.fill_(100.0)
    lik.median_factor.fill_(0.7)
    raw = torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float32)
    library = torch.tensor([[50.0], [100.0], [300.0], [10.0]])
    c = np.array([0.5, 1.0, 1.0, 0.1])[:, None]  # depth / reference, clipped to 1
    p = expit(raw.numpy()) * r * c
    x = torch.tensor((rng.random((4, 3)) < 0.5).astype(np.float32))
    np.testing.assert_allclose(
        lik.nll(raw, x, library).detach().numpy(),
        -stats.bernoulli.logpmf(x.numpy(), p),
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(lik.mean(raw, library).detach().numpy(), p, rtol=1e-5)
    np.testing.assert_allclose(
        lik.normalised_mean(raw).detach().numpy(), expit(raw.numpy()) * r * 0.7, rtol=1e-5
    )


def test_decoder_width_and_split_check():
    from venncell.data.spec import ModalitySpec
    from venncell.module import ModelConfig as VennConfig
    from venncell.module.networks import Decoder

    for name, n_raw in [("nb", 1), ("zinb", 2), ("nb_mixture", 2), ("bernoulli_factors", 1)]:
        spec = ModalitySpec("m", likelihood=name, features=[f"f{i}" for i in range(7)])
        dec = Decoder(3, spec, 0, VennConfig(hidden=8))
        raw = dec(torch.zeros(5, 3), None)
        assert raw.shape == (5, 7 * n_raw)
        assert dec.likelihood.nll(raw, torch.ones(5, 7), torch.full((5, 1), 50.0)).shape == (5, 7)
        assert dec.likelihood.normalised_mean(raw).shape == (5, 7)
    with pytest.raises(ValueError, match="expected 7 features x 2"):
        make_likelihood("zinb", 7).nll(torch.zeros(5, 7), torch.ones(5, 7), torch.ones(5, 1))


def _adam(params, loss_fn, steps, lr=0.05):
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()


def test_zinb_fit_recovers_dropout():
    """Free per-gene parameters fitted to ZINB samples recover the dropout rate (+-0.04) and mean (+-8 %)."""
    rng = np.random.default_rng(3)
    p, pi, theta, lib = np.array([0.2, 0.3, 0.5]), np.array([0.1, 0.3, 0.5]), 5.0, 40.0
    mu = p * lib
    n = 2500
    counts = rng.negative_binomial(theta, theta / (theta + mu), size=(n, 3))
    x = torch.tensor(np.where(rng.random((n, 3)) < pi, 0, counts), dtype=torch.float32)
    lik = make_likelihood("zinb", 3)
    raw = torch.zeros(1, 6, requires_grad=True)
    library = torch.full((n, 1), lib)
    _adam(
        [raw, *lik.parameters()], lambda: lik.nll(raw.expand(n, 6), x, library).mean(), 500, lr=0.1
    )
    np.testing.assert_allclose(lik.dropout(raw).detach().numpy().ravel(), pi, atol=0.04)
    np.testing.assert_allclose(
        lik.mean(raw, torch.tensor([[lib]])).detach().numpy().ravel(), (1 - pi) * mu, rtol=0.08
    )


def test_nb_mixture_init_and_fit_recover_background():
    """The GMM start lands within 1.5x of the true background and foreground; fitting recovers both means
    (+-10 %) and the background probability (+-0.04)."""
    rng = np.random.default_rng(4)
    bg, fg, pi, theta = (
        np.array([3.0, 10.0, 20.0]),
        np.array([40.0, 80.0, 300.0]),
        np.array([0.3, 0.5, 0.7]),
        20.0,
    )
    n = 2500
    is_bg = rng.random((n, 3)) < pi
    mean = np.where(is_bg, bg, fg)
    x = rng.negative_binomial(theta, theta / (theta + mean)).astype(np.float32)
    lik = make_likelihood("nb_mixture", 3)
    lik.init_from_data(x, x.sum(1))
    raw = torch.zeros(1, 6, requires_grad=True)
    b0, f0, _ = (t.detach().numpy().ravel() for t in lik.components(raw))
    assert np.all((b0 > bg / 1.5) & (b0 < bg * 1.5)) and np.all(
        (f0 > fg / 1.5) & (f0 < fg * 1.5)
    ), (b0, f0)
    xt = torch.tensor(x)
    _adam([raw, *lik.parameters()], lambda: lik.nll(raw.expand(n, 6), xt, None).mean(), 250)
    b, f, p = (t.detach().numpy().ravel() for t in lik.components(raw))
    np.testing.assert_allclose(b, bg, rtol=0.1)
    np.testing.assert_allclose(f, fg, rtol=0.1)
    np.testing.assert_allclose(p, pi, atol=0.04)


def test_bernoulli_factors_fit_recovers_region_factors():
    """With the decoder's output and the cells' depths given, fitting recovers each peak's factor (+-0.05)."""
    rng = np.random.default_rng(5)
    r = np.array([0.2, 0.4, 0.6, 0.8, 0.95])
    n = 4000
    raw = torch.tensor(rng.normal(1.0, 1.0, size=(n, 5)), dtype=torch.float32)
    c = rng.uniform(0.2, 1.0, size=(n, 1))
    x = torch.tensor((rng.random((n, 5)) < expit(raw.numpy()) * r * c).astype(np.float32))
    lik = make_likelihood("bernoulli_factors", 5)
    lik.ref_depth.fill_(100.0)
    library = torch.tensor(c * 100.0, dtype=torch.float32)
    _adam([lik.region_logit], lambda: lik.nll(raw, x, library).mean(), 600)
    np.testing.assert_allclose(lik.region_factor().detach().numpy(), r, atol=0.05)


# --------------------------------------------------------------------------------- preprocessing
def _clr_reference(x):
    """muon's own ``prot.pp.clr(axis=0)`` (muon is a dev dependency): VennCell re-implements it only to record the
    per-protein means, so new cells are normalised with the training cells' means."""
    import anndata as ad
    from muon import prot

    a = ad.AnnData(x.copy())
    prot.pp.clr(a, axis=0)
    return np.asarray(a.X, dtype=np.float64)


@pytest.mark.parametrize("sparse", [False, True])
def test_clr_matches_muon_and_reuses_training_means(sparse):
    import scipy.sparse as sp

    from venncell.data.spec import ModalitySpec
    from venncell.data.transforms import apply_transform, clr_log_geomean

    rng = np.random.default_rng(6)
    x = rng.poisson(rng.gamma(2.0, 10.0, size=(1, 6)), size=(50, 6)).astype(np.float32)
    mat = sp.csr_matrix(x) if sparse else x
    spec = ModalitySpec("adt", transform="clr", clr_log_geomean=clr_log_geomean("adt", mat))
    out = apply_transform(spec, mat)
    out = out.toarray() if sparse else out
    np.testing.assert_allclose(out, _clr_reference(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    # new cells: the training means, not their own
    sub = apply_transform(spec, mat[:7])
    np.testing.assert_allclose(sub.toarray() if sparse else sub, out[:7], rtol=1e-6)
    with pytest.raises(VennCellInputError, match="adt.*clr.*negative"):
        clr_log_geomean("adt", -mat)


@pytest.mark.parametrize("transform", ["log1p_cp10k", "binary", "standardise"])
def test_spectral_scores_from_sparse_equal_dense_pca(transform):
    """The spectral start works on the sparse matrix and gives the dense PCA's scores (up to sign)."""
    import scipy.sparse as sp
    from sklearn.decomposition import PCA

    from venncell.data.spec import ModalitySpec
    from venncell.data.transforms import encoder_transform
    from venncell.module.init import _encoder_input, _modality_scores

    rng = np.random.default_rng(7)
    dense = (rng.poisson(0.3, size=(120, 40)) * (rng.random((120, 40)) < 0.5)).astype(np.float32)
    dense[:, 0] += 1  # no empty cell

    class _Data:
        backed = False
        specs = {
            "m": ModalitySpec(
                "m",
                encoder_transform=transform,
                features=[str(i) for i in range(40)],
                feature_mean=dense.mean(0).tolist(),
                feature_std=(dense.std(0) + 1e-6).tolist(),
            )
        }

        @staticmethod
        def rows(m, cells):
            return sp.csr_matrix(dense)[cells], dense.sum(1)[cells]

    rows = np.arange(120)
    assert sp.issparse(_encoder_input(_Data, "m", rows))
    got, _ = _modality_scores(_Data, "m", rows, 5, seed=0)
    ref_x = encoder_transform(
        _Data.specs["m"], torch.tensor(dense), torch.tensor(dense.sum(1))[:, None]
    ).numpy()
    ref = PCA(5, svd_solver="full").fit_transform(ref_x.astype(np.float64))
    np.testing.assert_allclose(np.abs(got), np.abs(ref), rtol=1e-4, atol=1e-4)


def test_spectral_start_keeps_the_spectrum():
    """Starting latents keep their components' relative variances (mean variance 1), not whitened: a weak
    trailing component must not weigh as much as the leading one in the starting neighbourhoods."""
    from venncell import VennCell
    from venncell.data import make_synthetic
    from venncell.module.init import _keep_spectrum

    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 3)) * [3.0, 2.0, 0.5] + 7.0
    out, _ = _keep_spectrum(z)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(out.var(0).mean(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out.var(0) / out.var(0)[0], z.var(0) / z.var(0)[0], rtol=1e-9)

    mdata, _ = make_synthetic(n_cells=300, modalities={"rna": 60, "protein": 20}, seed=1)
    VennCell.setup_mudata(mdata, {"rna": "rna", "protein": "protein"})
    # 8 shared dimensions for 4 true shared factors: the surplus components are weak and must start small
    shared = (
        VennCell(mdata, shared_dim=8, private_dim=2).module.shared_table.weight.detach().numpy()
    )
    v = shared.var(0)
    # GCCA eigenvalues are 1 + canonical correlation, so at most 2:1; whitened components would be 1:1
    assert v[0] > 1.2 * v[-1] and abs(v.mean() - 1) < 0.05


# --------------------------------------------------------------------------------- end to end
def _tiny(seed=3):
    from venncell.data import make_synthetic

    mdata, _ = make_synthetic(
        n_cells=200, modalities={"rna": 60, "protein": 20, "atac": 80}, seed=seed
    )
    return mdata


@pytest.mark.parametrize("variant", ["zinb+nb_mixture", "clr"])
def test_train_save_load_predict_with_real_modality_heads(tmp_path, variant):
    import mudata as md

    from venncell import VennCell

    mdata = _tiny()
    if variant == "clr":
        mods = {"rna": "rna", "protein": {"kind": "protein", "transform": "clr"}, "atac": "atac"}
    else:
        mods = {
            "rna": {"kind": "rna", "likelihood": "zinb"},
            "protein": {"kind": "protein", "likelihood": "nb_mixture"},
            "atac": "atac",
        }
    VennCell.setup_mudata(mdata, modalities=mods)
    model = VennCell(mdata, shared_dim=4, private_dim=2, hidden=32, encoder_hidden=32, seed=0)
    spec = model.specs
    assert spec["atac"].likelihood == "bernoulli_factors" and spec["atac"].binarize
    depth = np.asarray((mdata["atac"].X > 0).sum(1)).ravel()
    assert float(model.module.decoders["atac"].likelihood.ref_depth) == pytest.approx(
        np.median(depth)
    )
    if variant == "clr":
        assert (
            spec["protein"].likelihood == "gaussian" and len(spec["protein"].clr_log_geomean) == 20
        )
    else:
        assert model.module.decoders["protein"].net.net[-1].out_features == 40
    model.train(
        run_dir=tmp_path / "run",
        stage1_epochs=3,
        stage2_epochs=2,
        batch_size=64,
        progress_bar="none",
    )
    z = model.get_latent_representation(source="encoder")  # what the loaded model gives new cells
    assert np.isfinite(z).all()
    model.save(tmp_path / "model")
    loaded = VennCell.load(tmp_path / "model")
    np.testing.assert_allclose(loaded.get_latent_representation(mdata), z, rtol=1e-5, atol=1e-6)
    # new cells get the training preprocessing (CLR means, ATAC reference depth), not one refitted on them
    sub = mdata[:50].copy()
    np.testing.assert_allclose(loaded.get_latent_representation(sub), z[:50], rtol=1e-5, atol=1e-6)
    prot = loaded.predict_modality(sub, source=["rna"], target="protein")
    np.testing.assert_allclose(
        prot, model.predict_modality(source=["rna"], target="protein")[:50], rtol=1e-5, atol=1e-6
    )
    assert prot.shape == (50, 20) and np.isfinite(prot).all()
    no_atac = md.MuData({"rna": sub["rna"].copy(), "protein": sub["protein"].copy()})
    acc = loaded.predict_modality(no_atac, source=["rna", "protein"], target="atac")
    assert acc.shape == (50, 80) and (acc >= 0).all() and (acc <= 1).all()
    # the ATAC reference depth and region factors travel with the saved model
    np.testing.assert_allclose(
        acc,
        model.predict_modality(no_atac, source=["rna", "protein"], target="atac"),
        rtol=1e-5,
        atol=1e-7,
    )
    if variant != "clr":
        counts = model.predict_modality(sub, source=["protein"], target="rna", scale="counts")
        assert counts.shape == (50, 60) and (counts >= 0).all()


def test_real_modality_options_reject_bad_input():
    from venncell import VennCell

    mdata = _tiny()
    rna = mdata["rna"]
    rna.layers["norm"] = (
        np.asarray(rna.X.todense() if hasattr(rna.X, "todense") else rna.X) * 0.5 + 0.25
    ).astype(np.float32)
    VennCell.setup_mudata(
        mdata,
        modalities={
            "rna": {"kind": "rna", "likelihood": "zinb", "layer": "norm"},
            "protein": "protein",
        },
    )
    with pytest.raises(VennCellInputError, match="'rna'.*negative binomial.*'zinb'.*non-integer"):
        VennCell(mdata)
    prot = mdata["protein"]
    prot.layers["centred"] = (
        np.asarray(prot.X.todense() if hasattr(prot.X, "todense") else prot.X) - 5.0
    ).astype(np.float32)
    VennCell.setup_mudata(
        mdata,
        modalities={
            "rna": "rna",
            "protein": {"kind": "protein", "transform": "clr", "layer": "centred"},
        },
    )
    with pytest.raises(VennCellInputError, match="'protein'.*clr.*negative"):
        VennCell(mdata)
    with pytest.raises(VennCellInputError, match="'protein'.*clr.*gaussian"):
        VennCell.setup_mudata(
            mdata, modalities={"rna": "rna", "protein": {"transform": "clr", "likelihood": "nb"}}
        )
    with pytest.raises(VennCellInputError, match="'protein'.*transform 'log'"):
        VennCell.setup_mudata(mdata, modalities={"rna": "rna", "protein": {"transform": "log"}})


def test_features_far_from_zero_are_fitted_like_centred_ones():
    """Gaussian features are scaled, not centred: at a mean of 50 (raw CellProfiler-style values) the decoder's
    bias never reached it, predictions correlated -0.4 with the data and the planner explained nothing."""
    import anndata as ad
    import mudata as md
    import pandas as pd

    from venncell import VennCell, make_synthetic

    cells, _ = make_synthetic(n_cells=300, modalities={"rna": 40, "protein": 10}, seed=0)
    z = cells.obsm["true_shared"]
    rng = np.random.default_rng(0)
    signal = z @ rng.normal(size=(z.shape[1], 12)) + 0.3 * rng.normal(size=(300, 12))
    r = {}
    for offset in (0.0, 50.0):
        feats = ad.AnnData((signal + offset).astype("f4"), obs=pd.DataFrame(index=cells.obs_names))
        feats.var_names = [f"cp{i}" for i in range(12)]
        mdata = md.MuData({"rna": cells["rna"].copy(), "cp": feats})
        VennCell.setup_mudata(mdata, modalities={"rna": "rna", "cp": "features"})
        model = VennCell(mdata, seed=0)
        model.train(stage1_epochs=5, stage2_epochs=3, progress_bar="none", num_threads=1)
        pred = model.predict_modality(source=["rna"], target="cp")
        assert abs(pred.mean() - (signal + offset).mean()) < 0.5, offset
        r[offset] = np.mean([np.corrcoef(pred[:, j], signal[:, j])[0, 1] for j in range(12)])
    assert r[50.0] > 0.6 and abs(r[50.0] - r[0.0]) < 0.05, r
