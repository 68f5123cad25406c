"""Linear baseline: the spectral (generalised CCA + residual PCA) start alone, before any training.

Writes runs/spectral_init_only/metrics.json in the same layout as a training run, so collect.py can put it in
the table. Same data and model sizes as `venncell-train` with no arguments: `make_synthetic()` and
`VennCell(mdata, seed=0)` with their defaults.
"""

import json
from pathlib import Path

from venncell import VennCell, make_synthetic
from venncell.analysis.recovery import evaluate_recovery

mdata, truth = make_synthetic()
VennCell.setup_mudata(mdata)
model = VennCell(mdata, seed=0)
learned = {"shared": model.module.shared_table.weight.detach().numpy()}
learned |= {
    f"private:{k}": t.weight.detach().numpy() for k, t in model.module.private_tables.items()
}
rec = evaluate_recovery(learned, truth.blocks())
out = Path(__file__).resolve().parent / "runs" / "spectral_init_only"
out.mkdir(parents=True, exist_ok=True)
(out / "metrics.json").write_text(
    json.dumps(
        {
            "recovery": {"encoder": rec, "stage1": rec},
            "history": {"stage2": {}, "wall_time_s": {}},
        },
        indent=1,
    )
)
