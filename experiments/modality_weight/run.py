"""Modality weights on real data: each modality's reconstruction counted once (the default) vs by its number of
features.

Usage (from the repository root):
    OMP_NUM_THREADS=1 python experiments/modality_weight/run.py [--seeds 0,1] [--jobs 2]

Each modality's reconstruction term is a mean NLL per feature. By default (`equal`) every modality counts once,
whatever its size; `by features` gives modality m the weight n_m / min_k n_k (``ModalitySpec.weight``), so the
smallest modality keeps weight 1 and the NLLs add up as a joint likelihood over all features would. Against the
rest of the objective (leakage control, prior) that also weakens those terms for the larger modality.
`variational`: `by features` with variational latent tables (``latent_posterior="variational"``: a Gaussian per
cell, KL to N(0, I) weighted 1 / min_k n_k, in place of the fixed latent noise and L2), so that stage 1 is the
ELBO of all features divided by min_k n_k.
experiments/pbmc10k_cite/LATENT_DRIFT.md shows why this matters on PBMC. Datasets, each with its own
configuration: sci-CAR (`venncell/conf/experiment/scicar_a549.yaml`, RNA 2,613 genes + ATAC 815 peaks), the BMMC CITE
starter (`venncell/conf/experiment/bmmc_cite.yaml`, RNA 1,000 + ADT 134), PBMC (run.py's `default`, 40 + 20 epochs, RNA
4,000 + ADT 14), the BMMC Multiome starter (`venncell/conf/experiment/bmmc_multiome.yaml`, 600 genes + 600 peaks: `equal`
and `by features` are the same model there, so only `equal` and `variational` are run on it).
Scores: kNN accuracy (k = 15, 5-fold stratified CV; experiments/baselines.py) of shared ⊕ privates, from the
encoders and from the stage-1 tables. Writes RESULTS.md and results.json next to this script. Data are read by
path from ../shared/datasets through each experiment's own builder, never copied here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EXP = HERE.parent
ROOT = EXP.parent
RUNS = HERE / "run"
sys.path.insert(0, str(EXP))
from baselines import child_result, knn_accuracy, write_results_md  # noqa: E402

DATASETS = {
    "scicar": ("scicar_a549", "treatment_time"),
    "bmmc_cite": ("bmmc_cite", "cell_type"),
    "bmmc_multiome": ("bmmc_multiome", "cell_type"),
    "pbmc": (None, None),
}
SETTINGS = ("equal", "by features", "variational")


def _leakage_module():
    """experiments/leakage_weight/run.py (its input builders), under a name that does not clash with other run.py."""
    spec = importlib.util.spec_from_file_location(
        "leakage_weight_run", EXP / "leakage_weight" / "run.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _weights(n_features: dict[str, int], setting: str) -> dict[str, float]:
    return {
        m: (1.0 if setting == "equal" else n / min(n_features.values()))
        for m, n in n_features.items()
    }


def _posterior(n_features: dict[str, int], setting: str) -> dict:
    """The `variational` setting's model keywords: stage 1 as the ELBO / min n (a KL per cell, weighted 1 / min n)."""
    if setting != "variational":
        return {}
    return dict(latent_posterior="variational", kl_weight=1.0 / min(n_features.values()))


def _scores(model, y: np.ndarray) -> dict[str, float]:
    """kNN accuracy of shared ⊕ privates from each source, over the labelled cells."""
    ok = np.array(
        [isinstance(v, str) or v == v for v in y]
    )  # NaN labels (unlabelled cells) are left out
    return {
        source: knn_accuracy(
            model.get_latent_representation(block="all", source=source)[ok],
            np.asarray(y)[ok].astype(str),
        )
        for source in ("encoder", "stage1")
    }


def job(dataset: str, setting: str, seed: int) -> dict:
    import mudata as md
    import torch
    from omegaconf import OmegaConf

    from venncell import VennCell

    torch.set_num_threads(1)
    if dataset == "pbmc":
        sys.path.insert(0, str(EXP / "pbmc10k_cite"))
        import run as pbmc  # noqa: E402  (experiments/pbmc10k_cite/run.py: loader, settings)

        mdata, labels = pbmc.load()
        reg = {"rna": {"kind": "rna"}, "protein": {"kind": "protein"}}
        batch_key, dims, epochs = None, pbmc.CONFIGS["default"], (40, 20)
        targets = {lab: labels[lab].to_numpy() for lab in pbmc.LABELS}
    else:
        exp, label = DATASETS[dataset]
        _leakage_module()._build(dataset)
        cfg = OmegaConf.load(ROOT / "venncell" / "conf" / "experiment" / f"{exp}.yaml")
        mdata = md.read_h5mu(str(ROOT / cfg.data.path))
        reg = OmegaConf.to_container(cfg.data.register)
        batch_key = cfg.data.get("batch_key")
        # the presets used to set sizes and epochs; they now hold only data, so the package defaults apply
        sizes = {k: OmegaConf.select(cfg, f"model.{k}") for k in ("shared_dim", "private_dim")}
        dims = {k: v for k, v in sizes.items() if v is not None}
        epochs = tuple(OmegaConf.select(cfg, f"trainer.stage{i}_epochs") for i in (1, 2))
        targets = {label: mdata.obs[label].to_numpy()}
    n = {m: mdata[m].n_vars for m in reg}
    w = _weights(n, setting)
    VennCell.setup_mudata(
        mdata, {m: {**o, "weight": w[m]} for m, o in reg.items()}, batch_key=batch_key
    )
    model = VennCell(mdata, seed=seed, **dims, **_posterior(n, setting))
    model.train(
        stage1_epochs=epochs[0],
        stage2_epochs=epochs[1],
        progress_bar="none",
        run_dir=RUNS / f"{dataset}_{setting.replace(' ', '_')}_s{seed}",
    )
    res = {"weights": w, "n_features": n, "epochs": list(epochs), "model": _posterior(n, setting)}
    res["knn"] = {lab: _scores(model, y) for lab, y in targets.items()}
    if batch_key:
        res["batch_knn_encoder"] = _scores(model, mdata.obs[batch_key].to_numpy())["encoder"]
    return res


def write(res: dict, argv: str) -> str:
    lines = [
        "# Modality weights on real data: each modality once (default) vs by its number of features\n",
        f"Command: `{argv}`"
        + "".join(f"; rows added with `{c}`" for c in res.get("added", []))
        + " (from the repository root; one thread per job). Settings and data: this script's "
        "docstring. kNN accuracy of shared ⊕ privates (k = 15, 5-fold stratified CV), mean over seeds, each seed "
        "in brackets. Batch: kNN accuracy of the batch label from the encoder latents (lower = better mixed).\n",
        "| data | label | setting | modality weights | encoder latents | stage-1 latents | batch (encoder) |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset in DATASETS:
        for setting in SETTINGS:
            runs = [r for r in res["jobs"] if r["dataset"] == dataset and r["setting"] == setting]
            if not runs:
                continue
            w = ", ".join(f"{m} {v:.3g}" for m, v in runs[0]["result"]["weights"].items())

            def cell(get) -> str:
                v = [get(r["result"]) for r in runs]
                return f"{np.mean(v):.3f} ({' / '.join(f'{x:.3f}' for x in v)})"

            for lab in runs[0]["result"]["knn"]:
                batch = (
                    cell(lambda r: r["batch_knn_encoder"])
                    if "batch_knn_encoder" in runs[0]["result"]
                    else "–"
                )
                lines.append(
                    f"| {dataset} | {lab} | {setting} | {w} | {cell(lambda r: r['knn'][lab]['encoder'])} | "
                    f"{cell(lambda r: r['knn'][lab]['stage1'])} | {batch} |"
                )
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument(
        "--job",
        nargs=3,
        metavar=("DATASET", "SETTING", "SEED"),
        help="run one job, print its result",
    )
    p.add_argument(
        "--report-only", action="store_true", help="rewrite RESULTS.md from results.json"
    )
    p.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help="comma-separated subset of " + ", ".join(DATASETS),
    )
    p.add_argument(
        "--settings",
        help="comma-separated settings to run (spaces as _); the stored jobs of the others are kept",
    )
    args = p.parse_args()
    if args.job:
        print(
            "RESULT "
            + json.dumps(job(args.job[0], args.job[1].replace("_", " "), int(args.job[2])))
        )
        return
    if args.report_only:
        res = json.loads((HERE / "results.json").read_text())
        write_results_md(HERE / "RESULTS.md", write(res, res["command"]))
        return
    # the two input builders run once, before parallel jobs could race on writing the same file
    lk = _leakage_module()
    datasets = args.datasets.split(",")
    if set(datasets) - set(DATASETS):
        raise SystemExit(
            f"--datasets: unknown {sorted(set(datasets) - set(DATASETS))}; known: {list(DATASETS)}"
        )
    for d in set(datasets) & {"scicar", "bmmc_cite", "bmmc_multiome"}:
        lk._build(d)
    settings = (
        [x.replace("_", " ") for x in args.settings.split(",")]
        if args.settings
        else list(SETTINGS)
    )
    if set(settings) - set(SETTINGS):
        raise SystemExit(
            f"--settings: unknown {sorted(set(settings) - set(SETTINGS))}; known: {SETTINGS}"
        )
    keys = [
        (d, s, int(seed))
        for d in datasets
        for s in settings
        for seed in args.seeds.split(",")
        if not (d == "bmmc_multiome" and s == "by features")
    ]  # equal sizes: the same model as `equal`

    def spawn(key) -> dict:
        job_args = ["--job", key[0], key[1].replace(" ", "_"), key[2]]
        result = child_result([Path(__file__).resolve(), *job_args], "RESULT ", cwd=ROOT)
        return {"dataset": key[0], "setting": key[1], "seed": key[2], "result": result}

    with ThreadPoolExecutor(args.jobs) as pool:
        jobs = list(pool.map(spawn, keys))
    argv = f"OMP_NUM_THREADS=1 python experiments/modality_weight/run.py --seeds {args.seeds} --jobs {args.jobs}"
    res = {"command": argv, "jobs": jobs}
    if args.settings or datasets != list(
        DATASETS
    ):  # a partial run: keep the stored jobs it did not redo
        res = json.loads((HERE / "results.json").read_text())
        argv += (f" --settings {args.settings}" if args.settings else "") + (
            f" --datasets {args.datasets}" if datasets != list(DATASETS) else ""
        )
        done = {(j["dataset"], j["setting"], j["seed"]) for j in jobs}
        res["jobs"] = [
            j for j in res["jobs"] if (j["dataset"], j["setting"], j["seed"]) not in done
        ] + jobs
        res["added"] = [c for c in res.get("added", []) if c != argv] + [argv]
    (HERE / "results.json").write_text(json.dumps(res, indent=1))
    write_results_md(HERE / "RESULTS.md", write(res, res["command"]))


if __name__ == "__main__":
    main()
