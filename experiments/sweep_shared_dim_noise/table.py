"""The RESULTS.md table of the sweep, from sweep_summary.csv (best recovery and held-out loss in bold; leakage is not
ranked: any value <= 0 means none).

Usage: python experiments/sweep_shared_dim_noise/table.py [sweep_summary.csv]   (run.sh calls it)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
DEFAULTS = {"model.shared_dim": 8, "model.latent_noise": 0.1}
COLUMNS = [
    ("shared_recovery", "shared recovery ↑", max),
    ("min_private_recovery", "min private recovery ↑", max),
    ("leak_private_into_shared", "leak private → shared ↓", None),
    ("leak_shared_into_private", "leak shared → private ↓", None),
    ("stage2/val/loss", "stage-2 val loss ↓", min),
]


def table(csv: Path) -> str:
    d = pd.read_csv(csv).sort_values(["model.shared_dim", "model.latent_noise"])
    best = {c: pick(d[c]) if pick else None for c, _, pick in COLUMNS}
    lines = [
        "| shared_dim | latent_noise | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for _, r in d.iterrows():
        default = all(r[k] == v for k, v in DEFAULTS.items())
        cells = [
            f"**{r['model.shared_dim']} (default)**" if default else f"{r['model.shared_dim']}",
            f"**{r['model.latent_noise']} (default)**"
            if default
            else f"{r['model.latent_noise']}",
        ]
        for c, _, _ in COLUMNS:
            v = f"{r[c]:.3f}".replace("-", "−")
            cells.append(f"**{v}**" if best[c] is not None and r[c] == best[c] else v)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "sweep_summary.csv"))
