"""What VennCell needs to know about each modality, and how its likelihood is chosen."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp

KINDS = ("rna", "atac", "protein", "features")
# Default likelihood per kind; ``auto`` inspects the data instead.
KIND_DEFAULT_LIKELIHOOD = {"rna": "nb", "protein": "nb", "atac": "bernoulli", "features": "gaussian"}


@dataclass
class ModalitySpec:
    """One modality's registry entry, saved with the model so new cells get the same treatment.

    ``encoder_transform`` records the preprocessing applied before the encoders: ``log1p_cp10k``
    (counts -> log1p of counts per 10k), ``binary`` or ``standardise`` (with ``feature_mean`` and
    ``feature_std`` computed on the training cells).
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

    @property
    def n_features(self) -> int:
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


def infer_likelihood(name: str, kind: str, x) -> str:
    """Choose a likelihood from the modality's kind and content.

    Binary data -> Bernoulli; non-negative integers -> NB (ATAC counts -> Bernoulli after binarising);
    anything else -> Gaussian.
    """
    values = x.data if sp.issparse(x) else np.asarray(x).ravel()
    sample = values[: 200_000]
    if sample.size == 0:
        return KIND_DEFAULT_LIKELIHOOD.get(kind, "gaussian")
    finite = np.isfinite(sample).all()
    nonneg = finite and sample.min() >= 0
    integer = nonneg and np.allclose(sample, np.round(sample))
    binary = integer and sample.max() <= 1
    if kind == "atac" and integer:
        return "bernoulli"
    if binary:
        return "bernoulli"
    if integer:
        return "nb"
    return "gaussian"


def default_transform(likelihood: str) -> str:
    return {"nb": "log1p_cp10k", "bernoulli": "binary"}.get(likelihood, "standardise")
