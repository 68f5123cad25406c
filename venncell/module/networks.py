"""The decoders and encoders of one modality: MLPs for tabular data, convolutional networks for images. Both kinds
share one interface (decoders: ``(z, batch) -> raw`` with ``.likelihood``; encoders: ``x -> (shared, private)``)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from venncell.data.spec import ModalitySpec
from venncell.module.config import ModelConfig
from venncell.nn import MLP, ExtendedLinear, make_likelihood
from venncell.nn.cnn import ConvDecoderNet, ConvEncoderNet


class Decoder(nn.Module):
    """Latents (+ batch one-hot) -> the likelihood head's raw parameters of every feature."""

    def __init__(self, d_in: int, spec: ModalitySpec, n_batches: int, cfg: ModelConfig):
        super().__init__()
        self.n_batches = n_batches
        # batches with training cells measured in this modality: only their one-hot columns are trained
        self.register_buffer("batch_trained", torch.ones(n_batches, dtype=torch.bool))
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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # models and checkpoints saved before decoders knew their batches: every batch trained them
        state_dict.setdefault(prefix + "batch_trained", torch.ones_like(self.batch_trained))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_batch_coverage(self, trained: torch.Tensor) -> None:
        """``trained``: which batches had training cells with this modality (bool, one per batch)."""
        self.batch_trained.copy_(trained)

    def forward(self, z: torch.Tensor, batch: torch.Tensor | None) -> torch.Tensor:
        if self.n_batches:
            z = torch.cat([z, nn.functional.one_hot(batch, self.n_batches).to(z.dtype)], dim=1)
        out = self.net(z)
        return out if self.image_shape is None else out.reshape(len(out), -1)

    def with_new_batches(self, n_new: int) -> Decoder:
        """A copy that also reads ``n_new`` batches after its own (codes ``n_batches ...``): every trained weight is
        kept and frozen; each new batch's one-hot column starts at the mean of the trained batches' and is the
        copy's only trainable weight (``ExtendedLinear``)."""
        if not self.n_batches:
            raise ValueError("a decoder trained without batches cannot read new ones")
        new = copy.deepcopy(self)
        for p in new.parameters():
            p.requires_grad_(False)
        # the one-hot columns enter through the network's first linear layer, after the latents
        owner, name, first = next(
            (mod, n, child)
            for mod in new.net.modules()
            for n, child in mod.named_children()
            if isinstance(child, nn.Linear)
        )
        cols = first.weight[:, first.in_features - self.n_batches :][:, self.batch_trained]
        init = cols.mean(1, keepdim=True).expand(-1, n_new)
        setattr(owner, name, ExtendedLinear(first, init))
        new.n_batches = self.n_batches + n_new
        new.batch_trained = torch.cat(
            [
                self.batch_trained,
                torch.ones(n_new, dtype=torch.bool, device=self.batch_trained.device),
            ]
        )
        return new

    def expected(self, z: torch.Tensor, batch: torch.Tensor | None) -> torch.Tensor:
        """The likelihood's normalised mean. A cell of a batch no training cell measured this modality in (its
        one-hot column never trained), or of none the decoder knows (code -1: a batch the model never saw, or
        no batch given), gets the mean of its predictions as each trained batch: batch-neutral."""
        if batch is None:
            return self.likelihood.normalised_mean(self(z, batch))
        known = batch >= 0
        out = self.likelihood.normalised_mean(self(z, batch.clamp(min=0)))
        if self.batch_trained.all() and known.all():
            return out
        odd = ~self.batch_trained[batch.clamp(min=0)] | ~known
        if odd.any():
            trained = torch.nonzero(self.batch_trained).ravel()
            zo = z[odd]
            out[odd] = torch.stack(
                [
                    self.likelihood.normalised_mean(self(zo, torch.full((len(zo),), int(t))))
                    for t in trained
                ]
            ).mean(0)
        return out


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
