"""Query mapping: cells of a batch the model never saw, embedded by the encoders or refined with the new batch learnt.

    python experiments/query_mapping/run.py [--seeds 0,1] [--jobs 2] [--datasets synthetic,bmmc_cite,...]

A model trained with the package defaults on some batches (the reference) embeds the cells of another batch (the
query) three ways: by the encoders alone (the default for new cells); refined against the frozen decoders as if
they were of a training batch (their batch relabelled as the reference's first); and refined with their own batch
learnt (``refine_epochs=20``, the new batch's one-hot input of the decoders fitted, alone and then with the latents). A model
trained on every batch, query included, is the reference point (its default embedding of the query cells).

Data: the built-in generator with three batches (batch effect 1 SD per feature, and 2 SD in ``synthetic_strong``;
reference b0 + b1, query b2; its shared factors known), and the integration harness's real sets with two batches (bmmc_cite, bmmc_multiome;
reference the first batch, query the second), read through benchmarks/integration/datasets.py, never copied here.

Scores of the query cells' shared latent, against the reference cells' default embedding:
- label transfer: accuracy of a kNN classifier (k = 15) fitted on the reference cells' labels;
- mixing: the share of reference cells among each query cell's 15 nearest neighbours (reference and query
  pooled), over the reference's share of all cells (1 = mixed as if one batch, 0 = apart);
- synthetic only, shared R^2: a kNN regressor (k = 15) fitted from the reference cells' latents to their true
  shared factors, scored on the query cells'.

Each (dataset, seed) runs in its own process with one thread, ``--jobs`` at a time; finished ones are kept in
results.json, so an interrupted run resumes. Writes RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "integration"))
from child import emit, run_child  # noqa: E402

RESULTS = HERE / "results.json"
PAGE = HERE / "RESULTS.md"
DATASETS = ("synthetic", "synthetic_strong", "bmmc_cite", "bmmc_multiome")
WAYS = {
    "encoder": "encoders alone (the default for new cells)",
    "as_reference": "refined as a training batch",
    "new_batch": "refined, the new batch learnt (`refine_epochs=20`)",
    "trained_on_all": "a model trained on every batch (the reference point)",
}
REFINE_EPOCHS = 20
K = 15


def _load(name: str, seed: int):
    """(mdata, label column, batch column, reference batches, query batch, true shared factors or None)."""
    if name.startswith("synthetic"):
        from venncell import make_synthetic

        effect = 2.0 if name == "synthetic_strong" else 1.0
        mdata, truth = make_synthetic(n_batches=3, batch_effect=effect, seed=seed)
        return mdata, "cluster", "batch", ["b0", "b1"], "b2", truth.shared
    from datasets import DATASETS as HARNESS

    ds = HARNESS[name]
    mdata = ds.load()
    batches = sorted(mdata.obs[ds.batch_key].unique())
    return mdata, ds.labels[0], ds.batch_key, batches[:1], batches[1], None


def _train(mdata, batch_key: str, seed: int):
    import tempfile

    from venncell import VennCell

    VennCell.setup_mudata(mdata, batch_key=batch_key)
    model = VennCell(mdata, seed=seed)
    with tempfile.TemporaryDirectory() as d:
        model.train(run_dir=d, progress_bar="none", num_threads=1)
    return model


def _scores(z_ref, z_query, y_ref, y_query, t_ref=None, t_query=None) -> dict:
    import numpy as np
    from sklearn.metrics import r2_score
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor, NearestNeighbors

    out = {"transfer": float(KNeighborsClassifier(K).fit(z_ref, y_ref).score(z_query, y_query))}
    pooled = np.vstack([z_ref, z_query])
    _, nn = NearestNeighbors(n_neighbors=K + 1).fit(pooled).kneighbors(z_query)
    share = (nn[:, 1:] < len(z_ref)).mean()
    out["mixing"] = float(share / (len(z_ref) / len(pooled)))
    if t_ref is not None:
        pred = KNeighborsRegressor(K).fit(z_ref, t_ref).predict(z_query)
        out["shared_r2"] = float(r2_score(t_query, pred))
    return out


def fit(name: str, seed: int) -> dict:
    import warnings

    import torch

    torch.set_num_threads(1)
    mdata, label, key, ref_batches, query_batch, truth = _load(name, seed)
    in_ref = mdata.obs[key].astype(str).isin(ref_batches).to_numpy()
    ref, query = mdata[in_ref].copy(), mdata[~in_ref].copy()
    y_ref, y_query = (x.obs[label].astype(str).to_numpy() for x in (ref, query))
    t_ref, t_query = (None, None) if truth is None else (truth[in_ref], truth[~in_ref])
    model = _train(ref, key, seed)
    z_ref = model.get_latent_representation()
    latents = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unseen batch's warning: measured here
        latents["encoder"] = model.get_latent_representation(query)
    relabelled = query.copy()
    relabelled.obs[key] = ref_batches[0]
    latents["as_reference"] = model.get_latent_representation(
        relabelled, refine_epochs=REFINE_EPOCHS
    )
    latents["new_batch"] = model.get_latent_representation(query, refine_epochs=REFINE_EPOCHS)
    full = mdata.copy()
    everyone = _train(full, key, seed)
    z_all = everyone.get_latent_representation()
    out = {"dataset": name, "seed": seed, "label": label, "query": str(query_batch)}
    out["ways"] = {
        way: _scores(z_ref, z, y_ref, y_query, t_ref, t_query) for way, z in latents.items()
    }
    out["ways"]["trained_on_all"] = _scores(
        z_all[in_ref], z_all[~in_ref], y_ref, y_query, t_ref, t_query
    )
    return out


def write_page(results: list[dict]) -> None:
    import numpy as np

    lines = [
        "# Query mapping: cells of a batch the model never saw",
        "",
        "Command (from the repository root): `python experiments/query_mapping/run.py` (this page is written by "
        "it; what it measures is in its docstring). The package defaults throughout; the query's shared latent "
        "against the reference cells' default embedding. Mean ± sd over seeds.",
        "",
        "| data (query batch) | embedding of the query cells | label transfer | mixing | shared R² | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for name in DATASETS:
        rows = [r for r in results if r["dataset"] == name]
        if not rows:
            continue
        for way, title in WAYS.items():
            cells = []
            for metric in ("transfer", "mixing", "shared_r2"):
                vals = [r["ways"][way][metric] for r in rows if metric in r["ways"][way]]
                cells.append(f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if vals else "–")
            lines.append(
                f"| {name} ({rows[0]['query']}) | {title} | {' | '.join(cells)} | {len(rows)} |"
            )
    lines.append("")
    old = PAGE.read_text() if PAGE.exists() else ""
    marker = "<!-- Written by hand below this line"
    kept = old[old.index(marker) :] if marker in old else ""
    PAGE.write_text("\n".join(lines) + ("\n" + kept if kept else ""))


def _job(args: tuple[str, int]) -> dict:
    name, seed = args
    return run_child([__file__, "--child", name, str(seed)], threads=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        emit(fit(args.child[0], int(args.child[1])))
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    done = {(r["dataset"], r["seed"]) for r in results}
    todo = [
        (name, int(s))
        for name in args.datasets.split(",")
        for s in args.seeds.split(",")
        if (name, int(s)) not in done
    ]
    with ProcessPoolExecutor(args.jobs) as pool:
        for record in pool.map(_job, todo):
            results.append(record)
            RESULTS.write_text(json.dumps(results, indent=1))
            print(record["dataset"], record["seed"], record["ways"], flush=True)
    write_page(results)


if __name__ == "__main__":
    main()
