"""Throughput and memory of VennCell (in memory and backed) against totalVI, on synthetic CITE-seq-like data.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/throughput.py all

writes ``benchmarks/RESULTS.md`` (and ``benchmarks/results.json``). Data go to ``benchmarks/data/``
(gitignored). Every measurement runs in its own subprocess so that peak RSS belongs to one method.
totalVI (scvi-tools) is only imported here: it is never a VennCell dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from child import emit, run_child  # noqa: E402

DATA = HERE / "data"
N_GENES, N_PROTEINS, SHARED, PRIVATE = 2000, 100, 4, 2
BATCH = 128
STEPS = 60  # timed steps per stage (after WARMUP untimed ones)
WARMUP = 5


# VennCell variants: the defaults, and the `model=fast` preset (leakage control on every 3rd batch, consistency on 32 cells)
VARIANTS = {
    "venncell": None,
    "venncell-fast": "fast",
}  # name -> conf/model preset (None: the defaults)


def _variant_kwargs(method: str) -> dict:
    # imported here, not at the top: the totalVI rows' processes (and their peak RSS) must not load venncell
    from venncell.module.config import PRESETS

    return PRESETS[VARIANTS[method]] if VARIANTS[method] else {}


# ------------------------------------------------------------------ data
def _generate(n: int, seed: int = 0):
    """Poisson counts from known factors: log-rates linear in (shared, private) factors. RNA is ~10 %
    non-zero like droplet data; protein is dense. Chunked so 100k cells stay well under 1 GB."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    w = {
        "rna": rng.normal(0, 0.35, (SHARED + PRIVATE, N_GENES)),
        "protein": rng.normal(0, 0.45, (SHARED + PRIVATE, N_PROTEINS)),
    }
    base = {
        "rna": rng.normal(np.log(0.07), 0.8, N_GENES),
        "protein": rng.normal(3.0, 0.7, N_PROTEINS),
    }
    zs = rng.normal(size=(n, SHARED)).astype(np.float32)
    zp = {m: rng.normal(size=(n, PRIVATE)).astype(np.float32) for m in w}
    lib = rng.lognormal(0, 0.3, n)
    out = {m: [] for m in w}
    for s in range(0, n, 20_000):
        e = min(n, s + 20_000)
        for m in w:
            eta = base[m] + np.c_[zs[s:e], zp[m][s:e]] @ w[m] + np.log(lib[s:e])[:, None]
            out[m].append(sp.csr_matrix(rng.poisson(np.exp(eta)).astype(np.float32)))
    return {m: sp.vstack(v, format="csr") for m, v in out.items()}, zs, zp


def _write(path: Path, x: dict, zs, zp) -> None:
    import anndata as ad
    import mudata as md
    import pandas as pd

    # object dtype: pandas 3's default string arrays are not written by anndata 0.12
    names = pd.Index([f"c{i}" for i in range(x["rna"].shape[0])], dtype=object)
    mods = {
        m: ad.AnnData(
            x[m],
            obs=pd.DataFrame(index=names),
            var=pd.DataFrame(
                index=pd.Index([f"{m}_{j}" for j in range(x[m].shape[1])], dtype=object)
            ),
        )
        for m in x
    }
    mdata = md.MuData(mods)
    mdata.obsm["true_shared"] = zs
    for m in zp:
        mdata.obsm[f"true_private_{m}"] = zp[m]
    tmp = path.with_suffix(".tmp.h5mu")
    mdata.write(tmp)
    tmp.rename(path)


def data_path(n: int) -> Path:
    return DATA / f"synth_{n}.h5mu"


def generate(sizes) -> None:
    """10k and 100k are generated; 1M is the 100k cells tiled 10x (same per-cell cost, 10x faster to make)."""
    import scipy.sparse as sp

    DATA.mkdir(exist_ok=True)
    for n in sorted(s for s in sizes if s <= 100_000):
        if not data_path(n).exists():
            t = time.perf_counter()
            _write(data_path(n), *_generate(n, seed=n))
            print(f"generated {n} cells in {time.perf_counter() - t:.0f} s", flush=True)
    for n in (s for s in sizes if s > 100_000):
        if not data_path(n).exists():
            t = time.perf_counter()
            x, zs, zp = _generate(100_000, seed=100_000)
            k = n // 100_000
            _write(
                data_path(n),
                {m: sp.vstack([v] * k, format="csr") for m, v in x.items()},
                np.tile(zs, (k, 1)),
                {m: np.tile(v, (k, 1)) for m, v in zp.items()},
            )
            print(f"tiled {n} cells in {time.perf_counter() - t:.0f} s", flush=True)


# ------------------------------------------------------------------ timing
def _timer():
    from lightning.pytorch.callbacks import Callback

    class Timer(Callback):
        """Cells/s over steps WARMUP.. end of a stage (Lightning start-up and warm-up excluded)."""

        def __init__(self):
            self.stages: dict = {}

        def on_train_start(self, trainer, pl_module):
            self._t0, self._n = None, 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == WARMUP:
                _sync()  # on a GPU, start the clock once the warm-up steps' kernels have finished
                self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self._t0 is not None:
                self._n += _batch_cells(batch)

        def on_train_epoch_end(
            self, trainer, pl_module
        ):  # one epoch per stage; before its checkpoint
            _sync()
            dt = time.perf_counter() - self._t0
            cpu = time.process_time() - self._c0
            name = f"stage{getattr(pl_module, 'stage', 0)}"
            state = 0
            for opt in trainer.optimizers:
                for st in opt.state.values():
                    state += sum(
                        v.numel() * v.element_size() for v in st.values() if hasattr(v, "numel")
                    )
            # cells per CPU-second is the robust number on a shared machine: wall time includes waiting for a core
            self.stages[name] = {
                "cells_per_s": self._n / dt,
                "cells_per_cpu_s": self._n / cpu,
                "timed_cells": self._n,
                "optimiser_state_MB": state / 2**20,
                **_gpu_memory(),
            }

    return Timer()


def _batch_cells(batch) -> int:
    """Cells in a training batch: VennCell's carry their row indices (``idx``; stage 1's come as a pair, training
    and held-out cells), scvi-tools' a tensor per field."""
    if isinstance(batch, tuple):
        return sum(_batch_cells(b) for b in batch if b is not None)
    if hasattr(batch, "idx"):
        return len(batch.idx)
    if isinstance(batch, dict):
        return next(len(v) for v in batch.values() if hasattr(v, "shape") and len(v.shape))
    raise TypeError(f"unknown batch type {type(batch)}")


def _pin(accelerator: str, workers: int) -> bool:
    # rows with workers on an accelerator also page-lock their batches (both methods): the GPU rows were run so
    return accelerator != "cpu" and workers > 0


def _cuda_in_use() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _sync() -> None:
    if _cuda_in_use():
        import torch

        torch.cuda.synchronize()


def _gpu_memory() -> dict:
    if not _cuda_in_use():
        return {}
    import torch

    return {"gpu_peak_MB": torch.cuda.max_memory_allocated() / 2**20}


def _read(n: int, backed: bool = False):
    """The benchmark's MuData. 1M cells, when not generated on disk, are the 100k file tiled 10x in memory (the
    GPU run does this: writing a 2.8 GB file costs more device time than the rows it feeds)."""
    import mudata as md

    if data_path(n).exists() or backed or n <= 100_000:
        return md.read_h5mu(data_path(n), backed=backed)
    if n % 100_000:
        raise SystemExit(
            f"{n} cells: only multiples of 100,000 are tiled from the 100k file; generate it with `gen`"
        )
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    base, k = md.read_h5mu(data_path(100_000)), n // 100_000
    names = pd.Index([f"c{i}" for i in range(n)], dtype=object)
    mods = {
        m: ad.AnnData(
            sp.vstack([a.X] * k, format="csr"), obs=pd.DataFrame(index=names), var=a.var.copy()
        )
        for m, a in base.mod.items()
    }
    out = md.MuData(mods)
    for key in base.obsm:
        out.obsm[key] = np.tile(np.asarray(base.obsm[key]), (k, 1))
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mb() -> float:
    # resident memory at the end of training: the peak is often set by set-up (spectral init), not training
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_venncell(
    n: int,
    backed: bool,
    steps: int,
    method: str = "venncell",
    accelerator: str = "cpu",
    batch: int = BATCH,
    threads: int = 1,
    workers: int = 0,
) -> dict:
    import torch

    from venncell import VennCell

    torch.set_num_threads(threads)
    t = time.perf_counter()
    mdata = _read(n, backed)
    VennCell.setup_mudata(mdata, {"rna": "rna", "protein": "protein"})
    model = VennCell(
        mdata,
        shared_dim=8,
        private_dim=4,
        validation_fraction=0.0,
        backed=backed,
        **_variant_kwargs(method),
    )
    setup_s = time.perf_counter() - t
    rss_setup = _peak_rss_mb()
    timer = _timer()
    # the timer stops at the epoch's end, before that epoch's checkpoint is written
    model.train(
        stage1_epochs=1,
        stage2_epochs=1,
        batch_size=batch,
        limit_train_batches=steps + WARMUP,
        progress_bar="none",
        trainer_kwargs={"callbacks": [timer]},
        accelerator=accelerator,
        num_workers=workers,
        pin_memory=_pin(accelerator, workers),
    )
    tables = [model.module.shared_table, *model.module.private_tables.values()]
    return {
        "method": method + ("-backed" if backed else ""),
        "n": n,
        "batch": batch,
        "accelerator": accelerator,
        "workers": workers,
        "setup_s": setup_s,
        "peak_rss_after_setup_MB": rss_setup,
        "peak_rss_MB": _peak_rss_mb(),
        "rss_end_MB": _rss_now_mb(),
        "latent_table_MB": sum(t.weight.numel() * 4 for t in tables) / 2**20,
        **timer.stages,
    }


def _totalvi_adata(n: int):
    mdata = _read(n)
    adata = mdata.mod["rna"].copy()
    adata.obsm["protein"] = mdata.mod["protein"].X.toarray()
    return adata, mdata


def measure_totalvi(
    n: int,
    steps: int,
    accelerator: str = "cpu",
    batch: int = BATCH,
    threads: int = 1,
    workers: int = 0,
) -> dict:
    import scvi
    import torch

    torch.set_num_threads(threads)
    scvi.settings.seed = 0
    scvi.settings.dl_num_workers = workers  # same batch-assembly workers as the VennCell row
    scvi.settings.dl_persistent_workers = workers > 0
    t = time.perf_counter()
    adata, _ = _totalvi_adata(n)
    scvi.model.TOTALVI.setup_anndata(adata, protein_expression_obsm_key="protein")
    model = scvi.model.TOTALVI(adata)
    setup_s = time.perf_counter() - t
    timer = _timer()
    model.train(
        max_epochs=1,
        batch_size=batch,
        train_size=0.9,
        early_stopping=False,
        accelerator=accelerator,
        devices=1,
        datasplitter_kwargs={"pin_memory": _pin(accelerator, workers)},
        limit_val_batches=0,
        limit_train_batches=steps + WARMUP,
        callbacks=[timer],
        enable_progress_bar=False,
        enable_checkpointing=False,
        reduce_lr_on_plateau=False,
        logger=False,
    )
    return {
        "method": "totalvi",
        "n": n,
        "batch": batch,
        "accelerator": accelerator,
        "workers": workers,
        "setup_s": setup_s,
        "peak_rss_MB": _peak_rss_mb(),
        "rss_end_MB": _rss_now_mb(),
        "stage1": timer.stages.get("stage0"),
    }


def quality(n: int, method: str, epochs: int, accelerator: str = "cpu", threads: int = 1) -> dict:
    import torch

    from venncell.analysis.probes import cv_r2

    torch.set_num_threads(threads)
    adata, mdata = _totalvi_adata(n)
    truth = {
        "shared": mdata.obsm["true_shared"],
        **{f"private:{m}": mdata.obsm[f"true_private_{m}"] for m in ("rna", "protein")},
    }
    t = time.perf_counter()
    if method == "totalvi":
        import scvi

        scvi.settings.seed = 0
        scvi.model.TOTALVI.setup_anndata(adata, protein_expression_obsm_key="protein")
        model = scvi.model.TOTALVI(adata)
        model.train(
            max_epochs=epochs,
            batch_size=BATCH,
            early_stopping=False,
            accelerator=accelerator,
            devices=1,
            enable_progress_bar=False,
            logger=False,
            enable_checkpointing=False,
            reduce_lr_on_plateau=False,
        )
        z = model.get_latent_representation()
        latents = {
            "shared": z,
            "private:rna": z,
            "private:protein": z,
        }  # one joint latent: no private blocks
    else:
        from venncell import VennCell

        VennCell.setup_mudata(mdata, {"rna": "rna", "protein": "protein"})
        model = VennCell(mdata, shared_dim=8, private_dim=4, **_variant_kwargs(method))
        model.train(
            stage1_epochs=epochs,
            stage2_epochs=max(5, epochs // 3),
            batch_size=BATCH,
            progress_bar="none",
            accelerator=accelerator,
        )
        latents = {b: model.get_latent_representation(block=b) for b in truth}
    wall = time.perf_counter() - t
    r2 = {f"{b} <- true {b}": cv_r2(latents[b], truth[b]) for b in truth}
    r2["shared latent <- true private (leakage, max)"] = max(
        cv_r2(latents["shared"], truth[b]) for b in truth if b != "shared"
    )
    return {
        "method": method,
        "n": n,
        "epochs": epochs,
        "accelerator": accelerator,
        "wall_s": wall,
        "peak_rss_MB": _peak_rss_mb(),
        "knn_r2": r2,
    }


# ------------------------------------------------------------------ driver
def _sub(args: list[str], timeout: int, threads: int = 1) -> dict | None:
    t = time.perf_counter()
    try:
        out = run_child([__file__, *args], threads, timeout)
    except subprocess.TimeoutExpired:
        print(f"TIMEOUT {args}", flush=True)
        return {"error": f"timed out after {timeout} s", "args": args}
    except RuntimeError as e:
        print(f"FAILED {args}\n{str(e)[-3000:]}", flush=True)
        return {"error": str(e)[-500:], "args": args}
    out["process_wall_s"] = time.perf_counter() - t
    out["load_avg_1min"] = os.getloadavg()[
        0
    ]  # how busy the 2-core machine was as the row finished
    print(json.dumps(out), flush=True)
    return out


def _generate_apart(sizes) -> None:
    """``generate`` in a child process. Generating in the driver would leave it several GB large, and each measured
    row's process would then report that as its peak RSS: Linux carries a process's RSS high-water mark over
    ``fork`` + ``exec``, so a child's ``ru_maxrss`` starts at its parent's resident size."""
    subprocess.run(
        [sys.executable, __file__, "gen", "--sizes", ",".join(map(str, sizes))], check=True
    )


def run_all(sizes, steps: int, q_epochs: int, totalvi_epochs: int, rounds: int) -> None:
    _generate_apart(sizes)
    results = {"measure": [], "quality": [], "argv": " ".join(sys.argv[1:])}
    out = HERE / "results.json"
    for n in sizes:
        # in memory at every size: 1M cells is the "trainable within 24 GiB" check for the in-memory path
        compared = [*VARIANTS, "totalvi"] if n <= 100_000 else ["venncell"]
        # Rounds of every compared method back to back: this machine's speed drifts by more than the differences
        # measured, so each round's ratio to totalVI is taken within the round and the rounds' median reported.
        for r in range(rounds if n <= 100_000 else 1):
            for method in compared:
                row = _sub(
                    ["measure", "--method", method, "--n", str(n), "--steps", str(steps)], 1800
                )
                if row:
                    row["round"] = r
                results["measure"].append(row)
            out.write_text(json.dumps(results, indent=1))
        results["measure"].append(
            _sub(
                [
                    "measure",
                    "--method",
                    "venncell",
                    "--backed",
                    "--n",
                    str(n),
                    "--steps",
                    str(steps),
                ],
                900,
            )
        )
        out.write_text(json.dumps(results, indent=1))
    n_q = min(sizes)
    for method in VARIANTS:
        results["quality"].append(
            _sub(["quality", "--method", method, "--n", str(n_q), "--epochs", str(q_epochs)], 1800)
        )
    results["quality"].append(
        _sub(
            ["quality", "--method", "totalvi", "--n", str(n_q), "--epochs", str(totalvi_epochs)],
            1800,
        )
    )
    out.write_text(json.dumps(results, indent=1))
    write_markdown(results, " ".join(sys.argv[1:]))


# ------------------------------------------------------------------ GPU
GPU_THREADS = 4  # CPU threads per GPU row (batch assembly, set-up), the same for every method
GPU_RESULTS = HERE / "results_gpu.json"


def _gpu_steps(n: int, batch: int) -> int:
    # within one epoch of totalVI's 90 % training split, at most 300
    return max(20, min(300, int(0.9 * n / batch) - WARMUP - 2))


def _device_info() -> dict:
    import torch

    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
    }


def run_gpu(
    sizes,
    batches,
    rounds: int,
    out: Path,
    quality_n: int,
    q_epochs: int,
    totalvi_epochs: int,
    accelerator: str = "gpu",
    only: tuple = (),
    workers: int = 0,
) -> None:
    """The same rows on a GPU: VennCell (defaults, `model=fast`) and totalVI at each size and batch size (totalVI only
    up to 100k cells, as on the CPU), rounds back to back; results appended to ``out`` after every row."""
    _generate_apart(sorted({min(n, 100_000) for n in sizes}))
    results = (
        json.loads(out.read_text()) if out.exists() else {"measure": [], "quality": [], "argv": []}
    )
    results["argv"].append(" ".join(sys.argv[1:]))
    t = lambda n: ["--accelerator", accelerator, "--threads", str(GPU_THREADS), "--n", str(n)]  # noqa: E731
    for n in sizes:
        for batch in batches:
            methods = [
                m
                for m in [*VARIANTS, "totalvi"]
                if (n <= 100_000 or m != "totalvi") and (not only or m in only)
            ]
            for r in range(rounds):
                for method in methods:
                    row = _sub(
                        [
                            "measure",
                            "--method",
                            method,
                            *t(n),
                            "--batch",
                            str(batch),
                            "--steps",
                            str(_gpu_steps(n, batch)),
                            "--workers",
                            str(workers),
                        ],
                        900,
                        GPU_THREADS,
                    )
                    if row:
                        row["round"] = r
                    results["measure"].append(row)
                    out.write_text(json.dumps(results, indent=1))
    if quality_n:
        for method, epochs in [(m, q_epochs) for m in VARIANTS] + [("totalvi", totalvi_epochs)]:
            results["quality"].append(
                _sub(
                    ["quality", "--method", method, *t(quality_n), "--epochs", str(epochs)],
                    900,
                    GPU_THREADS,
                )
            )
            out.write_text(json.dumps(results, indent=1))


def write_gpu_markdown(results: dict, page: Path | None = None) -> None:
    nan = float("nan")
    m = [r for r in results["measure"] if r and "error" not in r]
    info = next(
        (r for r in m if "device" in r), {}
    )  # every measured row names its device and torch
    lines = [
        "# Throughput on a GPU: VennCell vs totalVI",
        "",
        "Commands, run on the lent GPU machine one after the other (each appends to `results_gpu.json`), then "
        "rendered here with `python benchmarks/throughput.py markdown-gpu`:",
        "",
        *[
            f"- `python benchmarks/throughput.py {a.replace('/root/out/', '$OUT/')}`"
            for a in results.get("argv", [])
        ],
        "",
        f"Device: {info.get('device', '?')}, torch {info.get('torch', '?')}. Same synthetic data, same timing "
        f"callback as the CPU benchmark (`RESULTS.md`): {WARMUP} untimed warm-up steps, then a fixed number of "
        "timed steps per stage within one epoch, the clock read after `torch.cuda.synchronize()`; one subprocess per "
        f"row; {GPU_THREADS} CPU threads per process for every method (batch assembly and set-up run on the CPU). "
        "Wall-clock cells/s is the number here: the GPU machine is not shared. 1M cells = the 100k cells tiled "
        "10x in memory. Set-up includes reading the file and VennCell's spectral start (CPU).",
        "",
        "| method | cells | batch | workers | round | set-up s | stage 1 cells/s | stage 2 cells/s | stage-1 epoch s "
        "(est.) | stage-1 GPU peak MB | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in m:
        s1, s2 = r.get("stage1") or {}, r.get("stage2") or {}
        c1 = s1.get("cells_per_s")
        lines.append(
            f"| {r['method']} | {r['n']:,} | {r['batch']} | {r.get('workers', 0)} | {r.get('round', 0)} | "
            f"{r['setup_s']:.0f} | {c1 or nan:.0f} | "
            f"{s2.get('cells_per_s', nan):.0f} | {r['n'] / c1 if c1 else nan:.1f} | {s1.get('gpu_peak_MB', nan):.0f} | "
            f"{r['peak_rss_MB']:.0f} |"
        )
    ratios = []
    keys = sorted({(r["n"], r["batch"], r.get("workers", 0)) for r in m})
    for n, batch, workers in keys:
        by_round: dict = {}
        for r in m:
            if (r["n"], r["batch"], r.get("workers", 0)) == (n, batch, workers) and r.get(
                "stage1"
            ):
                by_round.setdefault(r.get("round"), {})[r["method"]] = r
        for method in VARIANTS:
            tput = [
                v[method]["stage1"]["cells_per_s"] / v["totalvi"]["stage1"]["cells_per_s"]
                for v in by_round.values()
                if method in v and "totalvi" in v
            ]
            if tput:
                ratios.append(
                    f"| {method} | {n:,} | {batch} | {workers} | **{float(np.median(tput)):.2f}** | "
                    f"{', '.join(f'{x:.2f}' for x in tput)} |"
                )
    if ratios:
        lines += [
            "",
            "VennCell stage 1 / totalVI, wall-clock cells/s, same cells and batch size, taken within each round:",
            "",
            "| method | cells | batch | workers | ratio (median of rounds) | each round |",
            "|---|---|---|---|---|---|",
            *ratios,
        ]
    lines += _closing_lines(
        results,
        "Latent quality on the GPU at {n} cells (kNN-R², k = 15, 5-fold, as in `RESULTS.md`):",
        "NOTES_GPU.md",
    )
    (page or HERE / "RESULTS_GPU.md").write_text("\n".join(lines) + "\n")


def _closing_lines(results: dict, quality_title: str, notes_file: str) -> list[str]:
    """The end of a results page: the latent-quality table, the runs that did not finish, the hand-written notes."""
    lines = []
    q = [r for r in results["quality"] if r and "error" not in r]
    if q:
        lines += [
            "",
            quality_title.format(n=f"{q[0]['n']:,}"),
            "",
            "| metric | "
            + " | ".join(
                f"{r['method']} ({r['epochs']} epochs, {r['wall_s']:.0f} s wall)" for r in q
            )
            + " |",
            "|---|" + "---|" * len(q),
        ]
        for k in q[0]["knn_r2"]:
            lines.append(f"| {k} | " + " | ".join(f"{r['knn_r2'][k]:.3f}" for r in q) + " |")
    failed = [r for r in results["measure"] + results["quality"] if r and "error" in r]
    if failed:
        lines += ["", "Runs that did not finish:", ""] + [
            f"- `{' '.join(r['args'])}`: {r['error'][-200:]!r}" for r in failed
        ]
    notes = HERE / notes_file  # hand-written reading of the numbers, kept across re-runs
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    return lines


def _median_rows(rows: list[dict]) -> list[dict]:
    """One row per (method, cells): the round with the median stage-1 throughput, with every round's value."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["n"]), []).append(r)
    out = []
    for group in groups.values():
        ok = sorted(
            (r for r in group if r.get("stage1")), key=lambda r: r["stage1"]["cells_per_cpu_s"]
        )
        pick = dict(ok[(len(ok) - 1) // 2] if ok else group[0])
        pick["rounds"] = [r["stage1"]["cells_per_cpu_s"] for r in ok]
        out.append(pick)
    return out


def _load_range(results: dict) -> str:
    loads = [
        r["load_avg_1min"]
        for r in results["measure"] + results["quality"]
        if r and "load_avg_1min" in r
    ]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "not recorded"


def _derived_lines(rows: list[dict]) -> list[str]:
    """What the table implies, computed from it so that a rerun updates it: time to a trained model with each
    tool's default epochs, cost per cell across sizes, memory at the largest size."""
    from venncell.train.config import default_epochs

    by = {(r["method"], r["n"]): r for r in rows if r.get("stage1")}

    def rate(method, n, stage="stage1"):
        r = by.get((method, n))
        return (r.get(stage) or {}).get("cells_per_cpu_s") if r else None

    def totalvi_epochs(n):  # scvi-tools' default (get_max_epochs_heuristic)
        return min(400, round(400 * 20_000 / n))

    def cpu_h(method, n):
        # VennCell: stage 1 over every cell, stage 2 over the 90 % training split; totalVI: scvi-tools' default
        # epochs min(400, 400 x 20,000 / cells) over its 90 % training split (early stopping may end it sooner)
        if method == "totalvi":
            r1 = rate(method, n)
            return None if r1 is None else totalvi_epochs(n) * 0.9 * n / r1 / 3600
        r1, r2 = rate(method, n), rate(method, n, "stage2")
        if r1 is None or r2 is None:
            return None
        epochs1, epochs2 = default_epochs(n)
        return (epochs1 * n / r1 + epochs2 * 0.9 * n / r2) / 3600

    out = ["", "Derived from the table above (median rounds, one thread):", ""]
    for n in sorted({n for _, n in by}):
        times = {m: cpu_h(m, n) for m in ("venncell", "venncell-fast", "totalvi")}
        if all(v is not None for v in times.values()):
            out.append(
                f"- Time to a trained model at {n:,} cells, each tool's default epochs (VennCell "
                f"{' + '.join(map(str, default_epochs(n)))}, totalVI {totalvi_epochs(n)}) at the "
                f"table's batch size: VennCell {times['venncell']:.2f} CPU-h (`model=fast` "
                f"{times['venncell-fast']:.2f}), totalVI {times['totalvi']:.2f} CPU-h. The whole-job comparison, "
                "with real data and each tool's own stopping, is `WHOLE_JOB.md`."
            )
    sizes = sorted(n for m, n in by if m == "venncell")
    for method, what in (("venncell", "in memory"), ("venncell-backed", "backed")):
        have = [n for n in sizes if rate(method, n)]
        if len(have) > 1:
            out.append(
                f"- Stage-1 cost per cell {what} from {have[0]:,} to {have[-1]:,} cells: "
                + " → ".join(f"{rate(method, n):,.0f}" for n in have)
                + " cells/CPU-s, an epoch "
                + ", ".join(f"{n / rate(method, n):,.0f}" for n in have)
                + " CPU-s."
            )
    for n in sizes:
        a, b = rate("venncell", n), rate("venncell-backed", n)
        if a and b:
            out.append(
                f"- Backed against in memory at {n:,} cells: stage-1 throughput {100 * (b / a - 1):+.0f} %, peak RSS "
                f"{by[('venncell-backed', n)]['peak_rss_MB']:,.0f} MB against {by[('venncell', n)]['peak_rss_MB']:,.0f}"
                f" MB (RSS after training {by[('venncell-backed', n)].get('rss_end_MB', float('nan')):,.0f} against "
                f"{by[('venncell', n)].get('rss_end_MB', float('nan')):,.0f} MB)."
            )
    t = [n for n in sorted({n for m, n in by if m == "totalvi"})]
    if t and sizes and sizes[-1] > t[-1]:
        n = sizes[-1]
        out.append(
            f"- totalVI at {n:,} cells was not run; at its rate at {t[-1]:,} cells an epoch over its 90 % training "
            f"split would take ~{0.9 * n / rate('totalvi', t[-1]) / 60:.0f} CPU-min."
        )
    return out if len(out) > 3 else []


def write_markdown(results: dict, argv: str) -> None:
    nan = float("nan")
    m = [r for r in results["measure"] if r and "error" not in r]
    lines = [
        "# Throughput and memory: VennCell vs totalVI",
        "",
        f"Command: `OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/throughput.py {argv}`"
        + "".join(
            f", then `python benchmarks/throughput.py {x}`" for x in results.get("appended", [])
        ),
        "",
        f"Synthetic Poisson counts from known factors: cells x ({N_GENES} genes, ~10 % non-zero + {N_PROTEINS} "
        f"proteins), batch size {BATCH}, a fixed number of timed steps per stage after {WARMUP} warm-up steps "
        "(`limit_train_batches`), one subprocess per row (peak RSS is that process's). CPU only, one thread "
        "(`torch.set_num_threads(1)`, `OMP_NUM_THREADS=1`) on a 2-core machine shared with other jobs (1-minute "
        f"load average {_load_range(results)} as the rows finished): wall-clock cells/s measures the share of a "
        "core the job got, so throughput is also given per CPU-second of the process, which is the comparable "
        "number. The same benchmark on a GPU is in `RESULTS_GPU.md`. "
        "1M = the 100k cells tiled 10x (same per-cell cost). "
        "Checkpointing is off in the timed runs (a checkpoint per truncated epoch would dominate).",
        "",
        "Rows measured in several rounds show the round with the median stage-1 throughput, and in brackets the "
        "range over the rounds.",
        "",
        "| method | cells | rounds | set-up s (wall) | stage 1 cells/s (wall) | stage 1 cells/CPU-s | stage 2 cells/CPU-s | "
        "stage-1 epoch, CPU-s (est.) | peak RSS MB | RSS after training MB | latent tables MB | stage-1 optimiser "
        "state MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _median_rows(m):
        s1, s2 = r.get("stage1") or {}, r.get("stage2") or {}
        c1 = s1.get("cells_per_cpu_s")
        rounds = r["rounds"]
        spread = f" ({min(rounds):.0f}-{max(rounds):.0f})" if len(rounds) > 1 else ""
        lines.append(
            f"| {r['method']} | {r['n']:,} | {max(len(rounds), 1)} | {r['setup_s']:.0f} | {s1.get('cells_per_s', nan):.0f} | "
            f"{c1 or nan:.0f}{spread} | {s2.get('cells_per_cpu_s', nan):.0f} | {r['n'] / c1 if c1 else nan:.0f} | "
            f"{r['peak_rss_MB']:.0f} | {r.get('rss_end_MB', nan):.0f} | {r.get('latent_table_MB', nan):.1f} | "
            f"{s1.get('optimiser_state_MB', nan):.1f} |"
        )
    ratios = []
    for n in sorted({r["n"] for r in m}):
        by_round: dict = {}
        for r in m:
            if r["n"] == n and r.get("stage1"):
                by_round.setdefault(r.get("round"), {})[r["method"]] = r
        for method in VARIANTS:
            pairs = [
                (v[method], v["totalvi"])
                for v in by_round.values()
                if method in v and "totalvi" in v
            ]
            if not pairs:
                continue
            tput = [
                a["stage1"]["cells_per_cpu_s"] / b["stage1"]["cells_per_cpu_s"] for a, b in pairs
            ]
            rss = [a["peak_rss_MB"] / b["peak_rss_MB"] for a, b in pairs]
            ratios.append(
                f"| {method} | {n:,} | **{float(np.median(tput)):.2f}** | {', '.join(f'{x:.2f}' for x in tput)} | "
                f"{float(np.median(rss)):.2f} |"
            )
    if ratios:
        lines += [
            "",
            "VennCell (in memory, stage 1) / totalVI, same cells and batch size; each round's ratio is taken "
            "between rows of that round:",
            "",
            "| method | cells | throughput ratio, median of rounds (per CPU-s) | each round | peak RSS ratio |",
            "|---|---|---|---|---|",
            *ratios,
        ]
    lines += _derived_lines(_median_rows(m))
    lines += _closing_lines(
        results,
        "Latent quality at {n} cells: kNN-R² (k = 15, 5-fold) of the true factors from each "
        "method's latent (VennCell: encoder latents of the named block; totalVI: its one joint latent "
        "for every row, it has no private blocks).",
        "NOTES.md",
    )
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "what", choices=["all", "gen", "measure", "quality", "markdown", "gpu", "markdown-gpu"]
    )
    ap.add_argument("--method", default="venncell")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--backed", action="store_true")
    ap.add_argument(
        "--append", action="store_true", help="measure: add the row to results.json and re-render"
    )
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="all: interleaved rounds of the compared rows (<= 100k cells)",
    )
    ap.add_argument("--quality-epochs", type=int, default=30)
    ap.add_argument("--totalvi-epochs", type=int, default=100)
    ap.add_argument(
        "--accelerator", default="cpu", help="measure / quality / gpu: cpu or gpu (gpu: pass gpu)"
    )
    ap.add_argument("--batch", type=int, default=BATCH, help="measure: batch size")
    ap.add_argument("--threads", type=int, default=1, help="measure / quality: torch CPU threads")
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="measure / gpu: batch-assembly worker processes (both methods; on a GPU with pinned memory)",
    )
    ap.add_argument("--batches", default=str(BATCH), help="gpu: batch sizes, comma-separated")
    ap.add_argument(
        "--methods",
        default="",
        help="gpu: only these methods (comma-separated; default every one)",
    )
    ap.add_argument(
        "--quality-n",
        type=int,
        default=0,
        help="gpu: also the latent-quality rows at this many cells",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=GPU_RESULTS,
        help="gpu: results file, appended to when it exists",
    )
    ap.add_argument(
        "--page",
        type=Path,
        default=None,
        help="markdown-gpu: the page to write (default RESULTS_GPU.md here)",
    )
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.what == "gen":
        generate(sizes)
    elif a.what == "measure":
        if (
            a.append
        ):  # one more row into results.json (run in a subprocess, like `all` does), then re-render
            args = ["measure", "--method", a.method, "--n", str(a.n), "--steps", str(a.steps)] + (
                ["--backed"] if a.backed else []
            )
            res = json.loads((HERE / "results.json").read_text())
            res["measure"].append(_sub(args, 1800))
            res["appended"] = res.get("appended", []) + [" ".join(sys.argv[1:])]
            (HERE / "results.json").write_text(json.dumps(res, indent=1))
            write_markdown(res, res.get("argv", "all"))
            return
        if a.method == "totalvi":
            r = measure_totalvi(a.n, a.steps, a.accelerator, a.batch, a.threads, a.workers)
        else:
            r = measure_venncell(
                a.n, a.backed, a.steps, a.method, a.accelerator, a.batch, a.threads, a.workers
            )
        emit({**r, **_device_info()})
    elif a.what == "quality":
        emit(quality(a.n, a.method, a.epochs, a.accelerator, a.threads))
    elif a.what == "gpu":
        run_gpu(
            sizes,
            [int(b) for b in a.batches.split(",")],
            a.rounds,
            a.out,
            a.quality_n,
            a.quality_epochs,
            a.totalvi_epochs,
            a.accelerator,
            tuple(filter(None, a.methods.split(","))),
            a.workers,
        )
    elif a.what == "markdown-gpu":
        write_gpu_markdown(json.loads(a.out.read_text()), a.page)
    elif a.what == "markdown":
        res = json.loads((HERE / "results.json").read_text())  # re-render after editing NOTES.md
        write_markdown(res, res.get("argv", "all"))
    else:
        run_all(sizes, a.steps, a.quality_epochs, a.totalvi_epochs, a.rounds)


if __name__ == "__main__":
    main()
