"""What VennCell needs to know about each modality, and how its likelihood is chosen."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp

KINDS = ("rna", "atac", "protein", "features", "image")
# Default likelihood per kind; ``auto`` inspects the data instead.
KIND_DEFAULT_LIKELIHOOD = {"rna": "nb", "protein": "nb", "atac": "bernoulli_factors", "features": "gaussian",
                           "image": "gaussian"}
# Which likelihoods need raw counts / 0-1 data (mirrors ``Likelihood.data_type``; plain names keep this module torch-free).
COUNT_LIKELIHOODS = ("nb", "zinb", "nb_mixture")
BINARY_LIKELIHOODS = ("bernoulli", "bernoulli_factors")
# Load-time transforms of the data itself (before the likelihood sees it); None = the data as given.
TRANSFORMS = (None, "clr")


@dataclass
class ModalitySpec:
    """One modality's registry entry, saved with the model so new cells get the same treatment.

    ``encoder_transform`` records the preprocessing applied before the encoders: ``log1p_cp10k``
    (counts -> log1p of counts per 10k), ``binary`` or ``standardise`` (with ``feature_mean`` and
    ``feature_std`` computed on the training cells).

    ``transform`` changes the data itself at load time, before likelihood and encoders: ``clr`` is
    muon's ``prot.pp.clr`` with its default ``axis=0``, ``log1p(x_ij / exp(mean_i log1p(x_ij)))`` —
    each feature divided by its pseudo-geometric mean over the *training* cells, recorded in
    ``clr_log_geomean`` so new cells get exactly the same numbers.
    """

    name: str
    kind: str = "features"
    likelihood: str = "gaussian"
    layer: str | None = None
    binarize: bool = False
    private_dim: int | None = None
    weight: float = 1.0
    features: list[str] = field(default_factory=list)
    encoder_transform: str = "standardise"
    feature_mean: list[float] | None = None
    feature_std: list[float] | None = None
    transform: str | None = None
    clr_log_geomean: list[float] | None = None
    # zero-variance features: warn | drop | keep; dropped ones are remembered so new data may carry them
    zero_variance: str = "warn"
    dropped_features: list[str] = field(default_factory=list)

    # image modalities (kind "image", see venncell.data.images): cells x C x H x W in .obsm[image_key] or
    # in the .npy/zarr file image_store; channels picks channels of it; pixels are standardised per channel
    image_key: str | None = None
    image_store: str | None = None
    channels: list[int] | None = None
    image_shape: list[int] | None = None  # (C, H, W) after channel selection
    channel_mean: list[float] | None = None
    channel_std: list[float] | None = None

    @property
    def n_features(self) -> int:
        if self.kind == "image" and self.image_shape:
            return int(np.prod(self.image_shape))
        return len(self.features)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModalitySpec:
        return cls(**d)


def guess_kind(name: str) -> str:
    lname = name.lower()
    for key, kind in (("atac", "atac"), ("peak", "atac"), ("chrom", "atac"), ("rna", "rna"), ("gex", "rna"),
                      ("prot", "protein"), ("adt", "protein"), ("cite", "protein")):
        if key in lname:
            return kind
    return "features"


def _value_sample(x) -> np.ndarray:
    """Up to 200k of x's stored values: enough to tell counts, binary and real values apart."""
    values = x.data if sp.issparse(x) else np.asarray(x).ravel()
    return values[:200_000]


def infer_likelihood(name: str, kind: str, x) -> str:
    """Choose a likelihood from the modality's kind and content.

    Binary data -> Bernoulli; non-negative integers -> NB (ATAC counts -> Bernoulli with cell/region factors after binarising);
    anything else -> Gaussian.
    """
    sample = _value_sample(x)
    if sample.size == 0:
        return KIND_DEFAULT_LIKELIHOOD.get(kind, "gaussian")
    integer = bool(np.isfinite(sample).all()) and not_counts_reason(sample) is None
    binary = integer and sample.max() <= 1
    if kind == "atac" and integer:
        return "bernoulli_factors"
    if binary:
        return "bernoulli"
    if integer:
        return "nb"
    return "gaussian"


def not_counts_reason(x) -> str | None:
    """Why ``infer_likelihood`` would not treat x as counts (None when it would, or when only NaN / inf stand in the
    way: those are an input error of their own, raised when the data are checked)."""
    sample = _value_sample(x)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return None
    if sample.min() < 0:
        return f"negative values (min {sample.min():.3g})"
    frac = sample[~np.isclose(sample, np.round(sample))]
    return f"non-integer values (e.g. {frac[0]:.3g})" if frac.size else None


def default_transform(likelihood: str, kind: str | None = None) -> str:
    if kind == "image":
        return "none"  # pixels arrive standardised per channel (venncell.data.images)
    if likelihood in COUNT_LIKELIHOODS:
        return "log1p_cp10k"
    return "binary" if likelihood in BINARY_LIKELIHOODS else "standardise"
