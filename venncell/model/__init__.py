"""The Venn model: latent tables, decoders (shared+private and shared-only), encoders."""

from venncell.model.venn import VennConfig, VennModule

__all__ = ["VennConfig", "VennModule"]
