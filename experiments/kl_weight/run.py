"""KL weight 4 (the default) against 6, and against a different weight on the shared and the private blocks: how
much shared signal each lets into the private blocks.

    python experiments/kl_weight/run.py [--seeds 0,1] [--jobs 2]

KL weight 6 raised bio conservation on the integration harness's real tabular sets
(benchmarks/integration/RESULTS.md, `venncell:kl_weight=6`), so it was a candidate default; so were the
shared block's weight raised alone (`private_kl_scale` below 1 keeps the private blocks at 4) and the private
blocks' alone. Their cost is measured here, on the built-in generator (RNA 400, protein 80, ATAC 600 features; its
shared and private factors known): 600 and 1,500 cells with the package defaults, and 1,500 cells with the recovery
test's shorter schedule (tests/analysis/test_recovery.py: 60 + 20 epochs, batch 128, lr_latent 0.05, shared 8,
private 4). Per fit: the kNN-R^2 recovery summary of the encoder latents and of the default (averaged) latents.
Each fit runs in its own process with one thread, ``--jobs`` at a time; finished fits are kept in results.json, so
an interrupted run resumes. Writes RESULTS.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
from child import fits_main  # noqa: E402

RESULTS = HERE / "results.json"
PAGE = HERE / "RESULTS.md"
# name (the shared block's KL weight, then the private blocks' where it differs) -> VennCell options
VARIANTS = {
    "4": {"kl_weight": 4.0},
    "6": {"kl_weight": 6.0},
    "4, privates 6": {"kl_weight": 4.0, "private_kl_scale": 1.5},
    "4, privates 8": {"kl_weight": 4.0, "private_kl_scale": 2.0},
    "6, privates 4": {"kl_weight": 6.0, "private_kl_scale": 4.0 / 6.0},
    "8, privates 4": {"kl_weight": 8.0, "private_kl_scale": 0.5},
}
MODS = {"rna": 400, "protein": 80, "atac": 600}
# name -> (cells, training settings beyond the defaults)
SETTINGS = {
    "600 cells, defaults": (600, {}),
    "1,500 cells, defaults": (1500, {}),
    "1,500 cells, the recovery test's schedule": (
        1500,
        dict(stage1_epochs=60, stage2_epochs=20, batch_size=128, lr_latent=0.05),
    ),
}
KEYS = (
    "shared_recovery",
    "min_private_recovery",
    "leak_shared_into_private",
    "leak_private_into_shared",
)


def fit(setting: str, variant: str, seed: int) -> dict:
    import torch

    from venncell import VennCell, make_synthetic
    from venncell.analysis.recovery import evaluate_recovery

    torch.set_num_threads(1)
    n, train = SETTINGS[setting]
    mdata, truth = make_synthetic(n_cells=n, modalities=MODS, seed=seed)
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, seed=0, **VARIANTS[variant])
    model.train(progress_bar="none", num_threads=1, **train)
    out = {"setting": setting, "variant": variant, "seed": seed}
    for source in ("encoder", "average"):
        blocks = {"shared": model.get_latent_representation(source=source)}
        for m in model.specs:
            blocks[f"private:{m}"] = model.get_latent_representation(
                block=f"private:{m}", source=source
            )
        summary = evaluate_recovery(blocks, truth.blocks())["knn"]["summary"]
        out[source] = {k: float(summary[k]) for k in KEYS}
    return out


def write_page(results: list[dict]) -> None:
    import numpy as np

    lines = [
        "# KL weight 4 (the default) against 6, and against other weights on the shared or the private blocks: "
        "shared signal in the private blocks",
        "",
        "Command (from the repository root): `python experiments/kl_weight/run.py` (this page is written by it; "
        "what it measures is in its docstring). KL weights: the shared block's, then the private blocks' where they "
        "differ (`VennCell(mdata, kl_weight=s, private_kl_scale=p / s)`); every other setting the default "
        "except where the row names the recovery test's schedule. Mean ± sd over seeds (the generator's seed); "
        "the issue's bars: shared ≥ 0.95, every private ≥ 0.90, each leakage ≤ 0.05.",
        "",
        "| data and training | latents | KL weights | shared recovery | weakest private | leak shared into "
        "private | leak private into shared | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting in SETTINGS:
        for source in ("encoder", "average"):
            for variant in VARIANTS:
                rows = [
                    r[source]
                    for r in results
                    if r["setting"] == setting and r["variant"] == variant
                ]
                if not rows:
                    continue
                cells = " | ".join(
                    f"{np.mean([r[k] for r in rows]):.3f} ± {np.std([r[k] for r in rows]):.3f}"
                    for k in KEYS
                )
                lines.append(f"| {setting} | {source} | {variant} | {cells} | {len(rows)} |")
    lines += [
        "",
        "KL weight 6 puts more shared signal into the private blocks than 4 in every setting of the table, most "
        "with the recovery test's shorter schedule (the encoders' latents: 0.104 against 0.031, past the leakage "
        "bar of 0.05 the synthetic default must keep; `tests/analysis/test_recovery.py` allows this schedule "
        "0.15). Attribution would call more shared markers specific to a modality, so 4 stays the default; "
        "6's gains in bio conservation are in the integration harness (`venncell:kl_weight=6`).",
        "",
        "The leakage comes with the private blocks' weight: 6 on them alone (`4, privates 6`) leaks as much as 6 on "
        "every block, and 8 on them more. Raising the shared block's weight alone (`6, privates 4`, `8, privates 4`) "
        "keeps the leakage near the default's with the default schedule, and raises it less with the recovery "
        "test's; but in the harness it gains pbmc's bio conservation only within the seeds' spread "
        "(`venncell:kl_weight=6+private_kl_scale=0.6667`, `venncell:kl_weight=8+private_kl_scale=0.5`), so every "
        "block keeps 4.",
    ]
    PAGE.write_text("\n".join(lines) + "\n")


def jobs_for(results: list[dict], seeds: list[int]) -> list[tuple]:
    done = {(r["setting"], r["variant"], r["seed"]) for r in results}
    return [
        (s, v, seed)
        for s in SETTINGS
        for seed in seeds
        for v in VARIANTS
        if (s, v, seed) not in done
    ]


def main() -> None:
    fits_main(
        __file__,
        __doc__,
        "0,1",
        lambda setting, variant, seed: fit(setting, variant, int(seed)),
        jobs_for,
        RESULTS,
        write_page,
    )


if __name__ == "__main__":
    main()
