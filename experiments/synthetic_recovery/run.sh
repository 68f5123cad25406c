#!/usr/bin/env bash
# Synthetic ground truth (3 modalities, the built-in default): VennCell vs the plain APOLLO recipe, same data,
# same seed, same epochs. Writes runs under experiments/synthetic_recovery/runs/ and the table RESULTS.md.
# runs/venncell_before (committed, not rerun) is the defaults' run at commit 6b37c08, the 'before' column.
set -euo pipefail
cd "$(dirname "$0")"
venncell-train hydra.run.dir=runs/venncell
venncell-train model=apollo hydra.run.dir=runs/apollo
python init_baseline.py
python collect.py runs/venncell runs/venncell_before runs/apollo runs/spectral_init_only > RESULTS.md
cat RESULTS.md
