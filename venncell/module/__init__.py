"""The model as a pure ``torch.nn.Module`` (latent tables, decoders, encoders, losses), its config and start."""

from venncell.module.config import PRESETS, ModelConfig, model_preset
from venncell.module.embed import embed_cells, pick_block, stage1_latents
from venncell.module.losses import LossOutput, Term
from venncell.module.venn import VennModule, modality_weights

__all__ = [
    "PRESETS",
    "LossOutput",
    "ModelConfig",
    "Term",
    "VennModule",
    "embed_cells",
    "model_preset",
    "modality_weights",
    "pick_block",
    "stage1_latents",
]
