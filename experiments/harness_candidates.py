"""Pages whose question is one change of the defaults, answered with the integration harness's own fits.

A page's script names its datasets and its candidate rows (``venncell:<field>=<value>``, as the harness's
``--methods`` takes them); ``run_and_write`` has the harness fit them (three seeds, one thread each, cached in
``benchmarks/integration/fits``, scores in its ``results.json``) and writes the page's tables: each candidate next
to the defaults fitted by the same harness, and on the synthetic set the Venn recovery against the issue's bars.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "benchmarks" / "integration"
sys.path.insert(0, str(HARNESS))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import write_results_md  # noqa: E402
from report import LEAKS, against_rows, fmt, name_of, values  # noqa: E402


def reference_rows(rows: dict[str, str]) -> dict[str, str]:
    """The rows the candidates are compared with (method -> how the page names it): the defaults, and the
    earlier defaults' rows the harness compares a candidate with (``report.against_rows``)."""
    out = {"venncell": "the defaults"}
    for method in rows:
        out |= {r: name_of(r) for r in against_rows(method)}
    return out


def candidate_table(results: dict, datasets: list[str], rows: dict[str, str]) -> list[str]:
    """kNN accuracy, bio conservation and scib total (mean ± sd over seeds, headline label) of the reference
    rows (``reference_rows``) and of each candidate in ``rows`` (method -> how the page names it), per
    dataset."""
    from datasets import DATASETS

    lines = [
        "| data | setting | kNN accuracy | bio conservation | scib total | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for name in datasets:
        res, label = results.get(name, {}), DATASETS[name].labels[0]
        for method, title in {**reference_rows(rows), **rows}.items():
            runs = res.get(method)
            if not runs:
                continue
            cells = [
                fmt(values(runs, lambda r, k=k: r["labels"][label][k]))
                for k in ("knn", "Bio conservation", "Total")
            ]
            lines.append(
                f"| {name} ({label}) | {title} | " + " | ".join(cells) + f" | {len(runs)} |"
            )
    return lines


def recovery_table(results: dict, rows: dict[str, str]) -> list[str]:
    """The synthetic set's Venn recovery (kNN-R² of the true blocks) of the reference rows and each candidate."""
    res = results.get("synthetic", {})
    lines = [
        "| setting | shared | weakest private | "
        + " | ".join(k.replace("_", " ") for k in LEAKS)
        + " |",
        "|---|---|---|" + "---|" * len(LEAKS),
    ]
    for method, title in {**reference_rows(rows), **rows}.items():
        runs = res.get(method)
        if not runs or not all("recovery" in r for r in runs.values()):
            continue
        keys = ("shared_recovery", "min_private_recovery", *LEAKS)
        cells = [fmt(values(runs, lambda r, k=k: r["recovery"][k])) for k in keys]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def run_and_write(
    here: Path,
    title: str,
    intro: str,
    datasets: list[str],
    rows: dict[str, str],
) -> None:
    """The page's command line: fit what is missing with the harness (unless ``--page-only``), then write
    ``here/RESULTS.md`` (its hand-written part kept)."""
    p = argparse.ArgumentParser(description=title)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--page-only", action="store_true", help="only rewrite RESULTS.md")
    args = p.parse_args()
    if not args.page_only:
        cmd = [sys.executable, str(HARNESS / "run.py"), "--datasets", ",".join(datasets)]
        cmd += ["--methods", ",".join([*reference_rows(rows), *rows]), "--jobs", str(args.jobs)]
        subprocess.run(cmd, check=True, cwd=ROOT)
    results = json.loads((HARNESS / "results.json").read_text())
    script = here.relative_to(ROOT) / "run.py"
    methods = ", ".join(f"`{m}`" for m in rows)
    lines = [
        f"# {title}",
        "",
        f"Command (from the repository root): `python {script}`. It has the integration harness "
        f"(`benchmarks/integration/run.py`) fit the package defaults and {methods} on the datasets below, three "
        "seeds each, one thread per fit (fits already in the harness's cache are reused), and writes the "
        "tables from the harness's `results.json`; the scores are the harness's (scib-metrics, kNN accuracy "
        "k = 15 with 5-fold stratified CV, headline label).",
        "",
        intro,
        "",
        "## The defaults and each setting, mean ± sd over seeds",
        "",
        *candidate_table(results, datasets, rows),
        "",
    ]
    recovery = recovery_table(results, rows)
    if recovery:
        lines += [
            "## Synthetic Venn recovery",
            "",
            "Bars of issue #22: shared ≥ 0.95, every private ≥ 0.90, each leakage ≤ 0.05.",
            "",
            *recovery,
            "",
        ]
    write_results_md(here / "RESULTS.md", "\n".join(lines))
    print(f"wrote {here / 'RESULTS.md'} ({', '.join(name_of(m) for m in rows)})")
