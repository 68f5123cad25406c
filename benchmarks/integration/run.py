"""The integration harness: VennCell with its package defaults next to totalVI, MultiVI, MOFA+ and PCA/LSI baselines,
on every labelled real dataset in ../shared/datasets (skipped where absent) and on the built-in synthetic default.

Usage (from the repository root; peers need ``pip install -e ".[bench]"``):
    python benchmarks/integration/run.py                       # everything: 3 seeds, 2 jobs at a time
    python benchmarks/integration/run.py --datasets scicar --methods venncell --refit
    python benchmarks/integration/run.py --methods venncell:encoder_dropout=0.2   # a candidate default
    python benchmarks/integration/run.py --data mine=my.h5mu --labels cell_type --batch-key donor   # your data
Your data: a MuData file with raw counts (``.X``, or a ``counts`` layer) in RNA, protein and/or ATAC modalities
named so their kind shows (rna/gex, protein/adt, atac/peaks), labels (and batches) in ``mdata.obs``; the cells
measured in every modality are used. It is scored like the shipped sets, on this page (not in the README's table).
Each fit runs in a child process with one thread (fit.py), which then scores it; embeddings are cached under
fits/ (gitignored), scores in results.json; RESULTS.md is rewritten from results.json at the end. ``--refit``
refits the named methods (e.g. after a change of VennCell's defaults); other cached fits are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from datasets import DATASETS, own_dataset  # noqa: E402
from methods import methods_for  # noqa: E402
from report import write_page, write_readme  # noqa: E402

HERE = Path(__file__).resolve().parent
FITS = HERE / "fits"
RESULTS = HERE / "results.json"
README = HERE.parents[1] / "README.md"  # its headline table comes from results.json


def fit_path(dataset: str, method: str, seed: int) -> Path:
    return FITS / dataset / f"{method.replace(':', '-')}_s{seed}.npz"


def run_fit(dataset: str, method: str, seed: int, log, rescore: bool = False) -> bool:
    out = fit_path(dataset, method, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(HERE / "fit.py"), dataset, method, str(seed), str(out)]
        + (["--score-only"] if rescore else []),
        capture_output=True,
        text=True,
        cwd=HERE.parents[1],
    )
    ok = proc.returncode == 0 and out.exists()
    log(
        f"{'done' if ok else 'FAILED'} {dataset} {method} seed {seed} ({time.perf_counter() - t0:.0f} s)"
    )
    if not ok:
        err = out.with_suffix(".err")
        err.write_text(proc.stdout[-5000:] + "\n" + proc.stderr[-20000:])
        log(f"  see {err}")
    return ok


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument(
        "--methods",
        default="",
        help="comma-separated subset (default: every method of each dataset)",
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--jobs", type=int, default=2, help="fits run at the same time (one thread each)"
    )
    p.add_argument(
        "--refit", action="store_true", help="refit the --methods even where a cached fit exists"
    )
    p.add_argument(
        "--rescore",
        action="store_true",
        help="score the cached fits again (after a change of metric)",
    )
    p.add_argument(
        "--page-only", action="store_true", help="only rewrite RESULTS.md from results.json"
    )
    p.add_argument(
        "--data", default="", help="NAME=PATH.h5mu: your own dataset (kept for later runs by NAME)"
    )
    p.add_argument(
        "--labels", default="", help="with --data: .obs columns to score, headline first"
    )
    p.add_argument("--batch-key", default=None, help="with --data: the .obs column of batches")
    args = p.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.data:
        name, sep, path = args.data.partition("=")
        if not sep or not name or not args.labels:
            p.error("--data NAME=PATH.h5mu needs a name, a path and --labels")
        if args.datasets == p.get_default("datasets"):
            args.datasets = name
        if own_dataset(name, path, args.labels.split(","), args.batch_key):
            import shutil

            shutil.rmtree(
                FITS / name, ignore_errors=True
            )  # fits and scores of earlier data under this name
            results.pop(name, None)
            print(f"{name}: {path} registered (its earlier fits, if any, removed)")
    if args.page_only:
        write_page(results, HERE / "RESULTS.md")
        write_readme(results, README)
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = [d for d in args.datasets.split(",") if d]
    if set(wanted) - set(DATASETS):
        p.error(f"--datasets {sorted(set(wanted) - set(DATASETS))}: not among {list(DATASETS)}")
    chosen = [m for m in args.methods.split(",") if m]
    if any("-" in m for m in chosen):  # fit files write ':' as '-', and read it back
        p.error("--methods: a method name cannot hold '-' (write 1e-3 as 0.001)")

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    jobs, rescore = [], []
    for name in wanted:
        ds = DATASETS[name]
        if not ds.available():
            log(f"skip {name}: ../shared/datasets/{ds.source} is absent")
            continue
        ds.load()  # build the .h5mu once, before the parallel fits
        # a candidate default (venncell:<field>=<value>) runs only where asked for by name
        variants = [m for m in chosen if m.startswith("venncell:") and m not in methods_for(ds)]
        for method in methods_for(ds) + variants:
            if chosen and method not in chosen:
                continue
            for seed in seeds:
                if args.refit or not fit_path(name, method, seed).exists():
                    jobs.append((name, method, seed))
                elif (
                    args.rescore
                    or not fit_path(name, method, seed).with_suffix(".scores.json").exists()
                ):
                    rescore.append((name, method, seed))  # or: its scoring failed last time
    known = {m for name in wanted for m in methods_for(DATASETS[name])}
    unknown = [m for m in chosen if m not in known and not m.startswith("venncell:")]
    if unknown:
        p.error(f"--methods {unknown}: not a method of these datasets ({sorted(known)})")
    # slow fits first, so the pool stays full at the end
    order = {"totalvi": 0, "multivi": 1, "venncell": 2, "venncell_before": 3, "mofa": 4}
    # a preset row (venncell:<preset>) costs what the defaults do
    jobs.sort(key=lambda j: (order.get(j[1].split(":", 1)[0], 9), j))
    log(f"{len(jobs)} fits to run, {len(rescore)} to score, {args.jobs} at a time")
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda j: run_fit(*j, log), jobs))
        list(pool.map(lambda j: run_fit(*j, log, rescore=True), rescore))
    # gather every cached score, so runs of the harness that overlap never drop each other's rows
    for scores in sorted(FITS.glob("*/*.scores.json")):
        method, seed = scores.name[: -len(".scores.json")].rsplit("_s", 1)
        method = method.replace(
            "-", ":", 1
        )  # fit_path wrote ':' as '-' (no method name has a '-')
        results.setdefault(scores.parent.name, {}).setdefault(method, {})[seed] = json.loads(
            scores.read_text()
        )
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
    write_page(results, HERE / "RESULTS.md")
    write_readme(results, README)
    log(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
