"""The decoders and encoders of one modality: MLPs for tabular data, convolutional networks for images. Both kinds
share one interface (decoders: ``(z, batch) -> raw`` with ``.likelihood``; encoders: ``x -> (shared, private)``)."""

from __future__ import annotations

import torch
from torch import nn

from venncell.data.spec import ModalitySpec
from venncell.module.config import ModelConfig
from venncell.nn import MLP, make_likelihood
from venncell.nn.cnn import ConvDecoderNet, ConvEncoderNet


def _with_batch(z: torch.Tensor, batch: torch.Tensor | None, n_batches: int) -> torch.Tensor:
    if not n_batches:
        return z
    return torch.cat([z, nn.functional.one_hot(batch, n_batches).to(z.dtype)], dim=1)


class Decoder(nn.Module):
    """Latents (+ batch one-hot) -> the likelihood head's raw parameters of every feature."""

    def __init__(self, d_in: int, spec: ModalitySpec, n_batches: int, cfg: ModelConfig):
        super().__init__()
        self.n_batches = n_batches
        self.likelihood = make_likelihood(spec.likelihood, spec.n_features)
        if spec.kind == "image":
            self.image_shape = tuple(spec.image_shape)
            self.net = ConvDecoderNet(
                d_in + n_batches, spec.image_shape, tuple(cfg.cnn_channels), cfg.hidden
            )
        else:
            self.image_shape = None
            # heads such as zinb / nb_mixture read several outputs per feature (Likelihood.n_raw)
            self.net = MLP(
                d_in + n_batches,
                spec.n_features * self.likelihood.n_raw,
                cfg.hidden,
                cfg.n_layers,
                cfg.dropout,
            )

    def forward(self, z: torch.Tensor, batch: torch.Tensor | None) -> torch.Tensor:
        out = self.net(_with_batch(z, batch, self.n_batches))
        return out if self.image_shape is None else out.reshape(len(out), -1)


class Encoder(nn.Module):
    """One modality's preprocessed data -> (shared, private) latents."""

    def __init__(self, spec: ModalitySpec, shared_dim: int, private_dim: int, cfg: ModelConfig):
        super().__init__()
        self.shared_dim = shared_dim
        if spec.kind == "image":
            self.image_shape = tuple(spec.image_shape)
            self.net = ConvEncoderNet(
                self.image_shape,
                shared_dim + private_dim,
                tuple(cfg.cnn_channels),
                cfg.encoder_hidden,
            )
        else:
            self.image_shape = None
            self.net = MLP(
                spec.n_features,
                shared_dim + private_dim,
                cfg.encoder_hidden,
                cfg.n_layers,
                max(cfg.dropout, cfg.encoder_dropout),
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.image_shape is not None:
            x = x.reshape(len(x), *self.image_shape)
        out = self.net(x)
        return out[:, : self.shared_dim], out[:, self.shared_dim :]
