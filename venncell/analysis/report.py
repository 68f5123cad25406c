"""The attribution report: one self-contained HTML file (figures embedded as base64 PNG, no external assets)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from venncell.analysis.attribution import AttributionResult
from venncell.analysis.enrichment_report import enrichment_section
from venncell.analysis.features import ev_in_blocks, venn_regions
from venncell.analysis.plan_report import plan_section
from venncell.analysis.venn_figure import venn_figure
from venncell.data.files import atomic_write_text, output_folder

COLORS = {"shared": "#3b75af", "private": "#ef8636", "unexplained": "#d0d0d0"}
MAX_UMAP_MARKERS = 8

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1150px;
     color:#222;line-height:1.45}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
img{max-width:100%;display:block;margin:10px 0} .note{color:#555;font-size:.9em}
.verdict-shared{color:#3b75af;font-weight:600} .verdict-specific{color:#c8570b;font-weight:600}
.verdict-partly{color:#7a4ea3;font-weight:600} .verdict-not{color:#888}
.warn{background:#fdecea;border-left:4px solid #c0392b;padding:6px 10px}
"""


def write_report(
    result: AttributionResult,
    path: str | Path,
    title: str = "VennCell attribution report",
    umap: bool = True,
    plan=None,
    enrichment=None,
) -> Path:
    """The HTML attribution report (what ``venncell-report`` writes), from Python.

    Parameters
    ----------
    result
        ``model.attribution(...)``.
    path
        The ``.html`` file to write (whole: a temporary file, then a rename).
    title
        The page's title.
    umap
        Draw the UMAPs of the latent blocks (scanpy; the slowest part on many cells).
    plan, enrichment
        ``model.plan_measurements(...)`` and ``model.enrich_regions(...)``, to add their sections.

    Returns
    -------
    The path written.
    """
    text = render_html(result, title=title, umap=umap, plan=plan, enrichment=enrichment)
    output_folder(Path(path).parent, "the report")
    return atomic_write_text(path, text)


def render_html(
    result: AttributionResult,
    title: str = "VennCell attribution report",
    umap: bool = True,
    plan=None,
    enrichment=None,
) -> str:
    cfg = result.config
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{CSS}</style>"
        f"</head><body><h1>{_e(title)}</h1>",
        _intro(result),
        *_training(result.training),
    ]
    parts += [
        "<h2>Venn summary per modality</h2>",
        _img(_fig_venn(result)),
        _modality_table(result.modalities),
    ]
    if len(result.regions):
        parts += [
            "<h2>Venn diagram of the learned blocks</h2>",
            _venn_note(result.modalities),
            _img(venn_figure(result.regions), alt="Venn diagram"),
            _region_table(result.regions),
        ]
    parts += [
        "<h2>Features: shared vs private explained variance</h2>",
        "<p class='note'>Each point is a feature: EV of the shared-only estimate (x) and what the private "
        "block adds on top (y). Labelled: the top features of each region.</p>",
        _img(_fig_features(result)),
        _top_table(result),
    ]
    if len(result.markers):
        parts += [
            "<h2>Markers</h2>",
            _verdict_rule(cfg),
            _marker_table(result.markers),
            _img(_fig_markers(result))
            if len(result.marker_scores)
            else "<p class='note'>No marker has held-out scores to draw: each one's note says why (a constant "
            "marker, say).</p>",
        ]
    if umap:
        parts += [
            "<h2>Latent blocks (UMAP)</h2>",
            "<p class='note'>Coloured by each marker and by each modality's per-cell weight in the shared "
            "latent (<i>weight: m</i>; how much better the cell's fitted latent explains m's data than the mean "
            "latent does, normalised over the modalities; <code>model.cell_modality_weights()</code>).</p>",
            _img(_fig_umaps(result)),
        ]
    parts += [
        "<h2>Latent dimensions</h2>",
        "<p class='note'>Principal components of each latent block (every attributed cell): the explained variance "
        "of each modality each one holds (<i>EV in m</i>: what m's decoder loses when the component alone is set "
        "to its mean; MOFA+'s variance explained per factor and view), and the features most correlated with it "
        "(Pearson r; counts on log1p-per-10k scale). Every feature's r: <code>mdata[m].varm['venn_loadings']</code>."
        "</p>",
        *(
            [_img(_fig_components(result), "EV per latent direction")]
            if len(result.components)
            else []
        ),
        _dimension_table(result),
        *_direction_marker_table(result),
    ]
    if enrichment is not None:
        parts.append(enrichment_section(enrichment))
    if plan is not None:
        parts.append(plan_section(plan, _img))
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- text
def _e(x) -> str:
    return html.escape(str(x))


def _intro(result: AttributionResult) -> str:
    cfg = result.config
    est = {
        "shared_decoder": "the shared-only decoder",
        "private_marginalised": "the full decoder with the private block marginalised",
    }
    used = {df.attrs.get("shared_estimate") for df in result.features.values()} - {None}
    return (
        f"<p>{len(result.obs_names)} cells analysed. Explained variance (EV) is an R&sup2; against the data on "
        "the decoders' normalised scale (proportions for counts, probabilities for binary features, values "
        f"for Gaussian ones). Shared-only EV comes from {', '.join(est[u] for u in sorted(used)) or 'n/a'}; "
        "the shared fraction of a feature is EV(shared-only) / EV(full decoder), the private fraction its "
        f"complement. Intervals: {100 * cfg.ci:.0f} % bootstrap over cells ({cfg.n_boot} draws).</p>"
    )


def _training(training: dict) -> list[str]:
    """How the model trained; a failed stage is said first, as every verdict below is read from the model."""
    if not training:
        return []
    out = ["<h2>Training</h2>"]
    failed = [(s, t["failed"]) for s, t in training.items() if t.get("failed")]
    for stage, why in failed:
        out.append(
            f"<p class='warn'><b>{_e(stage)} failed</b>: {_e(why)}. The tables below are read from this model; "
            "train it again (lower learning rates) before trusting them.</p>"
        )
    rows = "".join(
        f"<tr><td>{_e(s)}</td><td>{t['epochs']}</td><td>{_fmt(t['training_loss'], 4)}</td>"
        f"<td>{_fmt(t['held_out_loss'], 4)}</td><td>{_fmt(t['seconds'], 0)}</td></tr>"
        for s, t in training.items()
    )
    out.append(
        "<table><tr><th>stage</th><th>epochs</th><th>last training loss</th><th>held-out loss</th>"
        f"<th>seconds</th></tr>{rows}</table>"
    )
    return out


def _verdict_rule(cfg) -> str:
    return (
        f"<p class='note'>Scores: held-out R&sup2; (continuous) or Brier skill (categorical) over {cfg.n_folds} "
        f"folds, from ridge and kNN (k={cfg.knn_k}) probes; the verdict uses the {cfg.probe} probe per block. "
        "A marker that is a feature of modality m is probed from a shared latent embedded <i>without</i> m, "
        "and m's private block is encoded with the marker's own column replaced by its mean, so no block "
        f"reads the marker itself. <b>not captured</b>: best block scores &lt; {cfg.min_score} or its "
        f"permutation p &ge; {cfg.alpha} ({cfg.n_perm} permutations); for a feature, nothing else in the cell "
        "predicts it (its own decoder may still fit it: ev_full in the feature tables), so it must be measured. "
        "A private block <i>adds</i> when "
        f"shared&oplus;private beats shared in a paired bootstrap (p &lt; {cfg.alpha}) by at least "
        f"{100 * cfg.min_gain:.0f} % of the best score. <b>shared</b>: none adds (what the rest of the cell "
        "reveals is shared; the score says how much that is). <b>specific to m</b>: m adds "
        f"and shared explains &le; {100 * cfg.specific_max:.0f} % of the best score. With Venn regions, a "
        "region adds in the same way (shared&oplus;region vs shared); <b>shared by a+b</b>: only regions add and "
        f"shared explains &le; {100 * cfg.specific_max:.0f} %. Otherwise <b>partly shared</b>. What each verdict "
        "means: docs/interpretation.md.</p>"
    )


def _fmt(x, digits=2) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _ci(row, name) -> str:
    return f"{_fmt(row[name])} [{_fmt(row[name + '_lo'])}, {_fmt(row[name + '_hi'])}]"


def _verdict_class(v: str) -> str:
    return "verdict-" + v.split()[0]


def _marker_table(markers: pd.DataFrame) -> str:
    head = [
        "marker",
        "source",
        "kind",
        "cells",
        "verdict",
        "shared fraction [CI]",
        "shared score [CI]",
        "best block",
        "best score [CI]",
        "perm. p",
        "blocks that add",
    ]
    rows = []
    for _, r in markers.iterrows():
        if "best_score" not in r or pd.isna(r.get("best_score")):
            cells = [r["marker"], r["source"], r["kind"], r["n_cells"], r["verdict"]] + [""] * 6
        else:
            cells = [
                r["marker"],
                r["source"],
                r["kind"],
                r["n_cells"],
                r["verdict"],
                _ci(r, "shared_fraction"),
                _ci(r, "shared_score"),
                r["best_block"],
                _ci(r, "best_score"),
                _fmt(r["p_value"], 3),
                _adding(r),
            ]
        tds = "".join(
            f"<td class='{_verdict_class(c)}'>{_e(c)}</td>" if i == 4 else f"<td>{_e(c)}</td>"
            for i, c in enumerate(cells)
        )
        rows.append(f"<tr>{tds}</tr>")
    return f"<table><tr>{''.join(f'<th>{_e(h)}</th>' for h in head)}</tr>{''.join(rows)}</table>"


def _adding(r) -> str:
    """The private blocks and Venn regions whose gain over shared is significant and material."""
    names = [f"private:{m}" for m in str(r["private_modalities"] or "").split(", ") if m]
    regions = r.get("regions")
    names += (
        [f"region {x}" for x in str(regions).split(", ") if x] if isinstance(regions, str) else []
    )
    return ", ".join(names) or "none"


def _modality_table(summary: pd.DataFrame) -> str:
    cols = {
        "ev_shared": "shared EV",
        "ev_private": "private EV",
        "ev_explained": "explained",
        "shared_share": "shared share of explained",
    }
    df = pd.DataFrame(
        {label: [_ci(r, c) for _, r in summary.iterrows()] for c, label in cols.items()},
        index=pd.Index(summary["modality"], name="modality"),
    )
    df.insert(0, "features", summary["n_features"].to_numpy())
    return df.to_html(border=0)


def _region_table(regions: pd.DataFrame) -> str:
    # a block holds nothing of a modality outside it: a dash there, not "NaN"
    return regions.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0, na_rep="–")


def _venn_note(modalities: pd.DataFrame) -> str:
    """The caption of ``venn_figure``: circles for two or three modalities, an UpSet plot beyond."""
    where = (
        "the all-shared block in the middle, blocks shared by some modalities (Venn regions, "
        "<code>model.venn_regions</code>) where their circles overlap, private blocks outside"
        if len(modalities) <= 3
        else "one group of bars per block, its members marked by the dots below it (an UpSet plot: more than three "
        "modalities have no readable circles)"
    )
    return (
        f"<p class='note'>Each zone is a latent block: {where}. The numbers are the mean explained variance of each "
        "member's features that the block holds; <i>empty</i> when below 1 % for every member.</p>"
    )


def _top_table(result: AttributionResult) -> str:
    rows = {
        (m, region): ", ".join(feats)
        for m, top in result.top_features.items()
        for region, feats in top.items()
    }
    df = pd.Series(rows, name="top features").rename_axis(["modality", "region"]).to_frame()
    return df.to_html(border=0)


def _dimension_table(result: AttributionResult) -> str:
    d = result.dimensions
    if d.empty:
        return "<p>No latent dimensions to show.</p>"
    d = d.assign(
        item=d["modality"]
        + ":"
        + d["feature"]
        + " ("
        + d["correlation"].map("{:+.2f}".format)
        + ")"
    )
    g = d.groupby(["block", "component"], sort=False).agg(
        **{"share of the block's variance": ("explained_variance_ratio", "first")},
        features=("item", ", ".join),
    )
    c = result.components
    if len(c):
        ev = c.set_index(["block", "component"]).filter(like="ev_")
        ev.columns = [f"EV in {col[3:]}" for col in ev.columns]
        g = g.join(ev)[["share of the block's variance", *ev.columns, "features"]]
    return g.to_html(float_format=lambda v: f"{v:.3f}", na_rep="", border=0)


def _direction_marker_table(result: AttributionResult) -> list[str]:
    """Directions x markers: Pearson r (continuous markers) or eta² (categorical), MOFA+'s factor-covariate
    association."""
    a = result.direction_markers
    if a is None or not len(a):
        return []
    shown = a.assign(
        value=[
            "–" if not np.isfinite(v) else f"{v:+.2f}" if m == "pearson_r" else f"{v:.2f}"
            for v, m in zip(a["association"], a["measure"], strict=True)
        ]
    ).pivot_table(
        index=["block", "component"], columns="marker", values="value", aggfunc="first", sort=False
    )
    return [
        "<p class='note'>Markers along each principal component: Pearson r for a continuous marker, eta² (the "
        "share of the component's variance between its categories) for a categorical one.</p>",
        shown.to_html(border=0, na_rep=""),
    ]


# ---------------------------------------------------------------------------------------------- figures
def _img(fig, alt: str = "figure") -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return f"<img alt='{alt}' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode('ascii')}'>"


def _fig_venn(result: AttributionResult):
    s = result.modalities
    fig = Figure(figsize=(9, 0.7 + 0.6 * len(s)))
    ax = fig.subplots()
    y = np.arange(len(s))
    left = np.zeros(len(s))
    for col, color, label in _venn_segments(s):
        v = np.nan_to_num(s[col].to_numpy(dtype=float))
        err = (
            None
            if col == "ev_unexplained"
            else np.nan_to_num(np.abs(np.vstack([v - s[col + "_lo"], s[col + "_hi"] - v])))
        )
        ax.barh(y, v, left=left, color=color, label=label, xerr=err, ecolor="#333", capsize=2)
        left += v
    for i, share in enumerate(s["shared_share"]):
        text = (
            f"{100 * share:.0f} % of explained is shared"
            if np.isfinite(share)
            else "nothing explained"
        )
        ax.text(1.01, i, text, va="center", fontsize=9)
    ax.set_yticks(y, s["modality"])
    ax.set_xlim(0, 1)
    ax.set_xlabel("mean explained variance over features")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    return fig


def _venn_segments(s: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(column, colour, label) of the bars: shared, private, unexplained; with Venn regions the decomposition
    over the blocks (``ev_in_*``), each region in a colour of its own."""
    if "ev_in_shared" not in s:
        return [
            ("ev_shared", COLORS["shared"], "shared"),
            ("ev_private", COLORS["private"], "private (own modality)"),
            ("ev_unexplained", COLORS["unexplained"], "unexplained"),
        ]
    regions = [r for r in ev_in_blocks(s) if r not in ("shared", "private")]
    palette = ["#8fb7d9", "#9bd18b", "#c9a3d6", "#f2d16b", "#a6d8d4", "#e6a0a0"]
    return [
        ("ev_in_shared", COLORS["shared"], "shared"),
        *(
            (f"ev_in_{r}", palette[i % len(palette)], f"shared by {r}")
            for i, r in enumerate(regions)
        ),
        ("ev_in_private", COLORS["private"], "private (own modality)"),
        ("ev_unexplained", COLORS["unexplained"], "unexplained"),
    ]


def _fig_components(result: AttributionResult):
    """MOFA+'s variance-explained heatmap: latent directions x modalities, blank where the decoder does not read
    the direction's block."""
    c = result.components
    ev = c.filter(like="ev_").to_numpy(dtype=float)
    mods = [col[3:] for col in c.filter(like="ev_").columns]
    fig = Figure(figsize=(1.6 + 1.1 * len(mods), 0.9 + 0.24 * len(c)))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(ev), cmap="Blues", aspect="auto", vmin=0)
    ax.set_xticks(range(len(mods)), mods)
    ax.set_yticks(range(len(c)), c["block"] + " " + c["component"], fontsize=8)
    for (i, j), v in np.ndenumerate(ev):
        if np.isfinite(v):
            ax.text(
                j,
                i,
                f"{v:.3f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v > 0.6 * np.nanmax(ev) else "#222",
            )
    fig.colorbar(im, ax=ax, label="explained variance")
    ax.set_title("EV each latent direction holds, per modality", fontsize=10)
    return fig


def _fig_features(result: AttributionResult):
    mods = list(result.features)
    fig = Figure(figsize=(4.2 * len(mods), 4))
    axes = fig.subplots(1, len(mods), squeeze=False)
    for ax, m in zip(axes[0], mods):
        df = result.features[m]
        shared, private = venn_regions(
            {"full": df["ev_full"].to_numpy(), "shared": df["ev_shared"].to_numpy()}
        )
        sc = ax.scatter(
            shared, private, c=df["shared_fraction"], cmap="coolwarm_r", vmin=0, vmax=1, s=8
        )
        pos = {f: i for i, f in enumerate(df.index)}
        for region in ("shared", "private"):
            for f in result.top_features[m][region][:3]:
                ax.annotate(
                    f,
                    (shared[pos[f]], private[pos[f]]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.set(title=m, xlabel="EV shared-only", ylabel="EV added by private")
        ax.xaxis.set_major_locator(MaxNLocator(4))
    fig.colorbar(sc, ax=axes[0].tolist(), label="shared fraction", shrink=0.8)
    return fig


def _fig_markers(result: AttributionResult):
    """Markers x blocks heatmap of held-out scores (the better probe per block)."""
    best = (
        result.marker_scores.groupby(["marker", "block"], sort=False)["score"]
        .max()
        .unstack("block")
    )
    best = best.reindex(index=[m for m in result.markers["marker"] if m in best.index])
    fig = Figure(figsize=(1.2 + 0.75 * best.shape[1], 1.0 + 0.32 * best.shape[0]))
    ax = fig.subplots()
    im = ax.imshow(best.to_numpy(dtype=float), cmap="magma_r", vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(best.to_numpy(dtype=float)):
        ax.text(
            j,
            i,
            _fmt(v),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if v > 0.55 else "black",
        )
    ax.set_xticks(range(best.shape[1]), best.columns, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(best.shape[0]), best.index, fontsize=8)
    fig.colorbar(im, ax=ax, label="held-out score", shrink=0.8)
    return fig


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(X=x.astype(np.float32))
    sc.pp.neighbors(a, n_neighbors=min(15, len(x) - 1), use_rep="X", random_state=seed)
    sc.tl.umap(
        a, random_state=seed, maxiter=200
    )  # a report view: fewer epochs than the default 500
    return a.obsm["X_umap"]


def _fig_umaps(result: AttributionResult):
    blocks = list(result.latents)
    values = {k: result.marker_values[k] for k in list(result.marker_values)[:MAX_UMAP_MARKERS]}
    if result.cell_weights is not None:  # each modality's per-cell weight in the shared latent
        values.update({f"weight: {m}": w.to_numpy() for m, w in result.cell_weights.items()})
    markers = list(values) or [None]
    fig = Figure(figsize=(3.2 * len(markers), 3.0 * len(blocks)))
    axes = fig.subplots(len(blocks), len(markers), squeeze=False)
    for i, block in enumerate(blocks):
        x = result.latents[block]
        ok = np.isfinite(x).all(1)
        coords = _umap(x[ok], result.config.seed) if ok.sum() > 3 else np.zeros((ok.sum(), 2))
        for j, name in enumerate(markers):
            ax = axes[i][j]
            shown = _scatter(
                ax, coords, None if name is None else values[name][ok], _range(values, name)
            )
            if shown is not None and i == len(blocks) - 1:  # one colour bar per numeric column
                fig.colorbar(shown, ax=axes[:, j].tolist(), shrink=0.6, pad=0.02)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(name or "", fontsize=9)
            if j == 0:
                ax.set_ylabel(block, fontsize=9)
    return fig


def _range(values: dict, name) -> tuple[float, float] | None:
    """One colour scale for a numeric marker over every block row (each row has its own cells), so the column's
    colour bar reads every panel."""
    v = None if name is None else pd.Series(values[name])
    if v is None or not pd.api.types.is_numeric_dtype(v) or not v.notna().any():
        return None
    return float(v.min()), float(v.max())


def _scatter(ax, coords: np.ndarray, values, limits=None):
    """Colour by a marker: viridis for numbers (returned, for a colour bar), tab20 for categories, with a legend
    when few and each category's name at its cells' median when more (tab20's colours repeat)."""
    if values is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=3, color="#777")
        return None
    v = pd.Series(values)
    if pd.api.types.is_numeric_dtype(v):
        lo, hi = limits if limits is not None else (None, None)
        return ax.scatter(
            coords[:, 0],
            coords[:, 1],
            s=3,
            c=v.to_numpy(dtype=float),
            cmap="viridis",
            vmin=lo,
            vmax=hi,
        )
    cats = pd.Categorical(v.astype(str))
    cmap = colormaps["tab20"]
    ax.scatter(coords[:, 0], coords[:, 1], s=3, c=[cmap(c % 20) for c in cats.codes])
    if len(cats.categories) <= 10:
        handles = [
            Line2D([], [], marker="o", ls="", color=cmap(k % 20), label=c)
            for k, c in enumerate(cats.categories)
        ]
        ax.legend(handles=handles, fontsize=6, loc="best", frameon=False, markerscale=0.8)
        return None
    for k, c in enumerate(cats.categories):
        inside = cats.codes == k
        if inside.any():
            x, y = np.median(coords[inside], axis=0)
            ax.text(x, y, c, fontsize=4.5, ha="center", va="center", color="#222")
    return None


__all__ = ["render_html", "write_report"]
