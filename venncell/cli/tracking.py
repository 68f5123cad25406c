"""Experiment tracking with Weights & Biases (``logger=wandb``).

``wandb`` is imported only inside these functions, so the default CSV logger never needs it.

One W&B run per training run, shared by both stages. Lightning restarts ``global_step`` at 0 for stage 2,
so every stage logs its own step metric (``stage1/step``, ``stage2/step``) and ``define_metric`` makes it
the x-axis of that stage's keys; rows are logged without an explicit wandb step, so wandb's own step only
ever increases and nothing is dropped. At the end of ``run_train``, :func:`finish_run` adds the recovery
scores (when the data has ground truth), the run's figures (``<run_dir>/figures/*.png`` and the PNGs
embedded in ``report.html``) and its ``metrics.json``/``config_resolved.yaml``/``report.html``, then closes
the run (needed for multiruns, where the next job runs in the same process).

Offline runs land in ``<run_dir>/wandb/offline-run-*``; upload them with ``wandb sync``. wandb 0.31
(wandb-core) writes no ``wandb-summary.json`` for offline runs, so :func:`read_offline_run` reads the
``.wandb`` file itself.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
import shutil
import struct
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from venncell.cli.common import training_failure

log = logging.getLogger("venncell")

STAGES = ("stage1", "stage2")


# ---------------------------------------------------------------------------------------------- logging
def _hydra_names() -> dict:
    """Run name/group from Hydra: in a multirun, the group is the sweep folder and the name <sweep>-<job number>."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except Exception:  # not under Hydra (Python API, tests)
        return {}
    if hc.mode == RunMode.MULTIRUN:
        return {"group": str(hc.sweep.dir), "name": f"{Path(str(hc.sweep.dir)).name}-{hc.job.num}"}
    return {}


def start_wandb_run(cfg: DictConfig, run_dir: Path):
    """``wandb.init`` for this training run: resolved config, per-stage step axes, offline unless asked."""
    import wandb

    if wandb.run is not None:  # left open by an earlier job of this process that failed
        log.warning("Closing the W&B run %s left open by an earlier job.", wandb.run.id)
        wandb.run.finish(exit_code=1)
    lg = cfg.logger
    config = OmegaConf.to_container(cfg, resolve=True)
    config["run_dir"] = str(run_dir)
    names = _hydra_names()
    run = wandb.init(
        project=lg.project,
        entity=lg.get("entity"),
        dir=str(run_dir),
        mode=lg.get("mode", "offline"),
        tags=list(lg.get("tags") or []),
        config=config,
        name=lg.get("name") or names.get("name"),
        group=lg.get("group") or names.get("group"),
        job_type="train",
    )
    for stage in STAGES:
        run.define_metric(f"{stage}/step")
        run.define_metric(f"{stage}/*", step_metric=f"{stage}/step", step_sync=True)
    return run


def wandb_logger_factory(cfg: DictConfig, run_dir: Path):
    """``make_loggers`` for ``logger=wandb``: one Lightning logger per stage, all writing to one W&B run."""
    from lightning.pytorch.loggers import WandbLogger

    class StageWandbLogger(WandbLogger):
        """Adds ``<stage>/step`` (and ``<stage>/epoch``) to every row; never passes a step to wandb."""

        def __init__(self, stage: str, **kwargs):
            super().__init__(**kwargs)
            self.stage = stage

        def log_metrics(self, metrics, step=None):
            row = dict(metrics)
            if "epoch" in row:
                row[f"{self.stage}/epoch"] = row.pop("epoch")
            if step is not None:
                row[f"{self.stage}/step"] = step
            self.experiment.log(row)

    shared: dict = {}

    def factory(stage: str):
        if "run" not in shared:
            shared["run"] = start_wandb_run(cfg, run_dir)
        return StageWandbLogger(
            stage, experiment=shared["run"], save_dir=str(run_dir), project=cfg.logger.project
        )

    return factory


def _flat_numbers(d, prefix: str) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}/{k}"
        if isinstance(v, dict):
            out.update(_flat_numbers(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


def _report_images(report: Path) -> dict:
    """The PNG figures embedded (base64) in ``report.html``, as ``report/figure_<i>`` images."""
    if not report.exists():
        return {}
    import wandb
    from PIL import Image

    found = re.findall(
        r"data:image/png;base64,([A-Za-z0-9+/=]+)", report.read_text(errors="replace")
    )
    images = {}
    for i, b64 in enumerate(found, 1):
        try:
            images[f"report/figure_{i}"] = wandb.Image(
                Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
            )
        except Exception as e:  # noqa: BLE001 — a broken figure should not fail the run
            log.warning("report.html figure %d could not be logged: %s", i, e)
    return images


def finish_run(cfg: DictConfig, run_dir: Path, metrics: dict) -> None:
    """End-of-training hook: recovery summaries, figures and files into the W&B run, then close it."""
    if (cfg.get("logger") or {}).get("kind") != "wandb":
        return
    import wandb

    run = wandb.run
    if run is None:
        return
    summary = {}
    for source, probes in (metrics.get("recovery") or {}).items():
        for probe, res in probes.items():
            summary.update(_flat_numbers(res.get("summary", {}), f"recovery/{source}/{probe}"))
    if summary:
        run.log(summary)
        run.summary.update(summary)
    media = {
        f"figures/{p.stem}": wandb.Image(str(p), caption=p.name)
        for p in sorted((run_dir / "figures").glob("*.png"))
    }
    media.update(_report_images(run_dir / "report.html"))
    if media:
        run.log(media)
    for name in (
        "metrics.json",
        "config_resolved.yaml",
        "report.html",
    ):  # files in run.dir are uploaded
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, Path(run.dir) / name)
    failed = training_failure(metrics)
    if failed:  # the run's page says so, as venncell-train's exit code does
        run.summary["training_failed"] = failed
    log.info("W&B run %s (%s): %s", run.id, run.settings.mode, run.dir)
    run.finish(exit_code=3 if failed else 0)


# ---------------------------------------------------------------------------------------------- reading
_BLOCK = 32768
_HEADER = (
    7  # both the file header (":W&B", magic, version) and each record header (crc, length, type)
)


def _records(path: Path):
    """The serialized ``Record`` protos of a ``.wandb`` file (a LevelDB-style log of 32 KiB blocks)."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, buf = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pos += _HEADER
        chunk = data[pos : pos + length]
        pos += length
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            buf = chunk
        elif kind == 3:  # middle
            buf += chunk
        elif kind == 4:  # last
            yield buf + chunk
            buf = b""
        else:  # zero padding at the end of a file that was still open
            break


def _item(item) -> tuple[str, object]:
    key = item.key or ".".join(
        item.nested_key
    )  # nested values (e.g. an image's fields) as "key.field"
    which = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if which is None:  # the long-standing encoding: a JSON string
        return key, json.loads(item.value_json) if item.value_json else None
    if which == "none":
        return key, None
    if which == "json":
        return key, json.loads(item.json)
    return key, getattr(item, which)


def read_offline_run(run_path: str | Path) -> dict:
    """Config, history rows, summary and exit code of a local W&B run.

    ``run_path`` is an ``offline-run-*``/``run-*`` folder, its ``.wandb`` file, or a folder holding
    exactly one such run (e.g. ``<run_dir>/wandb``).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(run_path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb")) or sorted(path.glob("*run-*/run-*.wandb"))
        if len(files) != 1:
            raise FileNotFoundError(
                f"expected one W&B run file under {path}, found {[str(f) for f in files]}"
            )
        path = files[0]
    out = {
        "path": str(path),
        "run_id": None,
        "name": None,
        "group": None,
        "config": {},
        "history": [],
        "summary": {},
        "exit_code": None,
        "metrics": {},
    }
    for raw in _records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run_id"], out["name"], out["group"] = (
                rec.run.run_id,
                rec.run.display_name,
                rec.run.run_group,
            )
            for it in rec.run.config.update:
                out["config"].update([_item(it)])
        elif kind == "config":
            for it in rec.config.update:
                out["config"].update([_item(it)])
        elif kind == "history":
            out["history"].append(dict(_item(it) for it in rec.history.item))
        elif kind == "summary":
            for it in rec.summary.update:
                out["summary"].update([_item(it)])
            for it in rec.summary.remove:
                out["summary"].pop(it.key or ".".join(it.nested_key), None)
        elif kind == "metric":
            m = rec.metric
            out["metrics"][m.name or m.glob_name] = m.step_metric
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    # config values are stored as {"value": ...}
    out["config"] = {
        k: (v["value"] if isinstance(v, dict) and "value" in v else v)
        for k, v in out["config"].items()
    }
    return out
