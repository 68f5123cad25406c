"""Where a stage-1 step's time goes: one 128-cell step on the benchmark's 10k cells, with terms switched off in turn.

Usage: OMP_NUM_THREADS=1 python benchmarks/profile_step.py   (after `python benchmarks/throughput.py gen --sizes 10000`)
Writes profile_step.txt next to this script. No Lightning; the package defaults unless a row says otherwise.

- CPU time per step: best of ``--rounds`` interleaved rounds of 21 steps; the differences between rows are the cost
  of the term switched off.
- Torch ops per step inside the package's Lightning training (the last line), the mean over an epoch: each batch
  holds training cells or held-out cells (whose pass runs with the networks frozen), never both.
- Torch ops per step, by phase (loss, backward, optimisers with the gradient clip), counted at torch's dispatcher
  over three consecutive steps (``model=fast`` does the leakage work on one batch in three). Unlike time, the count
  does not move with the machine's load. On a GPU, where a step is host-bound, every op that is not a view is at
  least one kernel launch: the count is what CUDA graphs or fusion would have to remove.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import mudata as md
import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from venncell import VennCell
from venncell.module.config import PRESETS
from venncell.nn.likelihoods import Likelihood, NegativeBinomial
from venncell.train.plans import fused_adam
from venncell.train.row_adam import RowAdam

HERE = Path(__file__).resolve().parent
PHASES = ("loss", "backward", "optimisers")
# consecutive steps whose ops are averaged: model=fast does its leakage work on one batch in three
COUNTED_STEPS = 3


class _OpCounter(TorchDispatchMode):
    """Counts the ops torch dispatches while active, under ``phase``: all of them and those that are not views."""

    def __init__(self):
        super().__init__()
        self.phase = "loss"
        self.ops: Counter = Counter()
        self.kernels: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[self.phase] += 1
        if not func.is_view:
            self.kernels[self.phase] += 1
        return func(*args, **(kwargs or {}))


def measure(mdata: md.MuData, rounds: int = 16, steps: int = 21) -> list[dict]:
    """One row per variant: ``name``, ``ms`` (best CPU-ms per step) and per phase ``ops`` / ``kernels`` per step."""
    model = VennCell(mdata, validation_fraction=0.0)
    mod, cfg = model.module, model.module.cfg
    nets = fused_adam(torch.optim.Adam, mod.network_parameters(), lr=1e-3)
    lat = RowAdam(mod.latent_parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    batches = [
        model.data.get(np.sort(rng.choice(mdata.n_obs, 128, replace=False)))
        for _ in range(steps + 3)
    ]

    def step(b, i: int, optimise: bool, counter: _OpCounter | None = None) -> None:
        def phase(name: str) -> None:
            if counter is not None:
                counter.phase = name

        phase("loss")
        loss = mod.stage1_loss(b, leakage=mod.leakage_factor(i)).loss
        phase("backward")
        nets.zero_grad()
        lat.zero_grad()
        loss.backward()
        if optimise:
            phase("optimisers")
            torch.nn.utils.clip_grad_norm_(mod.network_parameters(), 10.0)
            nets.step()
            lat.step()

    sparse_nb = NegativeBinomial.cell_nll
    # name -> (config changes, NB training term, optimiser steps); every row starts from the defaults
    variants = {
        "full stage-1 step (defaults)": ({}, sparse_nb, True),
        "same, NB through the dense per-feature formula": ({}, Likelihood.cell_nll, True),
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
    changed = {k for changes, _, _ in variants.values() for k in changes}
    defaults = {k: getattr(cfg, k) for k in changed}

    def configure(changes: dict, nb_term) -> None:
        for k, v in {**defaults, **changes}.items():
            setattr(cfg, k, v)
        NegativeBinomial.cell_nll = nb_term

    def ms_per_step(changes: dict, nb_term, optimise: bool) -> float:
        configure(changes, nb_term)
        for i, b in enumerate(batches[:3]):
            step(b, i, optimise)
        t = time.process_time()
        for i, b in enumerate(batches[3:]):
            step(b, i, optimise)
        return (time.process_time() - t) / (len(batches) - 3) * 1e3

    def ops_per_step(changes: dict, nb_term, optimise: bool) -> _OpCounter:
        configure(changes, nb_term)
        step(batches[0], 0, optimise)  # optimiser state made outside the count
        counter = _OpCounter()
        with counter:
            for i, b in enumerate(batches[:COUNTED_STEPS]):
                step(b, i, optimise, counter)
        return counter

    try:
        counts = {name: ops_per_step(*v) for name, v in variants.items()}
        # Rounds over every row in a fresh random order, best of the rounds per row: the machine's load drifts, and
        # interleaving exposes every row to it alike.
        best = {name: float("inf") for name in variants}
        order = list(variants)
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                best[name] = min(best[name], ms_per_step(*variants[name]))
    finally:
        configure({}, sparse_nb)
    rows = [
        {
            "name": name,
            "ms": best[name],
            "ops": {p: counts[name].ops[p] / COUNTED_STEPS for p in PHASES},
            "kernels": {p: counts[name].kernels[p] / COUNTED_STEPS for p in PHASES},
        }
        for name in variants
    ]
    t = time.process_time()
    for _ in range(30):
        model.data.get(np.sort(rng.choice(mdata.n_obs, 128, replace=False)))
    rows.append(
        {
            "name": "batch densification (data.get), not in the rows above",
            "ms": (time.process_time() - t) / 30 * 1e3,
        }
    )
    return rows


class _CountSteps(pl.Callback):
    """Counts the ops of stage-1 training steps from the third on (the first ones warm caches and optimiser state)."""

    def __init__(self):
        self.counter = _OpCounter()
        self.steps = 0

    def _counting(self, pl_module, batch_idx: int) -> bool:
        return pl_module.stage == 1 and batch_idx >= 2

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._counting(pl_module, batch_idx):
            self.counter.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._counting(pl_module, batch_idx):
            self.counter.__exit__(None, None, None)
            self.steps += 1


def lightning_ops(mdata: md.MuData) -> dict:
    """Ops per stage-1 step of ``VennCell.train`` with the defaults, the mean over one epoch's steps (a batch holds
    training cells or held-out cells, and the two kinds of step differ)."""
    count = _CountSteps()
    with tempfile.TemporaryDirectory() as run_dir:  # its checkpoints are not kept
        VennCell(mdata).train(
            run_dir=run_dir,
            stage1_epochs=1,
            stage2_epochs=1,
            progress_bar="none",
            trainer_kwargs={"callbacks": [count], "logger": False},
        )
    return {
        "ops": sum(count.counter.ops.values()) / count.steps,
        "kernels": sum(count.counter.kernels.values()) / count.steps,
    }


def markdown(rows: list[dict], in_lightning: dict | None = None) -> str:
    head = "| step | CPU ms | torch ops (not views): loss | backward | optimisers | total |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        if "ops" not in r:
            lines.append(f"| {r['name']} | {r['ms']:.1f} | – | – | – | – |")
            continue
        cells = [f"{r['ops'][p]:.0f} ({r['kernels'][p]:.0f})" for p in PHASES]
        total = f"{sum(r['ops'].values()):.0f} ({sum(r['kernels'].values()):.0f})"
        lines.append(f"| {r['name']} | {r['ms']:.1f} | " + " | ".join(cells) + f" | {total} |")
    if in_lightning:
        lines.append(
            f"| a default step inside `VennCell.train`, mean over an epoch (training or held-out cells) | – | – | – | – "
            f"| {in_lightning['ops']:.0f} ({in_lightning['kernels']:.0f}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE / "data" / "synth_10000.h5mu")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--out", type=Path, default=HERE / "profile_step.txt")
    a = ap.parse_args()
    torch.set_num_threads(1)
    mdata = md.read_h5mu(a.data)
    VennCell.setup_mudata(mdata, {"rna": "rna", "protein": "protein"})
    text = markdown(measure(mdata, rounds=a.rounds), lightning_ops(mdata))
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
