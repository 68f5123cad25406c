"""One measurement per process: the child prints its record as one tagged JSON line, the parent reads it back.

A process of its own gives each measurement its own peak RSS, its own imports and a pinned thread count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TAG = "RECORD "


def emit(record: dict) -> None:
    """The child's side: print ``record`` where ``run_child`` finds it."""
    print(TAG + json.dumps(record), flush=True)


def run_child(
    args: list[str], threads: int = 1, timeout: float | None = None, env: dict | None = None
) -> dict:
    """``python <args>`` with ``threads`` CPU threads (and ``env`` added); the record it emitted.

    Raises ``RuntimeError`` with the end of its stderr when it fails or emits nothing, and
    ``subprocess.TimeoutExpired`` past ``timeout`` seconds.
    """
    pinned = {
        k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    proc = subprocess.run(
        [sys.executable, *args],
        env={**os.environ, **pinned, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(TAG)]
    if proc.returncode or not lines:
        raise RuntimeError(
            f"{' '.join(map(str, args))} failed (exit {proc.returncode}):\n{proc.stderr[-5000:]}"
        )
    return json.loads(lines[-1][len(TAG) :])


def run_each(script: str, items: list[str], jobs: int) -> None:
    """``python script --one <item>`` for every item, ``jobs`` at a time, one CPU thread each (an experiment's
    fits); exits naming the items whose process failed."""
    from concurrent.futures import ThreadPoolExecutor

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with ThreadPoolExecutor(jobs) as pool:
        codes = list(
            pool.map(
                lambda item: (
                    subprocess.run([sys.executable, script, "--one", item], env=env).returncode
                ),
                items,
            )
        )
    if any(codes):
        raise SystemExit(f"failed: {[i for i, c in zip(items, codes) if c]}")


def per_dataset_main(script: str, doc: str, datasets: str, one, page, run: Path) -> None:
    """The command line of an experiment with one child process per dataset: ``--datasets`` (comma-separated,
    default ``datasets``), ``--jobs``; each child (``--one <dataset>``) calls ``one(dataset)``, then the parent
    writes the page with ``page(datasets)``. ``run`` is the experiment's (gitignored) folder of saved fits."""
    import argparse

    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", default=datasets)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one dataset
    args = p.parse_args()
    run.mkdir(exist_ok=True)
    if args.one:
        one(args.one)
        return
    names = args.datasets.split(",")
    run_each(script, names, args.jobs)
    page(names)


def fits_main(
    script: str, doc: str, seeds: str, fit, jobs_for, results_path: Path, write_page
) -> None:
    """The command line of an experiment of small fits, each in its own process with one thread: ``--seeds``,
    ``--jobs``; a child (``--fit ARG...``) emits ``fit(*ARGS)`` (strings). The parent runs ``jobs_for(results,
    seeds)`` (each job a list of ``--fit`` strings, the fits not yet in ``results_path``), keeps each record as it
    finishes (an interrupted run resumes), then writes the page with ``write_page(results)``."""
    import argparse
    from concurrent.futures import ThreadPoolExecutor

    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", default=seeds)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--fit", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.fit:
        emit(fit(*args.fit))
        return
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    todo = jobs_for(results, [int(s) for s in args.seeds.split(",")])
    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(lambda job: run_child([script, "--fit", *map(str, job)]), todo):
            results.append(r)
            results_path.write_text(json.dumps(results, indent=1))
            print(r, flush=True)
    write_page(results)
