"""Do latent dimensions the data do not need collapse to the prior? Per-dimension KL(q || N(0, I)) of the stage-1
posteriors and the spread of the encoders' latents, one VennCell fit per dataset (seed 0, the package defaults).

Usage (from the repository root; needs the harness's datasets, as benchmarks/integration does):
    python experiments/latent_dims/run.py [--datasets synthetic,bmmc_cite,...] [--jobs 2]

For each block (shared, private:<m>) and each of its dimensions: the KL of the training cells' posteriors,
averaged over those cells (0 = the prior: the dimension holds nothing), and the standard deviation over all cells
of the encoders' latent (what ``get_latent_representation`` returns). The built-in generator's true sizes are
known (4 shared dimensions, 2 per private block), so its rows show whether the surplus dimensions empty. A finished
dataset is not refitted (``run/`` beside this script, gitignored); writes ``RESULTS.md``.
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
from child import per_dataset_main  # noqa: E402

DEFAULT_DATASETS = "synthetic,pbmc10k_cite,bmmc_cite,bmmc_multiome,scicar"


def one(name: str) -> None:
    """Fit one dataset (seed 0, one thread) and save each block's per-dimension KL and spread (once)."""
    if (RUN / f"{name}.json").exists():
        return
    from datasets import DATASETS

    model, _ = DATASETS[name].trained_defaults(seed=0)
    module, train = model.module, np.asarray(model.is_train)
    out = {}
    for block in ["shared", *(f"private:{m}" for m in model.specs)]:
        key = block.split(":", 1)[-1]
        table = module.shared_table if block == "shared" else module.private_tables[key]
        mu = table.weight.detach().numpy()[train]
        # the same bounds as the model's own reading of the log-variances
        lv = module.logvar_tables[key].weight.detach().clamp(-12.0, 4.0).numpy()[train]
        kl = (0.5 * (mu**2 + np.exp(lv) - 1.0 - lv)).mean(0)
        sd = model.get_latent_representation(block=block).std(0)
        out[block] = {"kl": kl.round(3).tolist(), "sd": sd.round(3).tolist()}
    (RUN / f"{name}.json").write_text(json.dumps(out, indent=1))


def page(names: list[str]) -> None:
    lines = [
        "# Latent dimensions: do the ones the data do not need collapse to the prior?",
        "",
        "Command (from the repository root): `python experiments/latent_dims/run.py`. One VennCell fit per "
        "dataset (seed 0, the package defaults: shared block 8, private blocks 4, variational latents, KL weight "
        "1); per dimension of each block, the KL of the training cells' stage-1 posteriors (mean over cells, "
        "nats) and the standard deviation of the encoders' latents over all cells.",
        "",
        "Reading: no dimension collapses. On the built-in generator (true sizes: 4 shared, 2 per private block) "
        "the surplus dimensions hold less (KL 0.8–1.4 against 1.8–2.4, spread 0.66–0.93 against 1.26–1.61) but "
        "stay far from the prior (KL 0), so they add spread that carries no factor to every distance in the "
        "joint embedding; on the real sets every dimension holds a KL of 0.5 or more. So the KL cannot size the "
        "blocks after the fact, and larger blocks add such dimensions: private blocks of 8 lowered the "
        "synthetic set's bio conservation by 0.125 in the integration harness.",
        "",
    ]
    for name in names:
        path = RUN / f"{name}.json"
        if not path.exists():
            continue
        blocks = json.loads(path.read_text())
        lines += [
            f"## {name}",
            "",
            "| block | KL per dimension | spread per dimension |",
            "|---|---|---|",
        ]
        lines += [
            f"| {b} | {', '.join(f'{v:.2f}' for v in r['kl'])} | {', '.join(f'{v:.2f}' for v in r['sd'])} |"
            for b, r in blocks.items()
        ]
        lines += [""]
    (HERE / "RESULTS.md").write_text("\n".join(lines))


def main() -> None:
    per_dataset_main(__file__, __doc__, DEFAULT_DATASETS, one, page, RUN)


if __name__ == "__main__":
    main()
