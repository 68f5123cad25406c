#!/usr/bin/env bash
# Sweep shared_dim x latent_noise (3 x 3 = 9 runs) on the synthetic default data
# (3000 cells, RNA 1000 + protein 100 + ATAC 1000 features, true shared dim 4, true private dim 2),
# with 40 stage-1 + 15 stage-2 epochs (the default trainer runs 100 + 40; shortened to fit a 2-core
# machine), one run after another on the CPU.
# Run from anywhere: `bash experiments/sweep_shared_dim_noise/run.sh`.
set -uo pipefail
cd "$(dirname "$0")/../.."
SWEEP_DIR=${SWEEP_DIR:-experiments/sweep_shared_dim_noise/multirun}

venncell-train -m \
  model.shared_dim=4,8,16 \
  model.latent_noise=0.05,0.1,0.2 \
  seed=0 \
  trainer.stage1_epochs=40 trainer.stage2_epochs=15 \
  trainer.progress_bar=none \
  logger=csv \
  objective=shared_recovery \
  hydra.callbacks.sweep_summary.direction=maximize \
  hydra.sweep.dir="$SWEEP_DIR" "$@"
status=$?

# Tables of every run (also when some runs failed): by recovery of the true shared factors, and by
# the held-out stage-2 loss (the Optuna search optimises stage2/val/recon by default).
venncell-sweep-summary "$SWEEP_DIR" --objective shared_recovery --direction maximize --quiet
venncell-sweep-summary "$SWEEP_DIR" --objective stage2/val/loss --direction minimize \
  --out "$SWEEP_DIR/by_stage2_val_loss" --quiet
# the committed copies (multirun/ is gitignored) and the table RESULTS.md shows
cp "$SWEEP_DIR/sweep_summary.csv" experiments/sweep_shared_dim_noise/sweep_summary.csv
cp "$SWEEP_DIR/by_stage2_val_loss/sweep_summary.csv" experiments/sweep_shared_dim_noise/sweep_summary_by_stage2_val_loss.csv
python experiments/sweep_shared_dim_noise/table.py
exit $status
