"""Stage-1 time of the defaults on the 10k benchmark cells: this checkout against another one, back to back.

Usage (from the repository root, after `python benchmarks/throughput.py gen --sizes 10000`):
    git worktree add /tmp/before <commit>
    OMP_NUM_THREADS=1 python benchmarks/stage1_time.py --before /tmp/before
Each round trains both checkouts once, in child processes with one thread, in alternating order; the best round of
each is kept (the machine's load only ever adds time) and their ratio printed as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import json, sys, tempfile, torch, mudata as md
torch.set_num_threads(1)
from venncell import VennCell
mdata = md.read_h5mu(sys.argv[1])
VennCell.setup_mudata(mdata, {"rna": "rna", "protein": "protein"})
model = VennCell(mdata, seed=0)
with tempfile.TemporaryDirectory() as run_dir:
    h = model.train(run_dir=run_dir, stage1_epochs=int(sys.argv[2]), stage2_epochs=1, progress_bar="none")
print(json.dumps({"stage1_s": h["wall_time_s"]["stage1"]}))
"""


def stage1_seconds(root: Path, data: Path, epochs: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(data), str(epochs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["stage1_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="the other checkout's root")
    ap.add_argument("--data", type=Path, default=HERE / "data" / "synth_10000.h5mu")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    roots = {"this checkout": HERE.parent, "before": a.before.resolve()}
    best = {k: float("inf") for k in roots}
    for r in range(a.rounds):
        for name in list(roots)[:: 1 if r % 2 == 0 else -1]:
            best[name] = min(best[name], stage1_seconds(roots[name], a.data, a.epochs))
    print(f"| checkout | stage 1, {a.epochs} epochs, s (best of {a.rounds}) |")
    print("|---|---|")
    for name, s in best.items():
        print(f"| {name} | {s:.2f} |")
    print(f"| ratio, this / before | {best['this checkout'] / best['before']:.2f} |")


if __name__ == "__main__":
    main()
