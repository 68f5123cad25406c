"""Where a stage-1 step's time goes: one 128-cell step on the benchmark's 10k cells, with terms switched off in turn.

Usage: OMP_NUM_THREADS=1 python benchmarks/profile_step.py   (after `python benchmarks/throughput.py gen --sizes 10000`)
Writes profile_step.txt next to this script. CPU time per step (best of 16 interleaved rounds of 20 steps), no Lightning:
the differences between rows are the cost of the term switched off.
"""

from __future__ import annotations

import time
from pathlib import Path

import mudata as md
import numpy as np
import torch

from venncell import VennCell
from venncell.module.config import PRESETS
from venncell.nn.likelihoods import Likelihood, NegativeBinomial
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
    batches = [
        model.data.get(np.sort(rng.choice(mdata.n_obs, 128, replace=False))) for _ in range(24)
    ]

    def step(b, i: int, optimise: bool) -> None:
        loss = mod.stage1_loss(b, leakage=mod.leakage_factor(i))["loss"]
        nets.zero_grad()
        lat.zero_grad()
        loss.backward()
        if optimise:
            torch.nn.utils.clip_grad_norm_(mod.network_parameters(), 10.0)
            nets.step()
            lat.step()

    sparse_nb = NegativeBinomial.cell_nll
    # name -> (config changes, NB training term, optimiser steps); every row starts from the defaults
    variants = {
        "full stage-1 step (defaults)": ({}, sparse_nb, True),
        "same, NB through the dense per-feature formula (before the sparse path)": (
            {},
            Likelihood.cell_nll,
            True,
        ),
        "consistency on 32 of the 128 cells": ({"consistency_cells": 32}, sparse_nb, True),
        "`model=fast` (conf/model/fast.yaml)": (PRESETS["fast"], sparse_nb, True),
        "without the optimiser steps": ({}, sparse_nb, False),
        "without the consistency encoders": ({"consistency_weight": 0.0}, sparse_nb, True),
        "without consistency and HSIC (reconstruction only)": (
            {"consistency_weight": 0.0, "independence_weight": 0.0},
            sparse_nb,
            True,
        ),
    }
    defaults = {
        k: getattr(cfg, k)
        for k in (
            "consistency_cells",
            "consistency_weight",
            "independence_weight",
            "leakage_every",
        )
    }

    def ms_per_step(changes: dict, nb_term, optimise: bool) -> float:
        for k, v in {**defaults, **changes}.items():
            setattr(cfg, k, v)
        NegativeBinomial.cell_nll = nb_term
        for i, b in enumerate(batches[:3]):
            step(b, i, optimise)
        t = time.process_time()
        for i, b in enumerate(batches[3:]):
            step(b, i, optimise)
        return (time.process_time() - t) / (len(batches) - 3) * 1e3

    # Rounds over every row in a fresh random order, best of 16 per row: the machine's load drifts, and interleaving
    # exposes every row to it alike.
    best = {name: float("inf") for name in variants}
    order = list(variants)
    for _ in range(16):
        rng.shuffle(order)
        for name in order:
            best[name] = min(best[name], ms_per_step(*variants[name]))
    NegativeBinomial.cell_nll = sparse_nb
    rows = list(best.items())
    t = time.process_time()
    for _ in range(30):
        model.data.get(np.sort(rng.choice(mdata.n_obs, 128, replace=False)))
    rows.append(
        (
            "batch densification (data.get), not in the rows above",
            (time.process_time() - t) / 30 * 1e3,
        )
    )
    lines = ["| step | CPU ms per 128-cell step |", "|---|---|"] + [
        f"| {n} | {v:.1f} |" for n, v in rows
    ]
    (HERE / "profile_step.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
