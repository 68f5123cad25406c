"""The layered 0.2 code at the 0.1 settings against the 0.1 code itself (issue #26: the redesign changes no result).

    python experiments/layered_code_unchanged/run.py [--seeds 0,1] [--no-real]

0.2 changed the code layout and the defaults in one step, so its own defaults cannot be compared with 0.1's.
Instead both codes train the same model: the 0.1 code (commit 5c413dd, extracted with ``git archive`` into
runs/, which git ignores) with its defaults, and this checkout with the preset that restores them
(preset ``v0.1`` and ``lr_latent=0.01``, the harness's "defaults before this change"). Each fit runs in its
own process with one thread, two at a time.

Outputs compared:
- the synthetic recovery (built-in generator, default size), scored for both codes by this checkout's
  ``recovery_matrix`` on the encoder latents, over ``--seeds``;
- the integration harness's real sets (PBMC 10k CITE, BMMC CITE and Multiome with their batches, sci-CAR, and
  BBBC021's images with seed 0 only; each skipped when ../shared lacks it), loaded and registered as the harness
  does: kNN accuracy (k = 15, 5-fold) of each label from shared ⊕ privates, over ``--seeds``;
- on every set, the largest absolute difference between the two codes' latents.

"Unchanged within seed noise": the difference between the codes is compared with the spread between seeds of one
code. Writes RESULTS.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUNS = HERE / "runs"
OLD_COMMIT = "5c413dd"
REAL = [
    "pbmc10k_cite",
    "bmmc_cite",
    "bmmc_multiome",
    "scicar",
    "bbbc021",
]  # the harness's real sets
ONE_SEED = {"bbbc021"}  # a CNN fit takes ~20 min on one thread: seed 0 only

# One fit: train with the given code on the given data, save the encoder latents of every block.
CHILD = """
import sys, json, numpy as np, mudata as md, torch
torch.set_num_threads(1)
from venncell import VennCell
args = json.loads(sys.argv[1])
if args["data"] == "synthetic":
    from venncell import make_synthetic
    mdata, _ = make_synthetic(seed=0)
    VennCell.setup_mudata(mdata)
else:
    where = json.loads(args["data"])
    mdata = md.read_h5mu(where["path"])
    VennCell.setup_mudata(mdata, modalities=where["modalities"], batch_key=where["batch_key"])
kwargs, train = {}, {}
if args["code"] == "new":
    from venncell.module.config import PRESETS
    kwargs, train = PRESETS["v0.1"], {"lr_latent": 0.01}
model = VennCell(mdata, seed=args["seed"], **kwargs)
model.train(run_dir=args["run_dir"], progress_bar="none", **train)
blocks = ["shared"] + [f"private:{m}" for m in model.specs]
np.savez(args["out"], **{b: model.get_latent_representation(block=b) for b in blocks})
"""


def old_source() -> Path:
    src = RUNS / "old_src"
    if not (src / "venncell").exists():
        src.mkdir(parents=True, exist_ok=True)
        tar = subprocess.run(
            ["git", "-C", str(ROOT), "archive", OLD_COMMIT, "venncell"],
            capture_output=True,
            check=True,
        ).stdout
        tarfile.open(fileobj=BytesIO(tar)).extractall(src, filter="data")
    return src


def fit(code: str, data: str, seed: int) -> dict:
    name = data if data == "synthetic" else Path(json.loads(data)["path"]).stem
    tag = f"{name}_{code}_s{seed}"
    out = RUNS / f"{tag}.npz"
    if not out.exists():
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env["PYTHONPATH"] = str(old_source() if code == "old" else ROOT)
        args = {"code": code, "data": data, "seed": seed}
        args.update(run_dir=str(RUNS / tag), out=str(out))
        t0 = time.time()
        res = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(args)],
            env=env,
            cwd=RUNS,
            capture_output=True,
            text=True,
        )
        if res.returncode:
            raise RuntimeError(f"{tag} failed:\n{res.stderr[-3000:]}")
        print(f"{tag}: {time.time() - t0:.0f} s", flush=True)
    return dict(np.load(out))


def synthetic(seeds: list[int]) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from venncell import make_synthetic
    from venncell.analysis.recovery import recovery_matrix, summarise_recovery

    _, truth = make_synthetic(seed=0)
    jobs = [(code, s) for s in seeds for code in ("old", "new")]
    with ThreadPoolExecutor(2) as pool:
        lat = dict(zip(jobs, pool.map(lambda j: fit(j[0], "synthetic", j[1]), jobs)))
    rows = {j: summarise_recovery(recovery_matrix(lat[j], truth.blocks())) for j in jobs}
    df = pd.DataFrame(rows).T
    df.index = [f"{c} code, seed {s}" for c, s in df.index]
    keys = [
        "shared_recovery",
        "min_private_recovery",
        "leak_private_into_shared",
        "leak_shared_into_private",
    ]
    return _comparison(df[keys], seeds) + _identity(
        {s: (lat["old", s], lat["new", s]) for s in seeds}
    )


def _identity(pairs: dict) -> list[str]:
    """The largest absolute difference between the two codes' latents, per seed and over every block."""
    worst = {
        s: max(float(np.abs(old[b] - new[b]).max()) for b in old)
        for s, (old, new) in pairs.items()
    }
    text = ", ".join(f"seed {s}: {d:.3g}" for s, d in worst.items())
    return [
        f"Largest absolute difference between the two codes' latents (every block, every cell): {text}.",
        "",
    ]


def _comparison(df: pd.DataFrame, seeds: list[int]) -> list[str]:
    old = df[df.index.str.startswith("old")]
    new = df[df.index.str.startswith("new")]
    diff = new.mean() - old.mean()
    spread = pd.concat([old.max() - old.min(), new.max() - new.min()], axis=1).max(1)
    table = df.round(3)
    table.loc["difference of the means (new - old)"] = diff.round(3)
    if len(seeds) > 1:
        table.loc["largest spread between seeds of one code"] = spread.round(3)
    sys.path.insert(0, str(ROOT))
    from experiments.baselines import markdown_table

    return [markdown_table(table, "", lambda v: f"{v:.3f}"), ""]


def real(name: str, seeds: list[int]) -> list[str]:
    """One integration-harness dataset: kNN accuracy of each label from shared ⊕ privates, per seed."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.integration.datasets import DATASETS
    from benchmarks.integration.metrics import knn_accuracy

    ds = DATASETS[name]
    if not ds.available():
        return [f"Skipped: ../shared/datasets/{ds.source} is absent.", ""]
    mdata = ds.load()
    path = RUNS / f"{name}.h5mu"
    if not path.exists():
        mdata.write(path)
    data = json.dumps({"path": str(path), "batch_key": ds.batch_key, "modalities": ds.register})
    seeds = seeds[:1] if name in ONE_SEED else seeds
    jobs = [(code, s) for s in seeds for code in ("old", "new")]
    with ThreadPoolExecutor(2) as pool:
        lat = dict(zip(jobs, pool.map(lambda j: fit(j[0], data, j[1]), jobs)))
    rows = {}
    for (code, seed), blocks in lat.items():
        z = np.hstack(
            [blocks["shared"], *(v for k, v in blocks.items() if k.startswith("private:"))]
        )
        row = rows.setdefault(f"{code} code, seed {seed}", {})
        for label in ds.labels:
            y = mdata.obs[label]
            known = y.notna().to_numpy()
            row[label] = knn_accuracy(z[known], y[known].astype(str).to_numpy())
    df = pd.DataFrame(rows).T
    return _comparison(df, seeds) + _identity({s: (lat["old", s], lat["new", s]) for s in seeds})


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--no-real", action="store_true")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    RUNS.mkdir(exist_ok=True)
    t0 = time.time()
    lines = [
        "# The layered code changes no result (issue #26)",
        "",
        f"Command: `python experiments/layered_code_unchanged/run.py --seeds {args.seeds}"
        + (" --no-real" if args.no_real else "")
        + "` (this page is written by it; the script's docstring says what is compared and how). Old code: "
        f"0.1 at commit {OLD_COMMIT} with its defaults; new code: this checkout with the preset that restores "
        "them.",
        "",
        f"## Synthetic recovery (built-in generator, encoder latents, seeds {args.seeds})",
        "",
        *synthetic(seeds),
    ]
    if not args.no_real:
        for name in REAL:
            lines += [f"## {name}: kNN accuracy of shared ⊕ privates", "", *real(name, seeds)]
    lines += [
        f"({time.time() - t0:.0f} s, fits cached in runs/, one thread per fit, two at a time.)",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
