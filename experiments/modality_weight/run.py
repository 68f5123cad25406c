"""Modality weights at the current defaults: each modality's reconstruction weighted by its number of features
(the default, ``modality_weights="features"``) or counted once (``equal``).

Usage (from the repository root; needs the harness's peers extra for scib-metrics):
    python experiments/modality_weight/run.py [--jobs 2] [--page-only]

Each modality's reconstruction term is a mean NLL per feature. ``features`` gives modality m the weight
n_m / min_k n_k, so that the NLLs add up as one likelihood over all features would (stage 1 is then the ELBO over
min_k n_k, with the KL weight on that scale); ``equal`` counts every modality once, whatever its width, which
weakens the wider modality against the narrower one. The BMMC Multiome starter (600 genes + 600 peaks) has the same
model under both and is left out. Fits and scores come from the integration harness (``harness_candidates``).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from harness_candidates import run_and_write  # noqa: E402

if __name__ == "__main__":
    run_and_write(
        HERE,
        "Modality weights: by feature count (default) or each modality once",
        "The defaults weight each modality's mean NLL per feature by its number of features over the smallest "
        "modality's; the candidate counts every modality once (`modality_weights=equal`). Everything else "
        "is the package defaults.",
        ["synthetic", "pbmc10k_cite", "bmmc_cite", "scicar"],
        {"venncell:modality_weights=equal": "each modality once (`modality_weights=equal`)"},
    )
