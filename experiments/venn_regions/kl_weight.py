"""KL weight with region blocks: `venn_regions="pairs"` at KL weight 1 (its default) and 4 (the default without
regions), three seeds, on run.py's data.

    python experiments/venn_regions/kl_weight.py [--seeds 0,1,2] [--jobs 2]

Per fit: the recovery matrix of the encoder latents (kNN R^2, 5-fold), its summary, the largest R^2 of a region's
true factors from one of its members' private blocks (the leak KL weight 4 opens), and the attribution verdicts of
every true factor (run.py's markers). Each fit runs in its own process with one thread, ``--jobs`` at a time; a
finished (seed, KL weight) is kept in kl_weight.json, so an interrupted run resumes. Writes KL_WEIGHT.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
from child import fits_main  # noqa: E402

RESULTS = HERE / "kl_weight.json"
PAGE = HERE / "KL_WEIGHT.md"
KL_WEIGHTS = (1.0, 4.0)


def fit(seed: int, kl: float) -> dict:
    import torch

    from venncell import VennCell, make_synthetic
    from venncell.analysis.recovery import recovery_matrix, summarise_recovery

    sys.path.insert(0, str(HERE))
    from run import REGIONS, true_markers

    torch.set_num_threads(1)
    mdata, truth = make_synthetic(region_factors=REGIONS)
    VennCell.setup_mudata(mdata)
    t0 = time.time()
    model = VennCell(mdata, seed=seed, venn_regions="pairs", kl_weight=kl)
    model.train(progress_bar="none", run_dir=HERE / "runs" / f"kl{kl:g}_s{seed}")
    blocks = ["shared", *(f"shared:{r}" for r in model.module.regions)]
    blocks += [f"private:{m}" for m in model.specs]
    mat = recovery_matrix(
        {b: model.get_latent_representation(block=b, source="encoder") for b in blocks},
        truth.blocks(),
    )
    summary = summarise_recovery(mat)
    into_private = max(
        float(mat.loc[f"shared:{r}", f"private:{m}"]) for r in REGIONS for m in r.split("+")
    )
    expected = true_markers(mdata, truth)
    res = model.attribution(markers=list(expected), progress=False)
    got = dict(zip(res.markers["marker"], res.markers["verdict"]))
    return {
        "seed": seed,
        "kl_weight": kl,
        "seconds": round(time.time() - t0),
        "shared_recovery": summary["shared_recovery"],
        "min_private_recovery": summary["min_private_recovery"],
        "min_region_recovery": summary["min_region_recovery"],
        "region_into_member_private": into_private,
        "verdicts_right": sum(got[k] == v for k, v in expected.items()),
        "verdicts": len(expected),
        "wrong": {k: got[k] for k, v in expected.items() if got[k] != v},
    }


def write_page(results: list[dict]) -> None:
    lines = [
        "# KL weight with region blocks",
        "",
        "Command (from the repository root): `python experiments/venn_regions/kl_weight.py` (this page is "
        'written by it; what it measures is in its docstring). `VennCell(mdata, venn_regions="pairs", '
        "kl_weight=k, seed=s)`, every other setting the default, on run.py's data (pair regions protein+rna and "
        "atac+rna, 2 factors each).",
        "",
        "| KL weight | seed | shared recovery | min private recovery | min region recovery | region factors "
        "in a member's private block | verdicts right | wrong verdicts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r["kl_weight"], r["seed"])):
        wrong = "; ".join(f"{k}: {v}" for k, v in r["wrong"].items()) or "–"
        lines.append(
            f"| {r['kl_weight']:g} | {r['seed']} | {r['shared_recovery']:.3f} | "
            f"{r['min_private_recovery']:.3f} | {r['min_region_recovery']:.3f} | "
            f"{r['region_into_member_private']:.3f} | {r['verdicts_right']} / {r['verdicts']} | {wrong} |"
        )
    PAGE.write_text("\n".join(lines) + "\n")


def jobs_for(results: list[dict], seeds: list[int]) -> list[tuple]:
    done = {(r["seed"], r["kl_weight"]) for r in results}
    return [(s, k) for s in seeds for k in KL_WEIGHTS if (s, k) not in done]


def main() -> None:
    fits_main(
        __file__,
        __doc__,
        "0,1,2",
        lambda seed, kl: fit(int(seed), float(kl)),
        jobs_for,
        RESULTS,
        write_page,
    )


if __name__ == "__main__":
    main()
