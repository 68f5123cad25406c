"""What an attribution run returns (``AttributionResult``) and how it is written: JSON and CSV tables, each file
written whole (temporary file, then rename)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from venncell.data.files import atomic_write_text, file_part, output_folder


@dataclass
class AttributionResult:
    """Tables of one attribution run; ``write`` saves them, ``venncell.analysis.report`` renders them."""

    config: object
    features: dict[str, pd.DataFrame]
    modalities: pd.DataFrame
    top_features: dict[str, dict[str, list[str]]]
    markers: pd.DataFrame
    marker_scores: pd.DataFrame
    dimensions: pd.DataFrame
    # One row per latent block: its members, width, and the EV it holds (venncell.analysis.features.region_table).
    regions: pd.DataFrame = field(default_factory=pd.DataFrame)
    # One row per latent direction with the EV of each modality it holds (MOFA+'s variance explained per factor
    # and view; venncell.analysis.direction_variance).
    components: pd.DataFrame = field(default_factory=pd.DataFrame)
    # One row per latent direction and marker: Pearson r or eta² (MOFA+'s factor-covariate association;
    # venncell.analysis.directions.direction_markers).
    direction_markers: pd.DataFrame = field(default_factory=pd.DataFrame)
    # For plots: latent blocks and marker values of the cells used (rows = obs_names).
    obs_names: np.ndarray = field(repr=False, default=None)
    latents: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    marker_values: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    # Per analysed cell, each modality's weight in its shared latent (venncell.analysis.cell_weights).
    cell_weights: pd.DataFrame | None = field(repr=False, default=None)
    # How the model trained (training_summary): per stage its epochs, last losses, wall time, and why it failed.
    training: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary (per-feature tables are in the CSVs only: they can be large)."""
        return {
            "config": asdict(self.config),
            "scale": "normalised (proportions for counts, probabilities for binary, values for Gaussian)",
            "modalities": _records(self.modalities),
            "top_features": self.top_features,
            "markers": _records(self.markers),
            "marker_scores": _records(self.marker_scores),
            "dimensions": _records(self.dimensions),
            "regions": _records(self.regions),
            "components": _records(self.components),
            "direction_markers": _records(self.direction_markers),
            "training": self.training,
        }

    def write(self, out_dir: str | Path) -> list[Path]:
        """``attribution.json`` plus CSV tables; each written whole (temporary file, then rename)."""
        out = output_folder(out_dir, "the attribution tables")
        tables = {
            f"attribution_features_{file_part(m)}.csv": df for m, df in self.features.items()
        }
        tables.update(
            {
                "attribution_modalities.csv": self.modalities,
                "attribution_markers.csv": self.markers,
                "attribution_marker_scores.csv": self.marker_scores,
                "attribution_dimensions.csv": self.dimensions,
                "attribution_regions.csv": self.regions,
                "attribution_components.csv": self.components,
                "attribution_direction_markers.csv": self.direction_markers,
            }
        )
        if self.cell_weights is not None:
            tables["attribution_cell_weights.csv"] = self.cell_weights.rename_axis(
                "cell"
            ).reset_index()
        # every text first: a value JSON cannot hold fails before any file is written
        text = json.dumps(
            self.to_dict(), indent=1, allow_nan=False
        )  # strict JSON: NaN went to null in _records
        written = []
        for name, df in tables.items():
            written.append(
                atomic_write_text(
                    out / name, df.to_csv(index=name.startswith("attribution_features_"))
                )
            )
        written.append(atomic_write_text(out / "attribution.json", text))
        return written


def concat_frames(frames: list[pd.DataFrame], first: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=first)
    df = pd.concat(frames, ignore_index=True)
    return df[first + [c for c in df.columns if c not in first]]


def training_summary(history: dict) -> dict:
    """Per stage of ``VennCell.train``'s history: its epochs, last training and held-out loss, wall time and, where
    it failed (``venncell.train.schedule.warn_if_diverged``), why."""
    out = {}
    for stage in ("stage1", "stage2"):
        last = history.get(stage) or {}
        if not last:
            continue
        out[stage] = {
            "epochs": len((history.get("epochs") or {}).get(stage) or []),
            "training_loss": last.get(f"{stage}/train/loss_epoch"),
            "held_out_loss": last.get(f"{stage}/val/loss"),
            "seconds": (history.get("wall_time_s") or {}).get(stage),
            "failed": (history.get("failed") or {}).get(stage, ""),
        }
    return out


def _records(df: pd.DataFrame) -> list[dict]:
    return json.loads(df.to_json(orient="records")) if len(df) else []
