"""How strongly should leakage control be weighted? The consistency and independence weights, on every paired
real dataset and on synthetic ground truth, each with the rest of its experiment's settings unchanged.

Usage (from the repository root):
    OMP_NUM_THREADS=1 python experiments/leakage_weight/run.py [--seeds 0,1] [--jobs 2]

Leakage control is two stage-1 terms (``model.consistency_weight``, default 1.0; ``model.independence_weight``,
default 0.1). Both are scale-free (a fraction of variance, a normalised HSIC), while each modality's reconstruction
term is its mean NLL per feature, whose size depends on the data (~0.3 for sparse RNA, ~5 for ADT counts): the same
weights are therefore strong next to the reconstruction of sparse RNA + ATAC and weak next to that of RNA + ADT.
Each setting multiplies both default weights by one factor.

Data: ../shared/datasets (sci-CAR A549, NeurIPS 2021 BMMC Multiome and CITE-seq starters, PBMC 10k CITE-seq; read
by path through each experiment's own loader, never copied here) and the test suite's synthetic generator. Runs go
to the gitignored ``run/`` beside this script; finished jobs are kept in ``results.json``, so an interrupted run
resumes where it stopped. Writes ``RESULTS.md`` and ``results.json`` next to this script.
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

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUNS = HERE / "run"
EXP = ROOT / "experiments"

# setting -> factor on both default leakage weights (consistency 1.0, independence 0.1)
SETTINGS = {"defaults": 1.0, "x0.1": 0.1, "x0.033": 1 / 30, "off": 0.0}
DEFAULT_WEIGHTS = (1.0, 0.1)

# dataset -> (experiment config for venncell-train, label column, batch column or None); pbmc and synthetic use the API
CLI_DATASETS = {
    "scicar": ("scicar_a549", "treatment_time", None),
    "bmmc_multiome": ("bmmc_multiome", "cell_type", "batch"),
    "bmmc_cite": ("bmmc_cite", "cell_type", "batch"),
}
DATASETS = [*CLI_DATASETS, "pbmc", "synthetic", "synthetic_random"]
TITLES = {
    "scicar": "sci-CAR A549 (RNA + ATAC, 1,874 cells): time point (`conf/experiment/scicar_a549.yaml`, 100 + 30 epochs)",
    "bmmc_multiome": "NeurIPS 2021 BMMC Multiome starter (RNA + ATAC, `batch_key=batch`): cell type "
    "(`conf/experiment/bmmc_multiome.yaml`, 200 + 60 epochs)",
    "bmmc_cite": "NeurIPS 2021 BMMC CITE-seq starter (RNA + ADT, `batch_key=batch`): cell type "
    "(`conf/experiment/bmmc_cite.yaml`, 120 + 40 epochs)",
    "pbmc": "PBMC 10k CITE-seq (RNA 4,000 HVG + 14 ADT, 6,855 cells): `Fine.RNA` / `Main.RNA` labels (run.py's "
    "`default` settings, 40 + 20 epochs)",
    "synthetic": "Synthetic ground truth (`tests/test_recovery.py`'s 1,500 cells and training settings, spectral start)",
    "synthetic_random": "The same synthetic cells from a random start (`latent_init=random`, std 0.1, as the `apollo` "
    "preset starts)",
}


def _weights(setting: str) -> tuple[float, float]:
    f = SETTINGS[setting]
    return DEFAULT_WEIGHTS[0] * f, DEFAULT_WEIGHTS[1] * f


def _knn_blocks(blocks: dict[str, np.ndarray], y: np.ndarray, prefix: str) -> dict[str, float]:
    from baselines import knn_accuracy

    ok = np.asarray([v is not None and v == v for v in y])  # unlabelled cells (NaN) are left out
    y = y[ok].astype(str)
    z_all = np.hstack(list(blocks.values()))
    return {
        f"{prefix} shared": knn_accuracy(blocks["shared"][ok], y),
        f"{prefix} shared ⊕ privates": knn_accuracy(z_all[ok], y),
    }


# ------------------------------------------------------------------ one job (run in its own process)
def job_cli(dataset: str, setting: str, seed: int) -> dict:
    import mudata as md

    exp, label, batch = CLI_DATASETS[dataset]
    _build(dataset)
    run_dir = RUNS / f"{dataset}_{setting}_s{seed}"
    cons, ind = _weights(setting)
    cmd = [
        "venncell-train",
        f"experiment={exp}",
        f"hydra.run.dir={run_dir}",
        "logger=none",
        "trainer.progress_bar=none",
        f"seed={seed}",
        f"model.consistency_weight={cons}",
        f"model.independence_weight={ind}",
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    out = md.read_h5mu(str(run_dir / "venn.h5mu"))
    mods = [
        k[len("X_venn_private_") :]
        for k in out.obsm
        if k.startswith("X_venn_private_") and not k.endswith("_stage1")
    ]
    y = out.obs[
        label
    ].to_numpy()  # the CLI's output is its input MuData plus the latents, in the same cell order
    res = {}
    for suffix, prefix in (("", "encoder"), ("_stage1", "stage 1")):
        blocks = {
            "shared": out.obsm[f"X_venn_shared{suffix}"],
            **{m: out.obsm[f"X_venn_private_{m}{suffix}"] for m in mods},
        }
        res.update(_knn_blocks(blocks, y, prefix))
        if batch is not None and not suffix:
            from baselines import knn_accuracy

            res["encoder shared ⊕ privates: batch accuracy (lower = better mixed)"] = knn_accuracy(
                np.hstack(list(blocks.values())), out.obs[batch].to_numpy()
            )
    return res


def _build(dataset: str) -> None:
    """Writes the experiment's input MuData (gitignored) with the experiment's own builder, unless it exists."""
    if dataset == "scicar":
        sys.path.insert(0, str(EXP / "scicar_a549_rna_atac"))
        import run as scicar  # noqa: E402

        if not scicar.OUT.exists():
            scicar.build()
        return
    name = dataset.split("_")[1]
    path = EXP / f"neurips2021_bmmc_{name}" / "data" / f"bmmc_{name}.h5mu"
    if not path.exists():
        sys.path.insert(0, str(EXP / "neurips2021_bmmc_multiome"))
        import bmmc  # noqa: E402

        bmmc.build(
            name,
            "atac" if name == "multiome" else "adt",
            "atac" if name == "multiome" else "protein",
            path,
        )


def job_pbmc(setting: str, seed: int, epochs=(40, 20)) -> dict:
    sys.path.insert(0, str(EXP / "pbmc10k_cite"))
    import run as pbmc  # noqa: E402

    from venncell import VennCell

    mdata, labels = pbmc.load()
    VennCell.setup_mudata(mdata, modalities={"rna": "rna", "protein": "protein"})
    cons, ind = _weights(setting)
    model = VennCell(
        mdata,
        seed=seed,
        **pbmc.CONFIGS["default"],
        consistency_weight=cons,
        independence_weight=ind,
    )
    model.train(
        stage1_epochs=epochs[0],
        stage2_epochs=epochs[1],
        run_dir=RUNS / f"pbmc_{setting}_s{seed}",
        progress_bar="none",
    )
    res = {}
    for source, prefix in (("encoder", "encoder"), ("stage1", "stage 1")):
        blocks = {
            "shared": model.get_latent_representation(source=source),
            **{
                m: model.get_latent_representation(block=f"private:{m}", source=source)
                for m in model.specs
            },
        }
        for lab in ("Fine.RNA", "Main.RNA"):
            res.update(
                {
                    f"{k} ({lab})": v
                    for k, v in _knn_blocks(blocks, labels[lab].to_numpy(), prefix).items()
                }
            )
    return res


def job_synthetic(setting: str, seed: int, random_start: bool = False) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_recovery import TRAIN, _learned, make_all_cells, training_cells  # noqa: E402

    from venncell import VennCell
    from venncell.analysis.recovery import evaluate_recovery

    mdata, truth = training_cells(make_all_cells())
    mdata = mdata.copy()
    VennCell.setup_mudata(mdata)
    cons, ind = _weights(setting)
    start = dict(latent_init="random", latent_init_std=0.1) if random_start else {}
    model = VennCell(
        mdata,
        shared_dim=8,
        private_dim=4,
        seed=seed,
        consistency_weight=cons,
        independence_weight=ind,
        **start,
    )
    model.train(
        run_dir=RUNS / f"synthetic{'_random' if random_start else ''}_{setting}_s{seed}", **TRAIN
    )
    s = evaluate_recovery(_learned(model, "encoder"), truth.blocks())["knn"]["summary"]
    return {
        k: s[k]
        for k in (
            "shared_recovery",
            "min_private_recovery",
            "leak_private_into_shared",
            "leak_shared_into_private",
            "leak_private_into_other_private",
        )
    }


def run_job(dataset: str, setting: str, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(EXP))
    t0 = time.perf_counter()
    if dataset in CLI_DATASETS:
        res = job_cli(dataset, setting, seed)
    elif dataset == "pbmc":
        res = job_pbmc(setting, seed)
    else:
        res = job_synthetic(setting, seed, random_start=dataset == "synthetic_random")
    return {
        "dataset": dataset,
        "setting": setting,
        "seed": seed,
        "weights": _weights(setting),
        "seconds": time.perf_counter() - t0,
        "metrics": res,
    }


# ------------------------------------------------------------------ driver
def _spawn(key: tuple) -> dict | None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, __file__, "--job", *map(str, key)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    if p.returncode or not lines:
        print(f"FAILED {key}\n{p.stderr[-2000:]}", flush=True)
        return None
    return json.loads(lines[-1][len("RESULT ") :])


def write_results(res: dict, argv: str) -> str:
    rows = res["jobs"]
    lines = [
        "# Leakage-control weights on real and synthetic data\n",
        f"Command: `{f'OMP_NUM_THREADS=1 python experiments/leakage_weight/run.py {argv}'.rstrip()}` (from the repository root; one thread per job, jobs two at a time on a 2-core machine).\n",
        "Each setting multiplies both leakage-control weights of the defaults (consistency 1.0, independence "
        "0.1) by one factor; `off` sets both to 0 (APOLLO's objective, still from the spectral start). "
        "Everything else is each experiment's own configuration. kNN accuracy (k = 15, 5-fold stratified CV) "
        "of the encoder latents (what new cells get) and of the stage-1 latents; mean over seeds, each seed in "
        "brackets.\n",
    ]
    for ds in DATASETS:
        got = [r for r in rows if r["dataset"] == ds]
        if not got:
            continue
        metrics = list(got[0]["metrics"])
        lines += [
            f"## {TITLES[ds]}\n",
            "| setting (consistency, independence) | " + " | ".join(metrics) + " |",
            "|---|" + "---|" * len(metrics),
        ]
        for st in SETTINGS:
            runs = sorted((r for r in got if r["setting"] == st), key=lambda r: r["seed"])
            if not runs:
                continue
            w = runs[0]["weights"]
            cells = []
            for k in metrics:
                v = [r["metrics"][k] for r in runs]
                each = f" ({', '.join(f'{x:.3f}' for x in v)})" if len(v) > 1 else ""
                cells.append(f"{np.mean(v):.3f}{each}")
            lines.append(f"| {st} ({w[0]:.3g}, {w[1]:.3g}) | " + " | ".join(cells) + " |")
        seeds = sorted({r["seed"] for r in got})
        minutes = np.mean([r["seconds"] for r in got]) / 60
        lines.append(
            f"\nSeeds {', '.join(map(str, seeds))}; {minutes:.1f} min per run on average.\n"
        )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--pbmc-seeds", default="0", help="PBMC is the largest set: fewer seeds")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument(
        "--job", nargs=3, help=argparse.SUPPRESS
    )  # dataset setting seed: one run, in this process
    args = p.parse_args()
    if args.job:
        ds, st, seed = args.job
        print("RESULT " + json.dumps(run_job(ds, st, int(seed))), flush=True)
        return
    out = HERE / "results.json"
    res = json.loads(out.read_text()) if out.exists() else {"jobs": []}
    done = {(r["dataset"], r["setting"], r["seed"]) for r in res["jobs"]}
    keys = [
        (ds, st, s)
        for ds in args.datasets.split(",")
        for st in SETTINGS
        for s in map(int, (args.pbmc_seeds if ds == "pbmc" else args.seeds).split(","))
    ]
    todo = [k for k in keys if k not in done]
    sys.path.insert(0, str(EXP))
    for ds in sorted(
        {k[0] for k in todo} & set(CLI_DATASETS)
    ):  # here, so that parallel jobs never write it twice
        _build(ds)
    print(f"{len(todo)} runs to do ({len(keys) - len(todo)} already in results.json)", flush=True)
    argv = " ".join(sys.argv[1:])
    with ThreadPoolExecutor(args.jobs) as pool:
        for key, r in zip(todo, pool.map(_spawn, todo)):
            if r is None:
                continue
            res["jobs"].append(r)
            res["argv"] = argv
            out.write_text(json.dumps(res, indent=1))
            print(key, {k: round(v, 3) for k, v in r["metrics"].items()}, flush=True)
    sys.path.insert(0, str(EXP))
    from baselines import write_results_md  # noqa: E402  (keeps the hand-written discussion below the tables)

    write_results_md(HERE / "RESULTS.md", write_results(res, res.get("argv", argv)))
    print((HERE / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
