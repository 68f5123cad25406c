"""A run on a busy machine: `venncell-train` with the default thread policy, alone and next to two CPU-bound
processes, back to back in one script; the ratio of the two wall times is the result.

    python benchmarks/busy_machine.py [--rounds 2] [--cells 1000] [--epochs 10]
    python benchmarks/busy_machine.py --rounds 1 --cells 0 --epochs 0 --policy-only   # the full default run

``--cells 0`` / ``--epochs 0`` keep the package defaults (3,000 cells; 100 + 40 epochs); ``--policy-only`` skips the
contrast with a thread per core.

The fair share of a 2-core machine with two other busy processes is 2/3 of a core to 2 cores, so a ratio up to
~2.5 is what sharing costs; torch's own default (a thread per core) made such a run 18x slower. The same pair
is also timed with `OMP_NUM_THREADS` unset and `trainer.num_threads=<cores>` (the old behaviour) for contrast.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time


def burn(stop):
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def run_train(cells: int, epochs: int, extra: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    with tempfile.TemporaryDirectory() as out:
        size = [f"data.n_cells={cells}"] if cells else []
        if epochs:
            size += [
                f"trainer.stage1_epochs={epochs}",
                f"trainer.stage2_epochs={max(1, epochs // 4)}",
            ]
        cmd = [
            "venncell-train",
            *size,
            "trainer.progress_bar=none",
            "logger=none",
            f"hydra.run.dir={out}",
            *extra,
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cells", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--policy-only", action="store_true")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    settings = {
        "default policy": [],
        f"num_threads={cores} (torch's default)": [f"trainer.num_threads={cores}"],
    }
    if args.policy_only:
        settings = {"default policy": []}
    print(
        f"{cores} cores; {args.cells or 'default'} cells, {args.epochs or 'default'} stage-1 epochs; load before: "
        f"{os.getloadavg()[0]:.1f}"
    )
    print("| setting | round | idle (s) | two busy processes (s) | ratio |\n|---|---|---|---|---|")
    for name, extra in settings.items():
        for r in range(args.rounds):
            idle = run_train(args.cells, args.epochs, extra)
            stop = mp.Event()
            burners = [mp.Process(target=burn, args=(stop,)) for _ in range(2)]
            for b in burners:
                b.start()
            time.sleep(5)  # let the load average see them
            busy = run_train(args.cells, args.epochs, extra)
            stop.set()
            for b in burners:
                b.join()
            print(f"| {name} | {r} | {idle:.1f} | {busy:.1f} | {busy / idle:.2f} |", flush=True)
            time.sleep(30)  # let the load average fall back


if __name__ == "__main__":
    sys.exit(main())
