"""``venncell-report``: the attribution report of a finished ``venncell-train`` run (see ``conf/report.yaml``)."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from venncell.analysis.attribution import AttributionConfig
from venncell.analysis.block_enrichment import check_modalities, enrichment_config
from venncell.analysis.gene_sets import EnrichmentConfig
from venncell.cli.common import (
    CONFIG_PATH,
    check_folders_free,
    check_output_dir,
    check_overrides,
    friendly,
    run_folder_lock,
)
from venncell.cli.store import ReportConfig, register_configs, to_object
from venncell.data.files import atomic_write
from venncell.data.readers import read_h5mu
from venncell.data.validate import VennCellInputError
from venncell.model import VennCell

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
        atomic_write(model.mdata, run_dir / "venn.h5mu")
    log.info("Wrote %s", run_dir / "report.html")
    return result


def run_report(cfg: DictConfig):
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise VennCellInputError(
            "run_dir=DIR is required: the folder of a finished venncell-train run."
        )
    run_dir = Path(cfg.run_dir)
    model_dir, data_path = run_dir / "model", run_dir / "venn.h5mu"
    if model_dir.exists() and not data_path.exists() and (run_dir / "venn_latents.h5ad").exists():
        raise VennCellInputError(
            f"run_dir={run_dir} was trained out of core (data.backed=true): it holds venn_latents.h5ad, not a "
            "copy of its data, which the report reads. Report from Python with the data file: "
            f"`VennCell.load('{model_dir}', mdata=mudata.read_h5mu(DATA)).attribution(markers)`."
        )
    for p, what in ((model_dir, "model/ folder"), (data_path, "venn.h5mu")):
        if not p.exists():
            raise VennCellInputError(
                f"run_dir={run_dir} has no {what} ({p}); point run_dir at a finished venncell-train run."
            )
    enrichment = check_enrichment(cfg)  # before the attribution is computed and written
    with run_folder_lock(run_dir):  # not while a training writes the folder
        mdata = read_h5mu(data_path)
        model = VennCell.load(model_dir, mdata=mdata)
        if enrichment is not None:  # before the attribution is computed and written
            check_modalities(model.specs, enrichment)
        return report_with(model, run_dir, cfg, save_h5mu=cfg.write_h5mu)


def report_with(model: VennCell, run_dir: Path, cfg, save_h5mu: bool):
    """``write_run_report`` with the settings of a ``ReportConfig`` node ``cfg``."""
    markers = cfg.markers
    if markers is not None and not isinstance(markers, str):
        markers = list(markers)
    return write_run_report(
        model,
        run_dir,
        markers,
        umap=cfg.umap,
        save_h5mu=save_h5mu,
        plan=OmegaConf.to_container(cfg.planner, resolve=True) if cfg.plan else None,
        enrichment=OmegaConf.to_container(cfg.enrichment, resolve=True) if cfg.enrich else None,
        **OmegaConf.to_container(cfg.attribution, resolve=True),
    )


def train_report_settings(report) -> DictConfig | None:
    """``venncell-train``'s ``report``: None for false, else venncell-report's settings, the defaults for true and
    those given for a dict (``report='{markers: [CD4], plan: true}'``), checked here, before training."""
    if OmegaConf.is_config(report):
        report = OmegaConf.to_container(report, resolve=True)
    if report is None or report is False:
        return None
    if report is True:
        report = {}
    if not isinstance(report, dict):
        raise VennCellInputError(
            f"report={report!r} must be true, false or a dict of venncell-report's settings, e.g. "
            "report='{markers: [CD4, cell_type], plan: true}'."
        )
    own = sorted({"run_dir", "write_h5mu"} & set(report))
    if own:
        raise VennCellInputError(
            f"report: {own} cannot be set in venncell-train (the report goes into the run's folder, with its "
            "venn.h5mu); set them in a later `venncell-report run_dir=RUN ...` instead."
        )
    node = OmegaConf.structured(ReportConfig(run_dir=""))
    try:
        node = OmegaConf.merge(node, report)
    except Exception as e:  # OmegaConf's unknown-key and type errors
        raise VennCellInputError(
            f"report: {str(e).splitlines()[0]}; valid settings: venncell-report --help."
        ) from None
    to_object(AttributionConfig, node.attribution)  # range checks now, not after training
    check_enrichment(node)
    return node


def check_enrichment(cfg) -> EnrichmentConfig | None:
    """With ``enrich``: its settings, its gene-set files and the optional packages they need, before any work (a
    missing package found after attribution would leave the folder half rewritten); None without."""
    if not cfg.enrich:
        return None
    return enrichment_config(OmegaConf.to_container(cfg.enrichment, resolve=True))


@hydra.main(config_path=CONFIG_PATH, config_name="report", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    friendly(run_report)(cfg)


def _check_nested_keys(argv: list[str]) -> None:
    """A setting of the attribution, planner or gene-set group given at the top level (``n_boot=30``): Hydra's
    own error suggests ``+n_boot=30``, which adds a key nothing reads."""
    defaults = ReportConfig(run_dir="")
    groups = {
        f.name: {g.name for g in fields(value)}
        for f in fields(ReportConfig)
        if is_dataclass(value := getattr(defaults, f.name))
    }
    for arg in argv:
        key = arg.split("=", 1)[0]
        if (
            "=" not in arg
            or key.startswith(("+", "~", "-"))
            or "." in key
            or key in ReportConfig.__annotations__
        ):
            continue
        owners = [group for group, keys in groups.items() if key in keys]
        if owners:
            print(
                f"venncell: error: {key} is a setting of the {' and the '.join(owners)} group"
                f"{'s' if len(owners) > 1 else ''}: give {' and/or '.join(f'{g}.{arg}' for g in owners)} "
                "(venncell-report --help lists every setting).",
                file=sys.stderr,
            )
            raise SystemExit(2)


def main() -> None:
    """Console entry point."""
    register_configs()
    _check_nested_keys(sys.argv[1:])
    check_output_dir(sys.argv[1:])
    check_folders_free(sys.argv[1:])
    check_overrides(sys.argv[1:], "report")
    # the run folder is Hydra's output folder too: a mistyped one would be created (with .hydra_report/) before
    # run_report could refuse it
    for arg in sys.argv[1:]:
        if arg.startswith("run_dir=") and not Path(arg.split("=", 1)[1]).is_dir():
            print(
                f"venncell: error: {arg}: no such folder; point run_dir at a finished venncell-train run.",
                file=sys.stderr,
            )
            raise SystemExit(2)
        if arg.startswith("run_dir=") and not os.access(arg.split("=", 1)[1], os.W_OK | os.X_OK):
            folder = arg.split("=", 1)[1]
            print(
                f"venncell: error: {arg} is not writable: the report and its tables are written into the run "
                f"folder. Copy the run somewhere writable (`cp -r {folder} <copy>`) and give run_dir=<copy>.",
                file=sys.stderr,
            )
            raise SystemExit(4)
    _app()
