"""``venncell-report``: the attribution report of a finished ``venncell-train`` run (see ``conf/report.yaml``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from venncell.cli.common import CONFIG_PATH, check_output_dir, friendly
from venncell.cli.store import register_configs
from venncell.data.readers import read_h5mu
from venncell.data.validate import VennCellInputError
from venncell.model import VennCell, atomic_write_h5mu

log = logging.getLogger("venncell")


def write_run_report(
    model: VennCell,
    run_dir: Path,
    markers=None,
    umap: bool = True,
    save_h5mu: bool = False,
    plan: dict | None = None,
    enrichment: dict | None = None,
    **attribution_kwargs,
):
    """Attribution of ``model`` on its training data, written into ``run_dir``; with ``plan`` (``PlanConfig``
    fields) the measure-or-predict plan too, with ``enrichment`` (``EnrichmentConfig`` fields) gene sets per
    block; returns the attribution result."""
    from venncell.analysis.report import write_report

    result = model.attribution(markers, **attribution_kwargs)
    result.write(run_dir)
    planned = None
    if plan is not None:
        planned = model.plan_measurements(**plan)
        planned.write(run_dir)
    enriched = None
    if enrichment is not None:
        enriched = model.enrich_regions(attribution=result, **enrichment)
        enriched.write(run_dir)
    write_report(result, run_dir / "report.html", umap=umap, plan=planned, enrichment=enriched)
    if save_h5mu:
        atomic_write_h5mu(model.mdata, run_dir / "venn.h5mu")
    log.info("Wrote %s", run_dir / "report.html")
    return result


def run_report(cfg: DictConfig):
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise VennCellInputError(
            "run_dir=DIR is required: the folder of a finished venncell-train run."
        )
    run_dir = Path(cfg.run_dir)
    model_dir, data_path = run_dir / "model", run_dir / "venn.h5mu"
    for p, what in ((model_dir, "model/ folder"), (data_path, "venn.h5mu")):
        if not p.exists():
            raise VennCellInputError(
                f"run_dir={run_dir} has no {what} ({p}); point run_dir at a finished venncell-train run."
            )
    mdata = read_h5mu(data_path)
    model = VennCell.load(model_dir, mdata=mdata)
    markers = cfg.markers
    if markers is not None and not isinstance(markers, str):
        markers = list(markers)
    return write_run_report(
        model,
        run_dir,
        markers,
        umap=cfg.umap,
        save_h5mu=cfg.write_h5mu,
        plan=OmegaConf.to_container(cfg.planner, resolve=True) if cfg.plan else None,
        enrichment=OmegaConf.to_container(cfg.enrichment, resolve=True) if cfg.enrich else None,
        **OmegaConf.to_container(cfg.attribution, resolve=True),
    )


@hydra.main(config_path=CONFIG_PATH, config_name="report", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    friendly(run_report)(cfg)


def main() -> None:
    """Console entry point."""
    register_configs()
    check_output_dir(sys.argv[1:])
    # the run folder is Hydra's output folder too: a mistyped one would be created (with .hydra_report/) before
    # run_report could refuse it
    for arg in sys.argv[1:]:
        if arg.startswith("run_dir=") and not Path(arg.split("=", 1)[1]).is_dir():
            print(
                f"venncell: error: {arg}: no such folder; point run_dir at a finished venncell-train run.",
                file=sys.stderr,
            )
            raise SystemExit(2)
    _app()
