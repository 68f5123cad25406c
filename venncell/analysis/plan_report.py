"""The measure-or-predict section of the HTML report (``venncell.analysis.planner`` computes it)."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from venncell.analysis.planner import PlanResult

PANEL_MAX = 40  # targets with at most this many features (a protein panel) are listed whole
TOP_N = 10


def plan_section(plan: PlanResult, img) -> str:
    """HTML: the rule, a figure and table of recoverable fractions, and per target its ranked features.
    ``img`` turns a matplotlib figure into an ``<img>`` tag (the report's own)."""
    cfg = plan.config
    parts = [
        "<h2>Measure or predict</h2>",
        f"<p class='note'>Scored on {plan.n_cells} {html.escape(plan.cells)} cells that have every modality. "
        "For each target modality and each subset of the others, the target is predicted from the shared "
        "latent of the subset's encoders (its shared-only decoder), on the decoders' normalised scale. "
        "<i>recoverable</i> = R&sup2; predicted / the larger of R&sup2; predicted and R&sup2; when the target is "
        "measured (the full decoder at the cell's own latents): the part of its explainable signal kept without "
        f"measuring it. A feature is <b>predict</b> when recoverable &ge; {cfg.predict_min}, <b>measure</b> "
        f"otherwise, <b>unexplained</b> when both R&sup2; are below {cfg.min_r2}. Intervals: {100 * cfg.ci:.0f} % "
        f"bootstrap over cells ({cfg.n_boot} draws).</p>",
        img(_fig_recoverable(plan.summary)),
        _summary_table(plan.summary),
    ]
    for t, df in plan.features.items():
        parts.append(f"<h3>{html.escape(t)}</h3>")
        parts.append(_feature_table(df))
    return "\n".join(parts)


def ci_text(df: pd.DataFrame, col: str, digits: int = 2) -> list[str]:
    """``col`` of each row with its ``_lo`` / ``_hi`` interval, as text."""
    return [
        f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
        for v, lo, hi in zip(df[col], df[f"{col}_lo"], df[f"{col}_hi"])
    ]


def summary_frame(s: pd.DataFrame) -> pd.DataFrame:
    """The plan's summary as a table to read (text cells): one row per target and source subset."""
    return pd.DataFrame(
        {
            "target": s["target"],
            "from": s["sources"],
            "recoverable [CI]": ci_text(s, "recoverable"),
            "lost": s["lost"].map("{:.2f}".format),
            "mean R² measured": s["mean_r2_measured"].map("{:.3f}".format),
            "mean R² predicted": s["mean_r2_predicted"].map("{:.3f}".format),
            "predict / measure": [f"{p} / {m}" for p, m in zip(s["n_predict"], s["n_measure"])],
        }
    )


def _summary_table(s: pd.DataFrame) -> str:
    return summary_frame(s).to_html(index=False, border=0)


def _feature_table(df: pd.DataFrame) -> str:
    cols = ["rank", "verdict", "best_source", "r2_predicted", "r2_measured", "recoverable"]
    if len(df) > PANEL_MAX:  # a large modality: its most and least predictable features
        shown = pd.concat([df.head(TOP_N), df[df["verdict"] == "measure"].tail(TOP_N)])
        note = (
            f"<p class='note'>{len(df)} features: the {TOP_N} best predicted and the {TOP_N} least "
            "predictable of those to measure (all in plan_features_*.csv).</p>"
        )
    else:
        shown, note = df, ""
    out = shown[cols].copy()
    for c in ("r2_predicted", "r2_measured", "recoverable"):
        out[c] = out[c].map(lambda v: "–" if not np.isfinite(v) else f"{v:.2f}")
    return note + out.to_html(border=0)


def _fig_recoverable(s: pd.DataFrame):
    fig = Figure(figsize=(8, 0.6 + 0.32 * len(s)))
    ax = fig.subplots()
    y = np.arange(len(s))[::-1]
    err = np.vstack(
        [s["recoverable"] - s["recoverable_lo"], s["recoverable_hi"] - s["recoverable"]]
    )
    ax.barh(y, s["recoverable"], xerr=np.clip(err, 0, None), color="#3b75af", capsize=2)
    ax.set_yticks(y, [f"{t} from {src}" for t, src in zip(s["target"], s["sources"])])
    ax.set_xlim(0, 1)
    ax.set_xlabel("recoverable fraction of the explainable signal")
    return fig
