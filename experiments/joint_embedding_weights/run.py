"""Should the joint embedding (shared ⊕ privates, ``block="all"``) weight its blocks? On the integration harness's
datasets, one VennCell fit each (seed 0), scored as the harness scores it, with the blocks side by side in five ways.

Usage (from the repository root; needs the harness's peers extra for scib-metrics):
    python experiments/joint_embedding_weights/run.py [--datasets synthetic,bmmc_cite,...] [--jobs 2]

Ways of joining the blocks (every one from the same fit):
- ``raw``: the encoders' blocks as they are (what ``block="all"`` returned before 2026-12-06; the ways below
  reweight the same encoder blocks);
- ``shared``: the shared block alone;
- ``explained``: each block centred and scaled to unit total variance, then weighted by the share of the data's
  explained variance it holds: for modality m with shared share s_m (the attribution's ``ev_shared / (ev_shared +
  ev_private)``), the shared block gets sum_m s_m and private m gets 1 - s_m, out of M (the geometry of PCA of
  the concatenated modalities, where each modality counts once);
- ``equal``: every block at unit total variance;
- ``half_private``: the raw blocks with every private block halved.

The fits use the package defaults; the weighting is applied after training. Fits and scores go to the gitignored
``run/`` beside this script (a finished dataset is not refitted); writes ``RESULTS.md``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUN = HERE / "run"
sys.path.insert(0, str(ROOT / "benchmarks" / "integration"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "experiments"))
from baselines import write_results_md  # noqa: E402
from child import per_dataset_main  # noqa: E402

DEFAULT_DATASETS = "synthetic,bmmc_cite,bmmc_multiome,scicar,pbmc10k_cite"
WAYS = ("raw", "shared", "explained", "equal", "half_private")


def fit(name: str) -> None:
    """One fit (seed 0, one thread); saves the blocks and the attribution's per-modality summary."""
    from datasets import DATASETS

    model, _ = DATASETS[name].trained_defaults(seed=0)
    blocks = {"shared": model.get_latent_representation(block="shared", source="encoder")}
    for m in model.specs:
        blocks[f"private:{m}"] = model.get_latent_representation(
            block=f"private:{m}", source="encoder"
        )
    att = model.attribution(
        markers=[], n_boot=1, n_marginal=2, max_cells=1000, progress=False, write_var=False
    )
    att.modalities.to_csv(RUN / f"{name}_modalities.csv")
    np.savez(RUN / f"{name}_blocks.npz", **blocks)


def joined(blocks: dict[str, np.ndarray], share: dict[str, float]) -> dict[str, np.ndarray]:
    from methods import unit  # centred, unit total variance (the harness's concatenated baseline)

    mods = [k.split(":", 1)[1] for k in blocks if k.startswith("private:")]
    weight = {"shared": sum(share.values()), **{f"private:{m}": 1 - share[m] for m in mods}}
    privates = [blocks[f"private:{m}"] for m in mods]
    return {
        "raw": np.hstack(list(blocks.values())),
        "shared": blocks["shared"],
        "explained": np.hstack(
            [np.sqrt(weight[k] / len(mods)) * unit(b) for k, b in blocks.items()]
        ),
        "equal": np.hstack([unit(b) for b in blocks.values()]),
        "half_private": np.hstack([blocks["shared"], *(0.5 * p for p in privates)]),
    }


def score(name: str) -> pd.DataFrame:
    import torch
    from metrics import score_ways

    torch.set_num_threads(1)
    summary = pd.read_csv(RUN / f"{name}_modalities.csv")
    share = {
        r.modality: float(r.ev_shared / (r.ev_shared + r.ev_private)) for r in summary.itertuples()
    }
    with np.load(RUN / f"{name}_blocks.npz") as f:
        ways = joined({k: f[k] for k in f.files}, share)
    return pd.DataFrame([{"data": name, **row} for row in score_ways(name, ways)])


def one(name: str) -> None:
    """Fit (unless done) and score one dataset, in this process."""
    if not (RUN / f"{name}_blocks.npz").exists():
        fit(name)
    score(name).to_csv(RUN / f"{name}_scores.csv", index=False)


def page(names: list[str]) -> None:
    got = [
        pd.read_csv(RUN / f"{n}_scores.csv") for n in names if (RUN / f"{n}_scores.csv").exists()
    ]
    df = pd.concat(got)
    lines = [
        "# Weighting the blocks of the joint embedding",
        "",
        "Command (from the repository root): `python experiments/joint_embedding_weights/run.py`. One VennCell "
        "fit per dataset (seed 0, the defaults), its encoder blocks joined in five ways and scored as the "
        "integration harness scores an embedding (scib-metrics bio conservation and total, kNN accuracy of "
        "the harness's headline label); the ways are defined in `run.py`'s docstring. The reading is written by "
        "hand at the end of the page.",
        "",
    ]
    for metric, title in (
        ("bio", "bio conservation"),
        ("knn", "kNN accuracy"),
        ("total", "scib total"),
    ):
        wide = df.pivot(index="data", columns="way", values=metric)[list(WAYS)]
        lines += [f"## {title}", "", "| data | " + " | ".join(WAYS) + " |"]
        lines += ["|---|" + "---|" * len(WAYS)]
        lines += [
            f"| {d} | " + " | ".join(f"{wide.loc[d, w]:.3f}" for w in WAYS) + " |"
            for d in wide.index
        ]
        lines += [""]
    write_results_md(HERE / "RESULTS.md", "\n".join(lines))


def main() -> None:
    per_dataset_main(__file__, __doc__, DEFAULT_DATASETS, one, page, RUN)


if __name__ == "__main__":
    main()
