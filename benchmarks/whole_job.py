"""Whole-job time to a trained model: VennCell and totalVI, each with its own defaults, on the same CITE-seq cells,
back to back in one run, one CPU thread each.

Usage (from the repository root; totalVI needs ``pip install -e ".[bench]"``):
    python benchmarks/whole_job.py [--datasets bmmc_cite,pbmc10k_cite] [--rounds 1]

A job is what a user runs: read the .h5mu, set up, train with the defaults (VennCell: spectral start, stage 1,
stage 2; totalVI: its default epochs and early stopping), take the latent, write the annotated data and save the
model. Each job runs in its own process with ``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)``; its time runs
from reading the data to the saved model (the packages' import time is reported apart). Latent quality: kNN
accuracy (k = 15, 5-fold) of the dataset's headline label, from VennCell's joint embedding (shared ⊕ privates)
and from totalVI's latent. Data: the integration harness's CITE-seq sets (``benchmarks/integration/datasets.py``,
built from ../shared/datasets, skipped where absent). Writes ``whole_job.json`` and ``WHOLE_JOB.md`` beside this
script; a finished (dataset, tool, round) is kept, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "whole_job.json"
PAGE = HERE / "WHOLE_JOB.md"
COMMAND = "python benchmarks/whole_job.py"
TOOLS = ("venncell", "totalvi")
sys.path.insert(0, str(HERE / "integration"))
sys.path.insert(0, str(HERE))
from child import emit, run_child  # noqa: E402


def venncell_job(mdata, ds, out: Path) -> tuple:
    from venncell import VennCell

    VennCell.setup_mudata(mdata, batch_key=ds.batch_key)
    model = VennCell(mdata, seed=0)
    model.train(run_dir=out / "run", progress_bar="none")
    model.write_latents()
    mdata.write(out / "venn.h5mu")
    model.save(out / "model")
    epochs = sum(len(model.history["epochs"][stage]) for stage in ("stage1", "stage2"))
    return model.get_latent_representation(block="all"), epochs


def totalvi_job(mdata, ds, out: Path) -> tuple:
    import numpy as np
    import scvi
    from methods import _totalvi_adata

    scvi.settings.seed = 0  # the harness's AnnData for totalVI below: RNA counts, proteins in obsm
    adt = mdata["protein"].X
    batch = (
        mdata.obs[ds.batch_key].astype(str).to_numpy()
        if ds.batch_key
        else np.full(mdata.n_obs, "b")
    )
    adata = _totalvi_adata(mdata, adt.toarray() if hasattr(adt, "toarray") else adt, batch)
    scvi.model.TOTALVI.setup_anndata(
        adata,
        protein_expression_obsm_key="protein_expression",
        batch_key="batch" if ds.batch_key else None,
    )
    model = scvi.model.TOTALVI(adata)
    model.train(accelerator="cpu", devices=1, enable_progress_bar=False)
    adata.obsm["X_totalVI"] = model.get_latent_representation()
    adata.write(out / "totalvi.h5ad")
    model.save(str(out / "model"))
    return adata.obsm["X_totalVI"], len(model.history["elbo_train"])


def job(dataset: str, tool: str) -> dict:
    """One whole job in this process; prints its record as JSON."""
    t_import = time.perf_counter()
    import mudata as md
    import torch

    torch.set_num_threads(1)
    if tool == "totalvi":
        import methods  # noqa: F401  (scvi and the harness's helpers)
        import scvi  # noqa: F401
    else:
        import venncell  # noqa: F401
    from datasets import DATASETS
    from metrics import knn_accuracy

    ds = DATASETS[dataset]
    path = ds.path
    import_s = time.perf_counter() - t_import
    with tempfile.TemporaryDirectory(prefix=f"{tool}_") as d:
        t0 = time.perf_counter()
        mdata = md.read_h5mu(path)
        z, epochs = {"venncell": venncell_job, "totalvi": totalvi_job}[tool](mdata, ds, Path(d))
        seconds = time.perf_counter() - t0
    y = mdata.obs[ds.labels[0]]
    ok = y.notna().to_numpy()
    return {
        "seconds": seconds,
        "import_s": import_s,
        "epochs": epochs,
        "threads": torch.get_num_threads(),
        "knn": knn_accuracy(z[ok], y[ok].astype(str).to_numpy()),
        "cells": int(mdata.n_obs),
        "commit": _commit(),
    }


def _commit() -> str:
    """The checked-out commit, marked when the code that ran (the package, the benchmark scripts) differs from it."""
    git = ["git", "-C", str(HERE.parent)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    code = ["venncell", "benchmarks/*.py", "benchmarks/integration/*.py", "pyproject.toml"]
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no", "--", *code],
        capture_output=True,
        text=True,
    )
    return (
        head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
        if head.returncode == 0
        else "?"
    )


def write_page(results: dict) -> None:
    import numpy as np

    lines = [
        "# Whole job: VennCell and totalVI with their defaults, one CPU thread each",
        "",
        "Commands (from the repository root), in the order they ran: "
        + ", then ".join(f"`{c}`" for c in results.get("commands", [COMMAND]))
        + ". Each job reads the .h5mu, sets up, trains with the "
        "tool's defaults, takes the latent, writes the annotated data and saves the model, in its own process "
        "with one thread; the jobs of one dataset run back to back. Time: from reading the data to the saved "
        "model (imports apart). Quality: kNN accuracy (k = 15, 5-fold) of the headline label, VennCell's "
        "joint embedding vs totalVI's latent.",
        "",
        "| data | cells | tool | epochs | whole job (s) | imports (s) | kNN accuracy | totalVI time / VennCell time "
        "| commit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, by_tool in results.items():
        if dataset == "commands":
            continue
        ratio = [
            t["seconds"] / v["seconds"]
            for v, t in zip(by_tool.get("venncell", []), by_tool.get("totalvi", []))
        ]
        for tool in TOOLS:
            runs = by_tool.get(tool, [])
            if not runs:
                continue

            def col(key, digits, runs=runs):
                v = np.array([r[key] for r in runs], dtype=float)
                return f"{v.mean():.{digits}f}" + (
                    f" ± {v.std():.{digits}f}" if len(v) > 1 else ""
                )

            lines.append(
                f"| {dataset} | {runs[0]['cells']:,} | {'VennCell' if tool == 'venncell' else 'totalVI'} | "
                f"{col('epochs', 0)} | {col('seconds', 0)} | {col('import_s', 1)} | {col('knn', 3)} | "
                + (", ".join(f"{r:.2f}" for r in ratio) if tool == "venncell" and ratio else "")
                + f" | {', '.join(sorted({r.get('commit', 'not recorded') for r in runs}))} |"
            )
    PAGE.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", default="bmmc_cite,pbmc10k_cite")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--job", nargs=2, help=argparse.SUPPRESS)  # a child: DATASET TOOL
    args = p.parse_args()
    if args.job:
        emit(job(*args.job))
        return
    from datasets import DATASETS

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("commands", []).append(" ".join([COMMAND, *sys.argv[1:]]))
    for dataset in args.datasets.split(","):
        ds = DATASETS[dataset]
        if not ds.available():
            print(f"skip {dataset}: ../shared/datasets/{ds.source} is absent")
            continue
        ds.load()  # build the .h5mu once, outside the timed jobs
        for r in range(args.rounds):
            for tool in TOOLS:  # back to back
                runs = results.setdefault(dataset, {}).setdefault(tool, [])
                if len(runs) > r:
                    continue
                try:
                    record = run_child(
                        [__file__, "--job", dataset, tool], env={"JAX_PLATFORMS": "cpu"}
                    )
                except RuntimeError as e:
                    raise SystemExit(f"{dataset} {tool}: {e}") from None
                runs.append(record)
                print(dataset, tool, runs[-1], flush=True)
                RESULTS.write_text(json.dumps(results, indent=1))
    write_page(results)


if __name__ == "__main__":
    main()
