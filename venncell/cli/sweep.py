"""One table of every run of a sweep: ``venncell-sweep-summary MULTIRUN_DIR``.

For each run folder under the sweep (any folder holding ``.hydra/overrides.yaml``) it reads the run's
overrides and its ``metrics.json`` (the last stage-1/stage-2 numbers, and the kNN recovery summary of the
run's default latents when the data has ground truth), sorts the runs by the objective and writes
``sweep_summary.csv`` (every column) and ``sweep_summary.md`` (the columns a person reads) into the sweep
folder. Runs without ``metrics.json``, or with a ``job_error.txt``, are listed as ``failed`` with their
error (from ``job_error.txt``, else the last ERROR line of the run's Hydra log).

The objective and its direction default to those the sweep ran with (``objective`` and
``hydra.sweeper.direction`` in ``<sweep>/multirun.yaml``; minimise when the sweeper has none).

``SweepSummaryCallback`` (a Hydra callback, switched on by ``hparams_search=optuna``; add it to any
config under ``hydra.callbacks``) writes the same table when a multirun ends and records a failed job's
exception in its ``job_error.txt``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import traceback
from pathlib import Path

from omegaconf import OmegaConf

from venncell.cli.common import recovery_summary, training_failure

try:  # hydra-core is a dependency of venncell; the guard only keeps this module importable without it
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object

log = logging.getLogger("venncell")

ERROR_FILE = "job_error.txt"
# shown in the Markdown table when present (the CSV has every metric)
KEY_METRICS = [
    "stage1/val/loss",
    "stage2/val/recon",
    "stage2/val/loss",
    "shared_recovery",
    "min_private_recovery",
    "leak_private_into_shared",
    "leak_shared_into_private",
]


# ---------------------------------------------------------------------------------------------- reading
def find_runs(sweep_dir: Path) -> list[Path]:
    """Run folders under ``sweep_dir`` (Hydra writes ``<run>/.hydra/overrides.yaml`` for each job)."""
    runs = {
        p.parent.parent
        for p in Path(sweep_dir).rglob("overrides.yaml")
        if p.parent.name == ".hydra"
    }

    def order(p: Path):
        rel = p.relative_to(sweep_dir).parts
        return [(0, int(x), "") if x.isdigit() else (1, 0, x) for x in rel]

    return sorted(runs, key=order)


def parse_overrides(items) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def _flat_metrics(metrics: dict) -> dict[str, float]:
    """The numbers a run is judged on: last stage-1/stage-2 values and the kNN recovery of its default latents."""
    flat: dict[str, float] = {}
    for stage in ("stage1", "stage2"):
        flat.update(metrics.get("history", {}).get(stage, {}))
    # Lightning also reports "<name>_step"/"<name>_epoch" copies; keep the plain name
    for k in list(flat):
        for suffix in ("_step", "_epoch"):
            if k.endswith(suffix) and (k[: -len(suffix)] in flat or suffix == "_step"):
                flat.pop(k, None)
    flat.update(recovery_summary(metrics))
    return {
        k: float(v)
        for k, v in flat.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _error_of(run_dir: Path) -> str:
    err = run_dir / ERROR_FILE
    if err.exists():
        lines = [ln for ln in err.read_text(errors="replace").splitlines() if ln.strip()]
        return lines[0].strip() if lines else "failed"
    for logfile in sorted(run_dir.glob("*.log")):
        errors = [
            ln for ln in logfile.read_text(errors="replace").splitlines() if "][ERROR]" in ln
        ]
        if errors:
            return errors[-1].split("] - ", 1)[-1].strip()
    return ""


def read_run(run_dir: Path, sweep_dir: Path) -> dict:
    row: dict = {"run": str(run_dir.relative_to(sweep_dir)) or ".", "status": "ok", "error": ""}
    try:
        row["overrides"] = parse_overrides(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))
    except Exception as e:  # a damaged run folder should not hide the others
        row["overrides"] = {}
        row["error"] = f"unreadable overrides.yaml: {e}"
    mfile = run_dir / "metrics.json"
    row["metrics"], failed = {}, ""
    if mfile.exists():
        try:
            metrics = json.loads(mfile.read_text())
            row["metrics"] = _flat_metrics(metrics)
            failed = training_failure(metrics)
        except (ValueError, AttributeError) as e:
            row["status"], row["error"] = "failed", f"unreadable metrics.json: {e}"
    if not mfile.exists() or (run_dir / ERROR_FILE).exists():
        row["status"] = "failed"
        row["error"] = (
            _error_of(run_dir) or row["error"] or "no metrics.json (failed or still running)"
        )
    # a diverged run's held-out scores can look as good as a healthy run's: it is not ranked
    if failed:
        row["status"], row["error"] = "training failed", failed
    return row


def _direction_of(cfg) -> str | None:
    d = OmegaConf.select(cfg, "hydra.sweeper.direction", default=None, throw_on_missing=False)
    if OmegaConf.is_list(d) or isinstance(d, (list, tuple)):  # multi-objective: sort by the first
        d = d[0] if len(d) else None
    return str(d).split(".")[-1].lower() if d is not None else None


def sweep_defaults(sweep_dir: Path) -> tuple[str | None, str | None]:
    """(objective, direction) the sweep ran with: ``multirun.yaml`` (basic sweeper) or a run's ``.hydra``."""
    objective = direction = None
    try:
        mr = Path(sweep_dir) / "multirun.yaml"
        if mr.exists():
            cfg = OmegaConf.load(mr)
            objective, direction = cfg.get("objective"), _direction_of(cfg)
        for run in find_runs(sweep_dir)[:1]:  # the Optuna sweeper writes no multirun.yaml
            if objective is None and (run / ".hydra" / "config.yaml").exists():
                objective = OmegaConf.load(run / ".hydra" / "config.yaml").get("objective")
            if direction is None and (run / ".hydra" / "hydra.yaml").exists():
                direction = _direction_of(OmegaConf.load(run / ".hydra" / "hydra.yaml"))
    except Exception as e:  # noqa: BLE001 — defaults are a convenience
        log.warning("Could not read the sweep's objective/direction under %s: %s", sweep_dir, e)
    return objective, direction


# ---------------------------------------------------------------------------------------------- table
def summarise(
    sweep_dir: str | Path, objective: str | None = None, direction: str | None = None
) -> dict:
    sweep_dir = Path(sweep_dir).resolve()
    d_obj, d_dir = sweep_defaults(sweep_dir)
    objective = objective or d_obj or "stage2/val/recon"
    direction = (direction or d_dir or "minimize").lower()
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be minimize or maximize, got {direction!r}")
    rows = [read_run(r, sweep_dir) for r in find_runs(sweep_dir)]
    sign = 1.0 if direction == "minimize" else -1.0
    for row in rows:
        v = row["metrics"].get(objective)
        row["objective"] = (
            v if (row["status"] == "ok" and v is not None and math.isfinite(v)) else None
        )

    rows.sort(
        key=lambda r: (
            r["objective"] is None,
            r["status"] != "ok",
            sign * r["objective"] if r["objective"] is not None else 0.0,
        )
    )
    rank = 0
    for row in rows:
        if row["objective"] is not None:
            rank += 1
            row["rank"] = rank
        else:
            row["rank"] = None
    override_keys = list(dict.fromkeys(k for r in rows for k in r["overrides"]))
    metric_keys = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    return {
        "sweep_dir": sweep_dir,
        "objective": objective,
        "direction": direction,
        "rows": rows,
        "override_keys": override_keys,
        "metric_keys": metric_keys,
    }


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_csv(s: dict, path: Path) -> None:
    cols = ["rank", "run", "status", "objective", *s["override_keys"], *s["metric_keys"], "error"]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in s["rows"]:
            vals = {
                "rank": r["rank"],
                "run": r["run"],
                "status": r["status"],
                "objective": r["objective"],
                "error": r["error"],
                **r["overrides"],
                **r["metrics"],
            }
            w.writerow(["" if vals.get(c) is None else vals.get(c) for c in cols])
    tmp.replace(path)


def _md_cell(v) -> str:
    if (
        isinstance(v, str) and len(v) > 6
    ):  # long float overrides (Optuna's samples) read better rounded
        try:
            v = float(v)
        except ValueError:
            pass
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


def to_markdown(s: dict) -> str:
    rows = s["rows"]
    n_ok = sum(r["status"] == "ok" for r in rows)
    varying = [
        k
        for k in s["override_keys"]
        if len({r["overrides"].get(k) for r in rows}) > 1 or len(rows) == 1
    ]
    common = [k for k in s["override_keys"] if k not in varying]
    metrics = [k for k in KEY_METRICS if k in s["metric_keys"] and k != s["objective"]]
    lines = [
        f"# Sweep summary: `{s['sweep_dir']}`",
        "",
        f"Objective: `{s['objective']}` ({s['direction']}). Runs: {len(rows)} ({n_ok} ok, {len(rows) - n_ok} failed).",
        "",
    ]
    best = next((r for r in rows if r["rank"] == 1), None)
    if best is not None:
        settings = (
            ", ".join(f"{k}={_md_cell(best['overrides'].get(k))}" for k in varying)
            or "no varying overrides"
        )
        lines += [
            f"Best: run `{best['run']}` with {s['objective']} = {_fmt(best['objective'])} ({settings}).",
            "",
        ]
    if common:
        lines += [
            "Same in every run: "
            + " ".join(f"`{k}={rows[0]['overrides'].get(k)}`" for k in common),
            "",
        ]
    cols = ["rank", "run", "status", s["objective"], *varying, *metrics, "error"]
    lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for r in rows:
        vals = {
            "rank": r["rank"],
            "run": r["run"],
            "status": r["status"],
            s["objective"]: r["objective"],
            "error": r["error"],
        }
        cells = [
            vals[c] if c in vals else r["overrides"].get(c, r["metrics"].get(c)) for c in cols
        ]
        lines.append("| " + " | ".join(_md_cell(v) for v in cells) + " |")
    lines += ["", "Every metric is in `sweep_summary.csv`."]
    return "\n".join(lines) + "\n"


def write_summary(
    sweep_dir: str | Path,
    objective: str | None = None,
    direction: str | None = None,
    out_dir: str | Path | None = None,
) -> tuple[Path, Path, dict]:
    """Write ``sweep_summary.csv`` and ``sweep_summary.md``; returns their paths and the summary."""
    s = summarise(sweep_dir, objective, direction)
    out = Path(out_dir) if out_dir else s["sweep_dir"]
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "sweep_summary.csv", out / "sweep_summary.md"
    write_csv(s, csv_path)
    tmp = md_path.with_name(f".{md_path.name}.tmp")
    tmp.write_text(to_markdown(s))
    tmp.replace(md_path)
    return csv_path, md_path, s


# ---------------------------------------------------------------------------------------------- Hydra
class SweepSummaryCallback(_HydraCallback):
    """``hydra.callbacks``: records failed jobs' errors and writes the sweep summary when a multirun ends."""

    def __init__(self, direction: str | None = None, objective: str | None = None):
        self.direction = direction
        self.objective = objective

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.core.utils import JobStatus

        if job_return.status == JobStatus.FAILED:
            self._record_error(config, job_return)
        # after every job of a multirun, not only at its end: Hydra re-raises a failed job's error once the jobs
        # have run and never reaches on_multirun_end, which left a sweep with any failure without its summary
        if str(OmegaConf.select(config, "hydra.mode", default="")).endswith("MULTIRUN"):
            self.on_multirun_end(config)

    def _record_error(self, config, job_return) -> None:
        try:
            out = Path(config.hydra.runtime.output_dir)
            exc = job_return._return_value
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            first = (
                f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
            )
            (out / ERROR_FILE).write_text(first + "\n\n" + text)
        except Exception as e:  # noqa: BLE001 — never turn a failed job into a crashed sweep
            log.warning("Could not record the failed job's error: %s", e)

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            objective = self.objective or config.get("objective")
            direction = self.direction or _direction_of(config)
            _, md_path, _ = write_summary(sweep_dir, objective, direction)
            log.info("Sweep summary: %s", md_path)
        except Exception as e:  # noqa: BLE001
            log.warning(
                "Could not write the sweep summary (run `venncell-sweep-summary DIR`): %s", e
            )


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="venncell-sweep-summary",
        description="Summarise a Hydra multirun of venncell-train: one table of every run's overrides and final "
        "metrics, sorted by the objective (writes sweep_summary.csv and sweep_summary.md).",
    )
    p.add_argument(
        "sweep_dir",
        help="the multirun folder (hydra.sweep.dir), e.g. multirun/2024-01-01/12-00-00",
    )
    p.add_argument(
        "--objective",
        help="metric to sort by (default: the sweep's `objective`, else stage2/val/recon); "
        "history keys such as stage2/val/loss or recovery keys such as shared_recovery",
    )
    p.add_argument(
        "--direction",
        choices=["minimize", "maximize"],
        help="default: the sweep's hydra.sweeper.direction, else minimize",
    )
    p.add_argument("--out", help="folder for the two files (default: the sweep folder)")
    p.add_argument("--quiet", action="store_true", help="do not print the Markdown table")
    a = p.parse_args(argv)
    sweep_dir = Path(a.sweep_dir)
    if not sweep_dir.is_dir():
        print(f"venncell-sweep-summary: error: {sweep_dir} is not a folder", file=sys.stderr)
        return 2
    if not find_runs(sweep_dir):
        print(
            f"venncell-sweep-summary: error: no runs (no */.hydra/overrides.yaml) under {sweep_dir}",
            file=sys.stderr,
        )
        return 2
    csv_path, md_path, s = write_summary(sweep_dir, a.objective, a.direction, a.out)
    if not a.quiet:
        print(md_path.read_text())
    print(f"Wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
