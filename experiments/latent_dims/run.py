"""Do latent dimensions the data do not need collapse to the prior, and does the KL weight shrink them?
Per-dimension KL(q || N(0, I)) of the stage-1 posteriors and the spread of the encoders' latents, one VennCell
fit per dataset and KL weight (seed 0, otherwise the package defaults).

Usage (from the repository root; needs the harness's datasets, as benchmarks/integration does):
    python experiments/latent_dims/run.py [--datasets synthetic,bmmc_cite,...] [--jobs 2]

For each block (shared, private:<m>) and each of its dimensions: the KL of the training cells' posteriors,
averaged over those cells (0 = the prior: the dimension holds nothing), and the standard deviation over all cells
of the encoders' latent (what ``get_latent_representation`` returns). The built-in generator's true sizes are
known (4 shared dimensions, 2 per private block), so its rows show whether the surplus dimensions empty. A finished
fit is not redone (``run/`` beside this script, gitignored); writes ``RESULTS.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUN = HERE / "run"
sys.path.insert(0, str(ROOT / "benchmarks" / "integration"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(HERE.parent))
from baselines import write_results_md  # noqa: E402
from child import per_dataset_main  # noqa: E402

DEFAULT_DATASETS = "synthetic,pbmc10k_cite,bmmc_cite,bmmc_multiome,scicar"
KL_WEIGHTS = (1, 4)  # the default until 2026-12-05, and since


def one(name: str) -> None:
    """Fit one dataset at each KL weight (seed 0, one thread); save each block's per-dimension KL and spread."""
    from datasets import DATASETS

    for w in KL_WEIGHTS:
        path = RUN / f"{name}_kl{w}.json"
        if path.exists():
            continue
        model, _ = DATASETS[name].trained_defaults(seed=0, kl_weight=float(w))
        module, train = model.module, np.asarray(model.is_train)
        out = {}
        for block in ["shared", *(f"private:{m}" for m in model.specs)]:
            key = block.split(":", 1)[-1]
            table = module.shared_table if block == "shared" else module.private_tables[key]
            mu = table.weight.detach().numpy()[train]
            # the same bounds as the model's own reading of the log-variances
            lv = module.logvar_tables[key].weight.detach().clamp(-12.0, 4.0).numpy()[train]
            kl = (0.5 * (mu**2 + np.exp(lv) - 1.0 - lv)).mean(0)
            sd = model.get_latent_representation(block=block, source="encoder").std(0)
            out[block] = {"kl": kl.round(3).tolist(), "sd": sd.round(3).tolist()}
        path.write_text(json.dumps(out, indent=1))


def _row(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def page(names: list[str]) -> None:
    lines = [
        "# Latent dimensions: do the ones the data do not need collapse to the prior?",
        "",
        "Command (from the repository root): `python experiments/latent_dims/run.py`. One VennCell fit per "
        "dataset and KL weight (seed 0; otherwise the package defaults: shared block 8, private blocks 4, "
        "variational latents); per dimension of each block, the KL of the training cells' stage-1 posteriors "
        "(mean over cells, nats) and the standard deviation of the encoders' latents over all cells. KL weight 1 "
        "was the default until 2026-12-05, 4 since.",
        "",
        "The reading is below the tables.",
        "",
    ]
    for name in names:
        fits = {w: RUN / f"{name}_kl{w}.json" for w in KL_WEIGHTS}
        if not all(p.exists() for p in fits.values()):
            continue
        got = {w: json.loads(p.read_text()) for w, p in fits.items()}
        head = " | ".join(f"KL, weight {w}" for w in KL_WEIGHTS)
        head += " | " + " | ".join(f"spread, weight {w}" for w in KL_WEIGHTS)
        lines += [f"## {name}", "", f"| block | {head} |", "|---|" + "---|" * 2 * len(KL_WEIGHTS)]
        for block in got[KL_WEIGHTS[0]]:
            cells = [_row(got[w][block]["kl"]) for w in KL_WEIGHTS]
            cells += [_row(got[w][block]["sd"]) for w in KL_WEIGHTS]
            lines.append(f"| {block} | " + " | ".join(cells) + " |")
        lines += [""]
    write_results_md(HERE / "RESULTS.md", "\n".join(lines))


def main() -> None:
    per_dataset_main(__file__, __doc__, DEFAULT_DATASETS, one, page, RUN)


if __name__ == "__main__":
    main()
