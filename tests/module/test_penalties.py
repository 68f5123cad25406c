"""The leakage-control penalties: what each one measures, on inputs whose answer is known."""

import torch

from venncell.module.penalties import (
    _lower_median,
    centred_rbf_gram,
    normalised_hsic,
    unexplained_fraction,
)


def test_lower_median_matches_torch_median_with_ties_and_odd_or_even_counts():
    g = torch.Generator().manual_seed(0)
    for shape in [(5, 5), (6, 6), (127, 128), (128, 127)]:
        t = torch.randn(shape, generator=g)
        assert torch.equal(_lower_median(t), t.median())
        ties = torch.randint(0, 3, shape, generator=g).float()
        assert torch.equal(_lower_median(ties), ties.median())
    # a non-contiguous view, as centred_rbf_gram passes it
    t = torch.randn(9, 10, generator=g)[:, :-1]
    assert torch.equal(_lower_median(t), t.median())
    for dtype in (
        torch.float64,
        torch.bfloat16,
    ):  # bfloat16: numpy has none, torch's median answers
        t = torch.randn(6, 6, generator=g).to(dtype)
        assert torch.equal(_lower_median(t), t.median()) and _lower_median(t).dtype == dtype
    t = torch.randn(6, 6, generator=g)
    t[2, 3] = float("nan")
    assert torch.isnan(_lower_median(t))  # as torch.median: NaN is not hidden by the selection


def test_centred_gram_is_centred_and_uses_the_median_bandwidth():
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    k = centred_rbf_gram(x)
    assert torch.allclose(k.sum(0), torch.zeros(64), atol=1e-4)
    assert torch.allclose(k.sum(1), torch.zeros(64), atol=1e-4)
    d2 = torch.cdist(x, x).pow(2)
    off = d2[~torch.eye(64, dtype=torch.bool)]
    raw = torch.exp(-d2 / off.median())
    h = torch.eye(64) - 1.0 / 64
    assert torch.allclose(k, h @ raw @ h, atol=1e-4)


def test_hsic_separates_independent_from_nonlinearly_dependent_latents():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(256, 2, generator=g)
    independent = normalised_hsic(x, torch.randn(256, 2, generator=g))
    # no linear correlation with x, but a function of it: a linear decorrelation penalty would miss it
    dependent = normalised_hsic(x, torch.stack([x[:, 0] ** 2, x[:, 1].abs()], 1))
    assert float(independent) < 0.1
    assert float(dependent) > 3 * float(independent)
    assert 0.0 <= float(independent) <= 1.0 and 0.0 <= float(dependent) <= 1.0
    assert float(normalised_hsic(x, x)) > 0.99


def test_unexplained_fraction_is_one_minus_r2_and_scale_free():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(100, 4, generator=g)
    assert float(unexplained_fraction(z, z)) == 0.0
    assert abs(float(unexplained_fraction(z, z.mean(0).expand_as(z))) - 1.0) < 1e-5
    noisy = z + 0.5 * torch.randn(100, 4, generator=g)
    assert torch.allclose(
        unexplained_fraction(z, noisy), unexplained_fraction(10 * z, 10 * noisy), rtol=1e-5
    )
