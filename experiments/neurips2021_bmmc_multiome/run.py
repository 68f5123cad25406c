"""NeurIPS 2021 BMMC Multiome starter (RNA + ATAC, 2 batches): training with and without batch_key.

Usage (from the repository root): python experiments/neurips2021_bmmc_multiome/run.py [--build-only]
Writes RESULTS.md and results.json next to this script; the logic lives in bmmc.py (shared with the CITE run).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bmmc import main  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    main(
        "multiome",
        "atac",
        "atac",
        "NeurIPS 2021 BMMC Multiome starter (RNA 600 genes + ATAC 600 peaks)",
    )
