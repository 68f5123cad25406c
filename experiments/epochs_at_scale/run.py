"""Does VennCell need its 100 + 40 epochs on large data? The epochs of both stages against fewer, on synthetic data
with known shared and private factors.

Usage (from the repository root):
    python experiments/epochs_at_scale/run.py [--cells 100000] [--epochs 100:40,20:8,10:4] [--seed 0] [--jobs 2]

Each fit runs in its own process with one CPU thread, ``--jobs`` at a time; everything but the epochs of the two
stages (``stage1:stage2``) is the package defaults, the batch size included (resolved from the number of cells).
Per fit: kNN accuracy of the true cluster from shared ⊕ privates (k = 15, 5-fold) and the Venn recovery summary
(kNN-R² of the true blocks), both from the default embedding (training cells: the mean of the encoders' and the
stage-1 latents) and from the encoders alone, on the same 10,000 cells; and the wall time of each stage. Finished
fits are kept in ``results.json``, so a rerun only fits what is missing; ``RESULTS.md`` is rewritten from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [
    str(HERE.parents[1] / "benchmarks" / "integration"),
    str(HERE.parents[1] / "benchmarks"),
]
from child import emit, run_child  # noqa: E402

RESULTS = HERE / "results.json"
MODALITIES = {"rna": 1000, "protein": 100}
EVAL_CELLS = 10_000
SOURCES = {"default": None, "encoder": "encoder"}
COLS = ["knn_cluster", "shared_recovery", "min_private_recovery"]
COLS += ["leak_private_into_shared", "leak_shared_into_private"]


def fit(n_cells: int, epochs1: int, epochs2: int, seed: int) -> dict:
    import numpy as np
    import torch
    from metrics import venn_recovery
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    from venncell import VennCell, make_synthetic

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    mdata, _ = make_synthetic(n_cells=n_cells, modalities=MODALITIES, seed=seed)
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, seed=seed)
    history = model.train(stage1_epochs=epochs1, stage2_epochs=epochs2, progress_bar="none")
    wall = time.perf_counter() - t0
    rows = np.random.default_rng(seed).choice(n_cells, min(EVAL_CELLS, n_cells), replace=False)
    labels = mdata.obs["cluster"].astype(str).to_numpy()[rows]
    record = {
        "cells": n_cells,
        "epochs1": epochs1,
        "epochs2": epochs2,
        "seed": seed,
        "failed": history.get("failed") or "",
        "stage1_s": float(history["wall_time_s"]["stage1"]),
        "stage2_s": float(history["wall_time_s"]["stage2"]),
        "wall_s": wall,
    }
    for name, source in SOURCES.items():
        blocks = {
            b: model.get_latent_representation(block=b, source=source)[rows]
            for b in ["shared", *(f"private:{m}" for m in MODALITIES)]
        }
        knn = cross_val_score(
            KNeighborsClassifier(15), np.hstack(list(blocks.values())), labels, cv=5
        )
        summary = venn_recovery(blocks, mdata[rows])
        record[name] = {
            "knn_cluster": float(knn.mean()),
            **{k: float(summary[k]) for k in COLS[1:]},
        }
    return record


def write_page(results: dict) -> None:
    rows = sorted(results.values(), key=lambda r: (r["cells"], r["seed"], -r["epochs1"]))
    lines = []
    for name in SOURCES:
        what = "default embedding" if name == "default" else "encoders alone"
        lines += [
            f"## Synthetic, RNA 1,000 genes + protein 100: {what}",
            "",
            "| cells | seed | epochs (stage 1 + 2) | kNN accuracy (cluster) | shared recovery | min private recovery "
            "| leak private → shared | leak shared → private | stage 1 (s) | stage 2 (s) | whole fit (s) |",
            "|---" * 11 + "|",
        ]
        for r in rows:
            vals = " | ".join(f"{r[name][c]:.3f}" for c in COLS)
            times = f"{r['stage1_s']:.0f} | {r['stage2_s']:.0f} | {r['wall_s']:.0f}"
            epochs = f"{r['epochs1']} + {r['epochs2']}" + (" (failed)" if r["failed"] else "")
            lines.append(f"| {r['cells']:,} | {r['seed']} | {epochs} | {vals} | {times} |")
        lines.append("")
    text = (HERE / "RESULTS.md").read_text() if (HERE / "RESULTS.md").exists() else ""
    head = (
        text.split("<!-- tables -->")[0] if "<!-- tables -->" in text else "# Epochs at scale\n\n"
    )
    (HERE / "RESULTS.md").write_text(head + "<!-- tables -->\n" + "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument(
        "--epochs", default="100:40,20:8,10:4", help="stage1:stage2 pairs, comma-separated"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument(
        "--one", nargs=4, type=int, help=argparse.SUPPRESS
    )  # a child: cells epochs1 epochs2 seed
    args = p.parse_args()
    if args.one:
        emit(fit(*args.one))
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    pairs = [tuple(int(e) for e in pair.split(":")) for pair in args.epochs.split(",")]
    key = lambda e1, e2: f"{args.cells}_{e1}_{e2}_{args.seed}"  # noqa: E731
    todo = [(e1, e2) for e1, e2 in pairs if key(e1, e2) not in results]

    def child(pair: tuple[int, int]) -> None:
        e1, e2 = pair
        try:
            record = run_child(
                [__file__, "--one", str(args.cells), str(e1), str(e2), str(args.seed)]
            )
        except RuntimeError as err:
            print(f"{args.cells} cells, {e1} + {e2} epochs: {err}", flush=True)
            return
        # read again before writing: another run of this script (other cells) may have added its fits meanwhile
        results.update(json.loads(RESULTS.read_text()) if RESULTS.exists() else {})
        results[key(e1, e2)] = record
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{args.cells} cells, {e1} + {e2} epochs done", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(child, todo))
    write_page(results)


if __name__ == "__main__":
    main()
