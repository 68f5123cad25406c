"""Linear baseline: the spectral (generalised CCA + residual PCA) start alone, before any training.

Writes runs/spectral_init_only/metrics.json in the same layout as a training run, so collect.py can put it in
the table. Same data as `venncell-train` with no arguments (conf/data/synthetic.yaml).
"""

import json
from pathlib import Path

from omegaconf import OmegaConf

from venncell import VennCell, make_synthetic
from venncell.analysis.recovery import evaluate_recovery

conf = Path(__file__).resolve().parents[2] / "conf"
d = OmegaConf.load(conf / "data" / "synthetic.yaml")
m = OmegaConf.load(conf / "model" / "venncell.yaml")
mdata, truth = make_synthetic(
    n_cells=d.n_cells,
    modalities=dict(d.modalities),
    shared_dim=d.true_shared_dim,
    private_dim=d.true_private_dim,
    n_clusters=d.n_clusters,
    seed=d.seed,
)
VennCell.setup_mudata(mdata)
model = VennCell(mdata, shared_dim=m.shared_dim, private_dim=m.private_dim, seed=0)
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
