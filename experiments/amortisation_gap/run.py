"""How much do the stage-2 encoders lose against the stage-1 latents they learn, and can the modalities' shared
estimates be combined better than by their mean? On the integration harness's datasets, VennCell fits scored as
the harness scores an embedding.

Usage (from the repository root; needs the harness's peers extra for scib-metrics):
    python experiments/amortisation_gap/run.py [--datasets synthetic,bmmc_cite,...] [--jobs 2]

Fits: ``defaults`` (the package defaults; seeds ``--seeds``) and, on ``--variant-datasets`` with seed 0, one change
each: ``sizes_x2`` (``shared_dim=16, private_dim=8``, twice the default latent sizes), ``encoder_dropout_0.2`` and ``encoder_dropout_0.7`` (the
encoders' dropout 0.2 or 0.7 instead of 0.5), ``encoder_hidden_512`` (encoders twice as wide), ``shared_dim_16`` (only the shared block
twice as large), ``stage2_epochs_12`` (stage 2 stopped after 12 of its 40 epochs: what early stopping on the held-out
loss would do if that loss stopped falling early), ``stage2_epochs_80`` (twice its epochs) and ``validation_fraction_0`` (no held-out cells: the encoders learn every cell).

Ways of forming the joint embedding (shared, then every private block) from the same fit:
- ``encoder``: ``get_latent_representation(block="all", source="encoder")``: the shared block is the
  modalities' encoder estimates averaged with the fitted mixing weights;
- ``precision``: the shared block is the inverse-variance weighted mean of the modalities' estimates, per
  dimension, the variances being each encoder's squared error against the stage-1 shared latents on the
  held-out cells (the validation split, never seen by the encoders);
- ``stage1``: the stage-1 latents themselves (``source="stage1"``; training data only);
- ``average``: the mean of ``encoder`` and ``stage1`` (``source="average"``, the default for the training data
  since 2026-12-06).

Also written: each encoder's R^2 of its stage-1 target on training and on held-out cells, and the held-out R^2 of
the mean and of the precision-weighted shared estimate (weights fitted on one half of the held-out cells, scored
on the other, both ways). Fits and scores go to the gitignored ``run/`` beside this script (a finished fit is not
refitted or rescored: delete its files to redo it); writes ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUN = HERE / "run"
sys.path.insert(0, str(ROOT / "benchmarks" / "integration"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(HERE.parent))
from baselines import write_results_md  # noqa: E402
from child import run_each  # noqa: E402

# pbmc10k_cite and bbbc021 can be named too; left out by default, a fit takes ~6 and ~20 min on one thread
DEFAULT_DATASETS = "synthetic,bmmc_cite,bmmc_multiome,scicar"
VARIANT_DATASETS = "bmmc_cite,bmmc_multiome,scicar"
# fit name -> model options; "train" holds training options, "validation_fraction" the held-out share
FITS = {
    "defaults": {},
    "sizes_x2": {"shared_dim": 16, "private_dim": 8},
    "encoder_dropout_0.2": {"encoder_dropout": 0.2},
    "encoder_dropout_0.7": {"encoder_dropout": 0.7},
    "encoder_hidden_512": {"encoder_hidden": 512},
    "shared_dim_16": {"shared_dim": 16},
    "stage2_epochs_12": {"train": {"stage2_epochs": 12}},
    "stage2_epochs_80": {"train": {"stage2_epochs": 80}},
    "validation_fraction_0": {"validation_fraction": 0.0},
}
WAYS = ("encoder", "precision", "stage1", "average")


def fit(name: str, fit_name: str) -> None:
    """One fit (seed 0, one thread): every block from the encoders and from stage 1, each modality's own shared
    estimate and the training / held-out split."""
    import torch
    from datasets import DATASETS

    from venncell import VennCell

    torch.set_num_threads(1)
    ds = DATASETS[name]
    mdata = ds.load()
    VennCell.setup_mudata(mdata, modalities=ds.register, batch_key=ds.batch_key)
    base, _, seed = fit_name.partition("_seed")
    options = dict(FITS[base])
    train = options.pop("train", {})
    # validation_fraction is VennCell's own argument, the rest are model options
    model = VennCell(mdata, seed=int(seed or 0), **options)
    with tempfile.TemporaryDirectory() as d:
        model.train(run_dir=d, progress_bar="none", **train)
    out = {"is_train": model.is_train}
    for source in ("encoder", "stage1"):
        out[f"{source}:shared"] = model.get_latent_representation(block="shared", source=source)
        for m in model.specs:
            out[f"{source}:private:{m}"] = model.get_latent_representation(
                block=f"private:{m}", source=source
            )
    for m in model.specs:
        out[f"shared_from:{m}"] = model.get_latent_representation(modalities=[m])
    np.savez(RUN / f"{name}__{fit_name}.npz", **out)


def modalities_of(f: dict) -> list[str]:
    return [k.split(":", 1)[1] for k in f if k.startswith("shared_from:")]


def precision_weighted(f: dict, fit_cells: np.ndarray) -> np.ndarray:
    """The modalities' shared estimates, each dimension weighted by 1 / its squared error on ``fit_cells``."""
    target = f["stage1:shared"][fit_cells]
    est = {m: f[f"shared_from:{m}"] for m in modalities_of(f)}
    w = {m: 1 / np.mean((e[fit_cells] - target) ** 2, axis=0) for m, e in est.items()}
    return sum(w[m] * est[m] for m in est) / sum(w.values())


def ways(f: dict) -> dict[str, np.ndarray]:
    mods = modalities_of(f)
    held = ~f["is_train"]

    def joint(source: str, shared: np.ndarray | None = None) -> np.ndarray:
        first = f[f"{source}:shared"] if shared is None else shared
        return np.hstack([first, *(f[f"{source}:private:{m}"] for m in mods)])

    out = {"encoder": joint("encoder")}
    if held.any():  # the precision weights need held-out cells
        out["precision"] = joint("encoder", precision_weighted(f, held))
    return {
        **out,
        "stage1": joint("stage1"),
        "average": 0.5 * (joint("encoder") + joint("stage1")),
    }


def r2(est: np.ndarray, target: np.ndarray, cells: np.ndarray) -> float | None:
    """Fraction of the target's variance over ``cells`` that ``est`` explains; None without cells."""
    if len(cells) < 2:
        return None
    e, t = est[cells], target[cells]
    return float(1 - np.sum((e - t) ** 2) / np.sum((t - t.mean(0)) ** 2))


def recovery(f: dict) -> list[dict]:
    """Encoder R^2 of the stage-1 latents on training and on held-out cells, per block; for the shared block each
    modality's own estimate, their average with the fitted mixing weights, and the precision-weighted mean (held-out only: its weights are fitted
    on one half of the held-out cells and scored on the other, both ways)."""
    train, held = np.flatnonzero(f["is_train"]), np.flatnonzero(~f["is_train"])
    target = f["stage1:shared"]
    rows = []
    for m in modalities_of(f):
        p, t = f[f"encoder:private:{m}"], f[f"stage1:private:{m}"]
        rows.append(
            {"block": f"private:{m}", "train": r2(p, t, train), "held-out": r2(p, t, held)}
        )
        s = f[f"shared_from:{m}"]
        rows.append(
            {
                "block": f"shared, from {m} alone",
                "train": r2(s, target, train),
                "held-out": r2(s, target, held),
            }
        )
    shared = f["encoder:shared"]
    rows.append(
        {
            "block": "shared, mixing weights",
            "train": r2(shared, target, train),
            "held-out": r2(shared, target, held),
        }
    )
    if len(held) < 4:  # no held-out cells to fit and score the weights on
        return rows
    halves = np.array_split(np.random.default_rng(0).permutation(held), 2)
    crossed = [r2(precision_weighted(f, halves[i]), target, halves[1 - i]) for i in range(2)]
    rows.append(
        {"block": "shared, precision-weighted", "train": None, "held-out": float(np.mean(crossed))}
    )
    return rows


def score(name: str, fit_name: str) -> None:
    import torch
    from metrics import score_ways

    torch.set_num_threads(1)
    with np.load(RUN / f"{name}__{fit_name}.npz") as z:
        f = {k: z[k] for k in z.files}
    rows = [{"data": name, "fit": fit_name, **row} for row in score_ways(name, ways(f))]
    pd.DataFrame(rows).to_csv(RUN / f"{name}__{fit_name}_scores.csv", index=False)
    (RUN / f"{name}__{fit_name}_recovery.json").write_text(json.dumps(recovery(f), indent=1))


def one(job: str) -> None:
    """Fit and score one (dataset, fit) pair, in this process; what is already in ``run/`` is kept."""
    name, fit_name = job.split("__")
    if not (RUN / f"{job}.npz").exists():
        fit(name, fit_name)
    if not (RUN / f"{job}_recovery.json").exists():
        score(name, fit_name)


def table(df: pd.DataFrame, metric: str, fit_name: str) -> list[str]:
    wide = df[df.fit == fit_name].pivot(index="data", columns="way", values=metric)[list(WAYS)]
    lines = ["| data | " + " | ".join(WAYS) + " |", "|---|" + "---|" * len(WAYS)]
    return lines + [
        f"| {d} | " + " | ".join(f"{wide.loc[d, w]:.3f}" for w in WAYS) + " |" for d in wide.index
    ]


def seed_table(df: pd.DataFrame) -> list[str]:
    """Each way against the default embedding (``encoder``) over the defaults' seeds: mean +- sd of the difference."""
    fits = df[(df.fit == "defaults") | df.fit.str.startswith("defaults_seed")]
    if fits.fit.nunique() < 2:
        return []
    wide = fits.pivot_table(index=["data", "fit"], columns="way", values=["knn", "bio"])
    lines = [
        f"## The ways against the default embedding, {fits.fit.nunique()} seeds",
        "",
        "Mean ± standard deviation over the seeds of (way − `encoder`); the `encoder` column is its own mean.",
        "",
        "| data | metric | encoder | " + " | ".join(w for w in WAYS if w != "encoder") + " |",
        "|---|---|---|" + "---|" * (len(WAYS) - 1),
    ]
    for data in sorted(fits.data.unique()):
        for metric, title in (("knn", "kNN accuracy"), ("bio", "bio conservation")):
            t = wide[metric].loc[data]
            cells = [f"{t['encoder'].mean():.3f} ± {t['encoder'].std():.3f}"]
            for w in WAYS[1:]:
                d = t[w] - t["encoder"]
                cells.append(f"{d.mean():+.3f} ± {d.std():.3f}")
            lines.append(f"| {data} | {title} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def page(jobs: list[str]) -> None:
    done = [j for j in jobs if (RUN / f"{j}_scores.csv").exists()]
    df = pd.concat([pd.read_csv(RUN / f"{j}_scores.csv") for j in done])
    lines = [
        "# The amortisation gap: encoder latents against the stage-1 latents they learn",
        "",
        "Command (from the repository root): `python experiments/amortisation_gap/run.py`. VennCell fits of each "
        "dataset (seed 0 unless a table says otherwise), scored as the integration harness scores an embedding (scib-metrics bio "
        "conservation and total, kNN accuracy of the harness's headline label); the ways of forming the "
        "joint embedding are defined in `run.py`'s docstring. The package defaults unless the fit says "
        "otherwise.",
        "",
        "The reading and the numbers measured before (earlier defaults) are below the tables.",
        "",
    ]
    for metric, title in (
        ("knn", "kNN accuracy"),
        ("bio", "bio conservation"),
        ("total", "scib total"),
    ):
        lines += [f"## {title}, the defaults", "", *table(df, metric, "defaults"), ""]
    lines += seed_table(df)
    variant = (df.fit != "defaults") & ~df.fit.str.contains("_seed")
    changed = df[(df.way == "encoder") & ((df.fit == "defaults") | variant)]
    changed = changed[changed.data.isin(df[variant].data)]
    lines += [
        "## One change to the defaults",
        "",
        "The default embedding (`encoder`) of each fit.",
        "",
        "| data | fit | kNN accuracy | bio conservation | scib total |",
        "|---|---|---|---|---|",
        *(
            f"| {r.data} | {r.fit} | {r.knn:.3f} | {r.bio:.3f} | {r.total:.3f} |"
            for r in changed.sort_values(["data", "fit"]).itertuples()
        ),
        "",
    ]
    lines += [
        "## Encoder R^2 of the stage-1 latents",
        "",
        "Training cells vs held-out cells (the 10 % validation split).",
        "",
    ]
    lines += ["| data | fit | block | train | held-out |", "|---|---|---|---|---|"]
    for j in done:
        name, fit_name = j.split("__")
        for r in json.loads((RUN / f"{j}_recovery.json").read_text()):
            train, held = ("–" if r[k] is None else f"{r[k]:.3f}" for k in ("train", "held-out"))
            lines.append(f"| {name} | {fit_name} | {r['block']} | {train} | {held} |")
    write_results_md(HERE / "RESULTS.md", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", default=DEFAULT_DATASETS)
    p.add_argument("--variant-datasets", default=VARIANT_DATASETS)
    p.add_argument(
        "--seeds", default="0,1,2", help="seeds of the defaults' fits (the variants use seed 0)"
    )
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--page-only", action="store_true", help="only rewrite RESULTS.md from run/")
    p.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one (dataset, fit) pair
    args = p.parse_args()
    RUN.mkdir(exist_ok=True)
    if args.one:
        one(args.one)
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [f"{n}__defaults" for n in args.datasets.split(",")]
    # slowest first (images), so the pool stays full at the end
    jobs += sorted(
        (f"{n}__defaults_seed{s}" for s in seeds if s for n in args.datasets.split(",")),
        key=lambda j: not j.startswith("bbbc021"),
    )
    variants = [f for f in FITS if f != "defaults"]
    jobs += [f"{n}__{f}" for f in variants for n in args.variant_datasets.split(",") if n]
    if args.page_only:
        page(jobs)
        return
    run_each(__file__, jobs, args.jobs)
    page(jobs)


if __name__ == "__main__":
    main()
