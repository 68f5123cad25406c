"""benchmarks/profile_step.py runs on the current code and its op counts separate what its rows switch off."""

import sys
from pathlib import Path

from venncell import VennCell
from venncell.data.synthetic import make_synthetic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from profile_step import lightning_ops, markdown, measure  # noqa: E402


def test_profile_step_rows():
    mdata, _ = make_synthetic(n_cells=300, modalities={"rna": 60, "protein": 20}, seed=0)
    VennCell.setup_mudata(mdata)
    rows = {r["name"]: r for r in measure(mdata, rounds=1, steps=2)}
    full = rows["full stage-1 step (defaults)"]
    assert full["ms"] > 0 and full["ops"]["optimisers"] > 0
    assert all(full["kernels"][p] <= full["ops"][p] for p in full["ops"])
    assert rows["without the optimiser steps"]["ops"]["optimisers"] == 0
    recon_only = rows["without consistency and HSIC (reconstruction only)"]
    for phase in ("loss", "backward"):
        assert recon_only["ops"][phase] < full["ops"][phase]
    fast = rows["`model=fast` (conf/model/fast.yaml)"]
    assert sum(fast["ops"].values()) < sum(full["ops"].values())
    # inside the package's training each batch holds training or held-out cells, so a step is one pass through the
    # model, not two (batches that mixed them cost 1.7 times the bare step)
    whole = lightning_ops(mdata)
    assert 0 < whole["ops"] < 1.4 * sum(full["ops"].values())
    assert markdown(list(rows.values()), whole).count("\n") == len(rows) + 3
