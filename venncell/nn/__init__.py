"""Building blocks: MLPs, encoders and decoders, likelihood heads."""

from venncell.nn.likelihoods import LIKELIHOODS, Likelihood, make_likelihood
from venncell.nn.mlp import MLP

__all__ = ["LIKELIHOODS", "Likelihood", "MLP", "make_likelihood"]
