"""What a loss computation returns: the objective and its named parts (scvi-tools' ``LossOutput``, in small)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

# Kinds of terms. Each is per modality unless noted; a term's name in logs is "<kind>/<modality>".
RECON = "recon"  # reconstruction NLL (per feature, mean over cells)
RECON_SHARED_ONLY = "recon_shared_only"  # the shared-only decoder's NLL
CONSISTENCY = "consistency"  # 1 - R^2 of the shared latent from this modality's encoder
INDEPENDENCE = "independence"  # normalised HSIC between the shared and this private block
LATENT_SHARED = "latent_shared"  # stage 2: 1 - R^2 of the stage-1 shared latent from this encoder
LATENT_PRIVATE = "latent_private"  # stage 2: the same for the modality's private latent
PRIOR = "prior"  # stage 1: the pull to the prior, KL(q || N(0, I)) or |z|^2, before its weight; per block
# ("shared", a modality's private block, a region's "shared:<a>+<b>")
JOINT = "joint"  # the joint encoder, in place of a modality name


class Term(NamedTuple):
    """One named part of a loss: its kind and, for per-modality terms, the modality."""

    kind: str
    modality: str | None = None

    @property
    def key(self) -> str:
        return self.kind if self.modality is None else f"{self.kind}/{self.modality}"


@dataclass
class LossOutput:
    """A stage's loss for one batch.

    Parameters
    ----------
    loss
        The objective its optimiser minimises.
    terms
        Its parts and monitors, by ``Term``.
    shared_only
        Stage 2 only: the shared-only decoders' objective, kept apart from ``loss`` (no shared parameters), so that
        ``loss`` means the same with or without them.
    recon
        Stage 2 monitor: the full decoders' NLL of the encoder latents, modalities weighted as in stage 1.
    """

    loss: torch.Tensor
    terms: dict[Term, torch.Tensor] = field(default_factory=dict)
    shared_only: torch.Tensor | None = None
    recon: torch.Tensor | None = None

    @property
    def objectives(self) -> list[torch.Tensor]:
        """Every optimised total (their non-finite check covers every optimised term)."""
        return [self.loss] + ([self.shared_only] if self.shared_only is not None else [])

    def logged(self) -> dict[str, torch.Tensor]:
        """Every value under its log name (``loss``, ``shared_only``, ``recon``, ``<kind>/<modality>``)."""
        out = {"loss": self.loss}
        if self.shared_only is not None:
            out["shared_only"] = self.shared_only
        if self.recon is not None:
            out["recon"] = self.recon
        out.update({t.key: v for t, v in self.terms.items()})
        return out
