"""The report's Venn diagram of the learned blocks: for two or three modalities, circles whose zones show how much
of each member's feature variance the block of that zone holds (``AttributionResult.regions``); beyond three, an
UpSet plot (one bar group per block, a dot matrix naming its members)."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from venncell.module.regions import region_name

ZONE_COLORS = {1: "#ef8636", 2: "#8fb7d9", 3: "#3b75af"}  # private, a region, the all-shared block


def venn_figure(regions: pd.DataFrame) -> Figure:
    """Circles for two or three modalities, an UpSet plot for more (module docstring)."""
    mods = _modalities(regions)
    return _circles(regions, mods) if len(mods) <= 3 else _upset(regions, mods)


def _modalities(regions: pd.DataFrame) -> list[str]:
    return [b.split(":", 1)[1] for b in regions["block"] if b.startswith("private:")]


def _members(block: str, mods: list[str]) -> tuple[str, ...]:
    return tuple(sorted(mods)) if block == "shared" else tuple(block.split(":", 1)[1].split("+"))


def _zone_text(row, members) -> str:
    lines = [f"{m} {row[f'ev_{m}']:.2f}" for m in members]
    return "\n".join(lines + (["(empty)"] if row["empty"] else []))


def _circles(regions: pd.DataFrame, mods: list[str]) -> Figure:
    n = len(mods)
    angles = np.pi / 2 + 2 * np.pi * np.arange(n) / n if n == 3 else np.array([np.pi, 0.0])
    centres = 0.55 * np.c_[np.cos(angles), np.sin(angles)]
    fig = Figure(figsize=(6.5, 5.7))
    ax = fig.subplots()
    for m, c in zip(mods, centres):
        ax.add_patch(Circle(c, 1.0, fc="#3b75af", ec="#1d3d5c", alpha=0.12, lw=1.5))
        ax.text(
            *(1.8 * c / np.linalg.norm(c)),
            m,
            ha="center",
            va="center",
            fontsize=12,
            fontweight="bold",
        )
    by_members = {
        frozenset(_members(b, mods)): r for b, r in regions.set_index("block").iterrows()
    }
    for k in range(1, n + 1):
        for idx in combinations(range(n), k):
            members = tuple(mods[i] for i in idx)
            where = _zone_position(centres, idx)
            row = by_members.get(frozenset(members))
            if row is None:  # a region the model does not have (venn_regions="shared")
                ax.text(
                    *where, "not\nmodelled", ha="center", va="center", fontsize=8, color="#888"
                )
                continue
            title = "shared" if k == n else ("private" if k == 1 else region_name(members))
            ax.text(
                *where,
                f"{title}\n{_zone_text(row, sorted(members))}",
                ha="center",
                va="center",
                fontsize=8,
                color="#222" if not row["empty"] else "#999",
                bbox={
                    "boxstyle": "round",
                    "fc": ZONE_COLORS[3 if k == n else k],
                    "alpha": 0.35,
                },
            )
    ax.set(xlim=(-2.0, 2.0), ylim=(-1.5, 2.0), aspect="equal")
    ax.axis("off")
    ax.set_title(
        "Mean explained variance of each modality's features held by each block", fontsize=10
    )
    return fig


def _zone_position(centres: np.ndarray, idx: tuple[int, ...]) -> np.ndarray:
    """A point inside exactly the circles of ``idx``: their centre of mass pushed away from the others."""
    inside = centres[list(idx)].mean(0)
    if len(idx) == len(centres):
        return inside
    outside = np.delete(centres, list(idx), axis=0).mean(0)
    away = inside - outside
    push = {1: 0.7, 2: 0.55}.get(len(idx), 0.3) if len(centres) == 3 else 0.6
    return inside + push * away / (np.linalg.norm(away) + 1e-9)


def _upset(regions: pd.DataFrame, mods: list[str]) -> Figure:
    blocks = list(regions["block"])
    fig = Figure(figsize=(max(6.0, 0.9 * len(blocks)), 5.0))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    x = np.arange(len(blocks))
    width = 0.8 / len(mods)
    for i, m in enumerate(mods):
        top.bar(x - 0.4 + (i + 0.5) * width, regions[f"ev_{m}"].fillna(0.0), width, label=m)
    top.set_ylabel("mean EV of the member's features")
    top.legend(frameon=False, ncol=len(mods), loc="upper right")
    for j, b in enumerate(blocks):
        members = set(_members(b, mods))
        on = [i for i, m in enumerate(mods) if m in members]
        bottom.scatter(
            [j] * len(mods),
            range(len(mods)),
            c=["#222" if i in on else "#ddd" for i in range(len(mods))],
        )
        if len(on) > 1:
            bottom.plot([j, j], [min(on), max(on)], c="#222")
    bottom.set_yticks(range(len(mods)), mods)
    bottom.set_xticks(x, [b.replace("shared:", "") for b in blocks], rotation=45, ha="right")
    return fig
