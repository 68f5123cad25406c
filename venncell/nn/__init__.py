"""Building blocks: MLPs, encoders and decoders, likelihood heads."""

from venncell.nn.extend import ExtendedLinear
from venncell.nn.likelihoods import (
    LIKELIHOODS,
    BernoulliFactors,
    Likelihood,
    NBMixture,
    ZeroInflatedNB,
    make_likelihood,
)
from venncell.nn.mlp import MLP

__all__ = [
    "LIKELIHOODS",
    "BernoulliFactors",
    "ExtendedLinear",
    "Likelihood",
    "MLP",
    "NBMixture",
    "ZeroInflatedNB",
    "make_likelihood",
]
