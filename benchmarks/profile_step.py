"""Where a stage-1 step's time goes: one 128-cell step on the benchmark's 10k cells, with terms switched off in turn.

Usage: OMP_NUM_THREADS=1 python benchmarks/profile_step.py   (after `python benchmarks/throughput.py gen --sizes 10000`)
Writes profile_step.txt next to this script. CPU time per step (min of 3 repeats of 30 steps), no Lightning:
the differences between rows are the cost of the term switched off.
"""

from __future__ import annotations

import time
from pathlib import Path

import mudata as md
import numpy as np
import torch

from venncell import VennCell
from venncell.train.plans import fused_adam
from venncell.train.row_adam import RowAdam

HERE = Path(__file__).resolve().parent


def main() -> None:
    torch.set_num_threads(1)
    mdata = md.read_h5mu(HERE / "data" / "synth_10000.h5mu")
    VennCell.setup_mudata(mdata, {"rna": "rna", "protein": "protein"})
    model = VennCell(mdata, shared_dim=8, private_dim=4, validation_fraction=0.0)
    mod, cfg = model.module, model.module.cfg
    nets = fused_adam(torch.optim.Adam, mod.network_parameters(), lr=1e-3)
    lat = RowAdam(mod.latent_parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    batches = [model.data.get(np.sort(rng.choice(mdata.n_obs, 128, replace=False))) for _ in range(33)]

    def step(b, optimise: bool) -> None:
        loss = mod.stage1_loss(b)["loss"]
        nets.zero_grad()
        lat.zero_grad()
        loss.backward()
        if optimise:
            torch.nn.utils.clip_grad_norm_(mod.network_parameters(), 10.0)
            nets.step()
            lat.step()

    def ms_per_step(optimise: bool = True) -> float:
        for b in batches[:3]:
            step(b, optimise)
        best = float("inf")
        for _ in range(3):
            t = time.process_time()
            for b in batches[3:]:
                step(b, optimise)
            best = min(best, (time.process_time() - t) / (len(batches) - 3) * 1e3)
        return best

    rows = [("full stage-1 step (defaults)", ms_per_step()), ("without the optimiser steps", ms_per_step(False))]
    cfg.consistency_weight = 0.0
    rows.append(("without the consistency encoders", ms_per_step()))
    cfg.independence_weight = 0.0
    rows.append(("without consistency and HSIC (reconstruction only)", ms_per_step()))
    t = time.process_time()
    for _ in range(30):
        model.data.get(np.sort(rng.choice(mdata.n_obs, 128, replace=False)))
    rows.append(("batch densification (data.get), not in the rows above", (time.process_time() - t) / 30 * 1e3))
    lines = ["| step | CPU ms per 128-cell step |", "|---|---|"] + [f"| {n} | {v:.1f} |" for n, v in rows]
    (HERE / "profile_step.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
