"""The model's architecture and objective: ``ModelConfig``, the one place its defaults are written and checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from venncell.data.validate import VennCellInputError, check_range, config_from

LATENT_INITS = ("spectral", "random")
BATCH_ALIGNMENTS = ("mean", "covariance")
LATENT_POSTERIORS = ("point", "variational")
MODALITY_WEIGHTS = ("equal", "features")
VENN_REGIONS = ("shared", "pairs", "all")
# kl_weight when not given: 4 separates cell types better in the joint embedding (integration harness), but with
# region blocks it lets a region's factors into a member's private block (experiments/venn_regions), where 1 does not
KL_WEIGHT = 4.0
KL_WEIGHT_REGIONS = 1.0


# Fields added since 0.2.0, each with the value that does what a model without it did: a run checkpointed before
# the field existed resumes when the field holds that value (the region fields do nothing without regions).
ADDED_FIELDS = {
    "image_augment": False,
    "private_kl_scale": 1.0,
    "start_batch_alignment": "mean",
    "venn_regions": "shared",
    "region_dim": 2,
    "region_dims": None,
    "region_independence_weight": 1.0,
}


@dataclass
class ModelConfig:
    """Architecture and objective of a VennCell model (``VennCell(mdata, **fields)``, ``model.<field>=`` on the
    command line).

    Parameters
    ----------
    shared_dim
        Size of the shared latent block.
    private_dim
        Size of each modality's private block (a modality's registry entry may override it).
    hidden, n_layers
        Width and depth of the decoders' MLPs.
    encoder_hidden
        Width of the encoders' MLPs (the encoders read thousands of features).
    dropout
        Dropout in every MLP.
    encoder_dropout
        Extra dropout in the (non-image) encoders: stage 2 regresses each training cell's own latent, which a wide
        encoder can memorise instead of learning a map that generalises to new cells.
    joint_encoder
        Also train one encoder over all (tabular) modalities side by side, used for cells measured in every
        modality; cells with fewer, or a ``modalities`` subset, use the per-modality encoders. Not used when a
        modality is an image (each keeps its convolutional encoder). Off by default: its private blocks see every
        modality, so another modality's private signal leaks into them (experiments/joint_encoder).
    latent_noise, latent_l2
        Point latents: the fixed noise the decoders read them with, and the L2 pull towards 0.
    latent_init
        ``spectral`` (generalised-CCA start, ``venncell.module.init``) or ``random``.
    latent_init_std
        Scale of the starting latents.
    start_batch_alignment
        With batches, what the spectral start removes from each modality's PCA scores: ``mean`` (each batch's
        mean) or ``covariance`` (also each batch's covariance, matched to the pooled one). The latents keep what
        they start with, so batches with a strong effect can stay apart with ``mean``; ``covariance`` mixes
        them, but also evens out differences in cell-type proportions between batches, which can cost label
        accuracy: it suits batches of similar cells that stay apart with ``mean``
        (``experiments/start_batch_alignment``).
    latent_posterior
        ``point`` (one latent per cell) or ``variational`` (a mean and a log-variance per cell, sampled in
        training, with ``kl_weight`` x KL(q || N(0, I)) in place of the noise and the L2): each cell learns how far
        its latent may move without changing its reconstruction. Dimensions beyond what the data hold keep less
        information (a lower KL) but do not collapse to the prior (``experiments/latent_dims``, KL weight 1).
    kl_weight
        Weight of the KL term (variational latents), on the reconstruction terms' scale: 1 makes stage 1 the ELBO
        divided by the smallest modality's feature count (with ``equal`` weights, every modality counted as if it
        had that many features). None (the
        default): 4 (a beta-VAE's beta) when the model has no region blocks, which keeps the dimensions that carry no
        factor smaller and separates cell types better than 1 or 2 (the integration harness,
        ``benchmarks/integration/RESULTS.md``); 1 with region blocks, where 4 lets a region's factors into
        its members' private blocks (``experiments/venn_regions``).
    private_kl_scale
        The private blocks' KL weight as a multiple of ``kl_weight`` (variational latents); 1, the default, weighs
        every block alike. Above 1 lets more shared signal into the private blocks, and below 1 (a stronger pull
        on the shared block alone) gained nothing beyond the seeds' spread (``experiments/kl_weight``).
    latent_init_logvar
        Starting log-variance of every cell's latents (variational).
    modality_weights
        How each modality's reconstruction (a mean NLL per feature) is weighted: ``equal`` (each counts once) or
        ``features`` (by its number of features relative to the smallest modality, as a joint likelihood over all
        features would). A modality's ``weight`` in its registry entry overrides the rule.
    shared_only_weight
        Weight of the shared-only decoders, which predict each modality from the shared block alone. With
        ``shared_only_detach`` (the default) they train on an objective of their own, so only 0 (none) or not
        matters; otherwise it weighs them against stage 1's other terms.
    shared_only_detach
        True: the shared-only decoders read the shared latent without shaping it, so nothing in stage 1 depends on
        them and they are fitted in stage 2 to the final shared latents. False (APOLLO): their gradient also moves
        the latent, pulling every modality's private signal into it.
    consistency_weight
        Leakage control: each modality's encoder must predict the shared latent from that modality alone, so the
        shared block cannot hold what one modality cannot see.
    consistency_cells
        Cells per step whose consistency term is computed (0 = every cell): a random subset estimates the same
        unexplained fraction for less of the costliest network.
    leakage_every
        Leakage control on every k-th stage-1 batch only, weighted k times (the same objective in expectation);
        steps without it skip the encoders.
    independence_weight
        Leakage control: normalised kernel HSIC between the shared and each private block.
    stage2_recon_weight
        Stage 2: weight of the full decoders' NLL of the encoder latents, next to regressing the stage-1 latents.
    cnn_channels
        Image modalities: convolution widths, one stride-2 stage each.
    image_augment
        Image modalities: during training each crop is read turned and mirrored at random (quarter turns and mirror
        images), so the latents describe a cell's shape and stains rather than its orientation in the crop. Set
        False where orientation means something (e.g. images aligned to a tissue axis).
    venn_regions
        Which blocks shared by some modalities but not all are learned, next to the all-modality ``shared`` block
        and the private ones: ``shared`` (none), ``pairs`` (one per pair of modalities) or ``all`` (every subset
        of two or more, short of all). Only with three or more modalities; a region's block is read by the
        decoders of its modalities only, produced by their encoders, and kept out of the other blocks by the same
        leakage control (``venncell.module.regions``).
    region_dim
        Size of each region's block.
    region_dims
        Sizes of chosen regions, by name (modality names sorted, joined by ``+``: ``{"atac+rna": 4}``).
    region_independence_weight
        Leakage control between a region's block and the other blocks its modalities' decoders read (normalised
        HSIC): without it a region the data do not support fills with a copy of shared signal.
    """

    shared_dim: int = 8
    private_dim: int = 4
    hidden: int = 128
    n_layers: int = 2
    encoder_hidden: int = 256
    dropout: float = 0.0
    encoder_dropout: float = 0.5
    joint_encoder: bool = False
    latent_noise: float = 0.1
    latent_init_std: float = 1.0
    latent_init: str = "spectral"
    start_batch_alignment: str = "mean"
    latent_l2: float = 1e-3
    latent_posterior: str = "variational"
    kl_weight: Optional[float] = None  # None: kl_weight_for(the model's regions)
    private_kl_scale: float = 1.0
    latent_init_logvar: float = -2.0
    modality_weights: str = "features"
    shared_only_weight: float = 1.0
    shared_only_detach: bool = True
    consistency_weight: float = 0.03
    consistency_cells: int = 0
    leakage_every: int = 1
    independence_weight: float = 0.003
    stage2_recon_weight: float = 0.0
    cnn_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    image_augment: bool = True
    venn_regions: str = "shared"
    region_dim: int = 2
    # {region: size}; typed Any so that the command line may add regions by name
    region_dims: Any = None
    region_independence_weight: float = 1.0

    def __post_init__(self):
        self.cnn_channels = [
            int(c) if isinstance(c, float) and c == int(c) else c for c in self.cnn_channels
        ]
        # upper bounds: sizes beyond them cannot be meant, and would only fail later, deep in torch, out of memory
        for name, high in (
            ("shared_dim", 1024),
            ("private_dim", 1024),
            ("hidden", 16384),
            ("encoder_hidden", 16384),
        ):
            check_range(f"model.{name}", getattr(self, name), 1, high, integer=True)
        check_range("model.n_layers", self.n_layers, 0, 16, integer=True)
        check_range("model.dropout", self.dropout, 0.0, 0.99)
        check_range("model.encoder_dropout", self.encoder_dropout, 0.0, 0.99)
        for name, value, allowed in (
            ("latent_init", self.latent_init, LATENT_INITS),
            ("start_batch_alignment", self.start_batch_alignment, BATCH_ALIGNMENTS),
            ("latent_posterior", self.latent_posterior, LATENT_POSTERIORS),
            ("modality_weights", self.modality_weights, MODALITY_WEIGHTS),
            ("venn_regions", self.venn_regions, VENN_REGIONS),
        ):
            if value not in allowed:
                raise VennCellInputError(
                    f"Config value model.{name}={value!r} must be one of {list(allowed)}."
                )
        check_range("model.region_dim", self.region_dim, 1, 1024, integer=True)
        if self.region_dims is not None:
            self.region_dims = {str(k): v for k, v in dict(self.region_dims).items()}
        for name, dim in (self.region_dims or {}).items():
            check_range(f"model.region_dims[{name!r}]", dim, 1, 1024, integer=True)
        if self.joint_encoder and self.venn_regions != "shared":
            raise VennCellInputError(
                f"model.joint_encoder=true does not produce region blocks (venn_regions={self.venn_regions!r}); "
                "set joint_encoder=false or venn_regions='shared'."
            )
        check_range("model.latent_init_logvar", self.latent_init_logvar, -12.0, 4.0)
        check_range("model.latent_init_std", self.latent_init_std, 0.0)
        check_range("model.consistency_cells", self.consistency_cells, 0, integer=True)
        if 0 < self.consistency_cells < 8:
            raise VennCellInputError(
                f"Config value model.consistency_cells={self.consistency_cells} is too few cells to estimate the "
                "unexplained fraction; use 0 (every cell of the batch) or at least 8."
            )
        check_range("model.leakage_every", self.leakage_every, 1, integer=True)
        if self.kl_weight is not None:
            check_range("model.kl_weight", self.kl_weight, 0.0)
        for name in (
            "latent_noise",
            "latent_l2",
            "shared_only_weight",
            "consistency_weight",
            "independence_weight",
            "stage2_recon_weight",
            "region_independence_weight",
            "private_kl_scale",
        ):
            check_range(f"model.{name}", getattr(self, name), 0.0)
        for name in ("joint_encoder", "shared_only_detach"):
            if not isinstance(getattr(self, name), bool):
                raise VennCellInputError(
                    f"Config value model.{name}={getattr(self, name)!r} must be true or false."
                )
        if not self.cnn_channels or any(
            not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in self.cnn_channels
        ):
            raise VennCellInputError(
                f"Config value model.cnn_channels={self.cnn_channels!r} must be a non-empty list "
                "of positive integers (one convolution stage each)."
            )

    @classmethod
    def from_kwargs(cls, **kwargs) -> ModelConfig:
        """A config from keyword arguments, with a clear error for unknown ones."""
        return config_from(cls, kwargs, "model")

    def kl_weight_for(self, has_regions: bool) -> float:
        """The KL weight a model uses: ``kl_weight`` if given, else 4 (``KL_WEIGHT``) or, for a model with region
        blocks, 1 (``KL_WEIGHT_REGIONS``). With two modalities ``pairs`` learns no region, so it keeps 4."""
        if self.kl_weight is not None:
            return self.kl_weight
        return KL_WEIGHT_REGIONS if has_regions else KL_WEIGHT

    @property
    def variational(self) -> bool:
        return self.latent_posterior == "variational"


# Named variants of the defaults: ``model=<name>`` on the command line, ``model_preset(name)`` in Python.
PRESETS = {
    "venncell": {},
    # The plain APOLLO recipe: point latents from a random start, each modality's mean NLL counted once, shared-only
    # decoders that shape the shared latent, no leakage control, one encoder per modality.
    "apollo": {
        "latent_init": "random",
        "latent_init_std": 0.1,
        "shared_only_detach": False,
        "consistency_weight": 0.0,
        "independence_weight": 0.0,
        "latent_posterior": "point",
        "modality_weights": "equal",
        "encoder_dropout": 0.0,
    },
    # The defaults of VennCell 0.1 (point latents, equal modality weights, full-strength leakage control), kept to
    # compare with; train it with lr_latent=0.01 as 0.1 did.
    "v0.1": {
        "latent_posterior": "point",
        "modality_weights": "equal",
        "consistency_weight": 1.0,
        "independence_weight": 0.1,
        "encoder_dropout": 0.0,
    },
    # Cheaper stage-1 steps: leakage control on every third batch (weighted three times), the consistency term on
    # 32 cells of it.
    "fast": {"consistency_cells": 32, "leakage_every": 3},
}


def model_preset(name: str, **overrides) -> ModelConfig:
    """The defaults changed by preset ``name`` (see ``PRESETS``), then by ``overrides``."""
    if name not in PRESETS:
        raise VennCellInputError(
            f"Unknown model preset {name!r}; choose one of {sorted(PRESETS)}."
        )
    return ModelConfig.from_kwargs(**{**PRESETS[name], **overrides})
