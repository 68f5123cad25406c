"""NeurIPS 2021 BMMC CITE-seq starter (RNA + ADT, 2 batches): training with and without batch_key.

Usage (from the repository root): python experiments/neurips2021_bmmc_cite/run.py [--build-only]
Writes RESULTS.md and results.json next to this script; the logic lives in
experiments/neurips2021_bmmc_multiome/bmmc.py (shared with the Multiome run).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "neurips2021_bmmc_multiome"))
from bmmc import main  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    main(
        "cite", "adt", "protein", "NeurIPS 2021 BMMC CITE-seq starter (RNA 1,000 genes + 134 ADT)"
    )
