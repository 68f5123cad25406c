"""Leakage-control weights at the current defaults: stronger, and off.

Usage (from the repository root; needs the harness's peers extra for scib-metrics):
    python experiments/leakage_weight/run.py [--jobs 2] [--page-only]

Stage 1's leakage control has two terms: consistency (each modality's encoder must predict the shared latent from
that modality alone, weight ``consistency_weight``, default 0.03) and independence (normalised HSIC between the
shared block and each private one, ``independence_weight``, default 0.003). The candidates: both about three
times stronger (0.1, 0.01) and both off (0, 0: APOLLO's objective, still from the spectral start). Fits and
scores come from the integration harness (``harness_candidates``).
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
        "Leakage-control weights: the defaults, stronger, and off",
        "The defaults: consistency 0.03, independence 0.003. Candidates: both about three times stronger "
        "(0.1, 0.01), and both off (0, 0). Everything else is the package defaults.",
        ["synthetic", "bmmc_cite", "bmmc_multiome", "scicar"],
        {
            "venncell:consistency_weight=0.1+independence_weight=0.01": "stronger (0.1, 0.01)",
            "venncell:consistency_weight=0+independence_weight=0": "off (0, 0)",
        },
    )
