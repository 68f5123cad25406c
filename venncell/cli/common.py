"""What every VennCell command shares: reading data, one-line errors, atomic JSON, loggers."""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import re
import shutil
import socket
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from venncell.data.files import atomic_write_text
from venncell.data.readers import read_h5mu
from venncell.data.validate import VennCellInputError, VennCellInputWarning

log = logging.getLogger("venncell")
CONFIG_PATH = "../conf"  # the packaged configs (venncell/conf), relative to the cli modules


def data_path(cfg) -> str:
    """``data.path``, or a one-line error when it was not given."""
    if "path" not in cfg.data or OmegaConf.is_missing(cfg.data, "path") or cfg.data.path is None:
        raise VennCellInputError(
            "data.path is not set: name the MuData file to read, e.g. `data=mudata data.path=my.h5mu`."
        )
    return str(cfg.data.path)


def load_data(cfg):
    """The run's MuData: generated (``data=synthetic``) or read (``data=mudata``)."""
    d = cfg.data
    if d.name == "synthetic":
        from venncell.data.synthetic import make_synthetic

        keys = (
            "n_cells",
            "modalities",
            "shared_dim",
            "private_dim",
            "n_clusters",
            "n_batches",
            "batch_effect",
            "region_factors",
            "seed",
        )
        given = {k: d[k] for k in keys if d.get(k) is not None and d.get(k) != {}}
        mdata, _ = make_synthetic(**OmegaConf.to_container(OmegaConf.create(given)))
        return mdata
    if d.name == "mudata":
        return read_h5mu(data_path(cfg), backed=bool(d.backed), build=d.get("build"))
    raise VennCellInputError(
        f"data.name={d.name!r} is not known; use data=synthetic or data=mudata."
    )


def atomic_write_json(obj, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=_jsonable))


def recovery_summary(metrics: dict) -> dict:
    """The kNN recovery summary of a run's default latents (``"average"``; runs written before it: the encoders')."""
    rec = metrics.get("recovery", {})
    return (rec.get("average") or rec.get("encoder") or {}).get("knn", {}).get("summary", {})


def training_failure(metrics: dict) -> str:
    """Why a run's training failed, stage by stage (``history["failed"]`` of its metrics); "" if it did not."""
    failed = (metrics.get("history") or {}).get("failed") or {}
    return "; ".join(f"{stage}: {why}" for stage, why in failed.items())


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _log_to_files(message: str) -> None:
    """An ERROR record for the run's log file only (sweep summaries read a failed job's error there); the terminal
    gets the one stderr line, not the same message twice."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for logger in (log, logging.getLogger()):
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)


# the report's files, which describe the model as it was when the report ran
REPORT_OUTPUTS = (
    "report.html",
    "attribution.json",
    "attribution_*.csv",
    "plan.json",
    "plan_*.csv",
    "enrichment_*.csv",
    "venncell-report.log",  # it says what the report wrote
    ".hydra_report",
)
# what venncell-train and venncell-report write into a run folder (checkpoints/: the training clears its own)
RUN_OUTPUTS = ("venn.h5mu", "venn_latents.h5ad", "metrics.json", "model", "logs", *REPORT_OUTPUTS)


def clear_earlier_outputs(run_dir: Path, keep: Path | None = None, outputs=RUN_OUTPUTS) -> None:
    """A fresh run in the folder of an earlier venncell-train run (it holds that run's config_resolved.yaml)
    removes that run's outputs first: killed before it wrote its own, it left the old model and latents beside its
    new config, and venncell-report reported the old model. A folder that never held a run is left alone (its
    files may only share a name with ours), and so is ``keep``, the run's input data. ``outputs``: which (a
    resumed run removes only the report's, ``REPORT_OUTPUTS``)."""
    from lightning.pytorch.utilities import rank_zero_only

    run_dir = Path(run_dir)
    if rank_zero_only.rank != 0 or not (run_dir / "config_resolved.yaml").is_file():
        return  # another DDP rank (rank 0 clears), or not a venncell run folder
    kept = keep.resolve() if keep is not None else None
    found = sorted(
        {p for pattern in outputs for p in run_dir.glob(pattern) if p.resolve() != kept}
    )
    if not found:
        return
    log.warning(
        "%s holds an earlier run's outputs (%s); starting afresh, they are removed.",
        run_dir,
        ", ".join(p.name for p in found),
    )
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


LOCK_FILE = ".venncell.lock"


@contextmanager
def run_folder_lock(run_dir: Path):
    """Hold ``run_dir`` for this run: a second venncell-train (or venncell-report) on the same folder while this one
    runs is refused (its fresh start would remove this run's files, a report would write its latents over the new
    ones). A lock whose process is gone (a killed run) is taken over. Rank 0 alone holds it under DDP."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    # written whole under another name, then linked into place: a reader never sees a half-written lock, and
    # of two runs linking at once one fails
    mine = run_dir / f"{LOCK_FILE}.{os.getpid()}"
    mine.write_text(_me())
    try:
        while True:
            try:
                os.link(mine, path)
                break
            except FileExistsError:
                holder = _other_holder(path)
                if holder:
                    raise VennCellInputError(_in_use(run_dir, holder)) from None
                # left by a run that is gone (or by this process's namesake)
                path.unlink(missing_ok=True)
    finally:
        mine.unlink(missing_ok=True)
    try:
        yield
    finally:
        if _holder(path) == _me():
            path.unlink(missing_ok=True)


def _me() -> str:
    """What a lock this process holds says: its machine and process id."""
    return f"{socket.gethostname()} {os.getpid()}"


def _holder(lock: Path) -> str:
    return lock.read_text(errors="replace").strip() if lock.is_file() else ""


def _other_holder(lock: Path) -> str:
    """Who holds ``lock``, when it is another process that is still running; else ""."""
    holder = _holder(lock)
    return holder if holder and holder != _me() and _alive(holder) else ""


def _in_use(run_dir: Path, holder: str) -> str:
    host, _, pid = holder.partition(" ")
    return (
        f"{run_dir} is in use by another venncell command (process {pid} on {host}). Give this run another folder "
        f"(hydra.run.dir=...), wait for that one to end, or, if nothing uses it, delete {run_dir / LOCK_FILE}."
    )


def check_folders_free(argv: list[str]) -> None:
    """One line and exit code 2 when a folder named on the command line (``hydra.run.dir=``, ``run_dir=``, or a
    job folder under ``hydra.sweep.dir=``) is held by a running venncell command: checked before Hydra writes its
    ``.hydra/`` records into it, which would then describe this refused run instead of the running one. A DDP
    worker (Lightning re-runs the command for it) shares its rank 0's folder and skips the check."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in ("hydra.run.dir", "run_dir", "hydra.sweep.dir") or not value:
            continue
        folder = Path(value)
        locks = (
            [folder / LOCK_FILE]
            if key != "hydra.sweep.dir"
            else sorted(folder.glob(f"*/{LOCK_FILE}"))
        )
        for lock in locks:
            holder = _other_holder(lock)
            if holder:
                print(f"venncell: error: {_in_use(lock.parent, holder)}", file=sys.stderr)
                raise SystemExit(2)


def _alive(holder: str) -> bool:
    """Whether the lock's process runs; one on another machine (a shared file system) is taken to."""
    host, _, pid = holder.partition(" ")
    if not pid:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def check_overrides(argv: list[str], config_name: str) -> None:
    """One line and exit code 2 for settings Hydra cannot compose (an unknown key or option, a value of the wrong
    type): Hydra itself prints several lines and exits 1, the code of a crash. Runs with Hydra's own flags
    (``--help``, ``-m``, ``--cfg``) are left to Hydra."""
    # Hydra's flags, and configs of the user's own (hydra.searchpath) that only Hydra's own run can see
    if any(arg.startswith(("-", "hydra.searchpath")) for arg in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [arg for arg in argv if not arg.lstrip("+~").startswith("hydra")]
    if (
        GlobalHydra.instance().is_initialized()
    ):  # a caller in the same process (tests) left one behind
        return
    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        try:
            compose(config_name=config_name, overrides=overrides)
        except Exception as e:  # Hydra's and OmegaConf's errors, whichever class
            message = _one_line(e)
            # a sweep (hparams_search=... sets the mode in its config): Hydra checks its own ranges
            if "--multirun" in message:
                return
            key = re.search(r"Could not override '([^']+)'", message)
            if key:
                # the keys beside it in the groups the command line picks (data=mudata has no n_batches)
                picks = [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0]]
                try:
                    chosen = compose(config_name=config_name, overrides=picks)
                except Exception:  # a pick is the mistake: the defaults' keys then
                    chosen = compose(config_name=config_name)
                message = message.rstrip(".") + "." + _close_keys(chosen, key.group(1))
            print(f"venncell: error: {message}", file=sys.stderr)
            raise SystemExit(2) from None


def _close_keys(cfg, key: str) -> str:
    """The "Did you mean ...?" sentence for a mistyped dotted key, from the keys beside it in the config."""
    from omegaconf import DictConfig, OmegaConf

    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return ""
    close = difflib.get_close_matches(
        name, [str(k) for k in node.keys() if str(k) != name], n=3, cutoff=0.7
    )
    return (
        f" Did you mean {', '.join(f'{parent}.{c}' if parent else c for c in close)}?"
        if close
        else ""
    )


def _one_line(error: BaseException) -> str:
    """Hydra's message and its cause's, on one line, without the config search path or advice to add keys with
    ``+`` (the configs are typed: a key they lack is refused either way)."""
    parts = []
    while error is not None:
        text = str(error).split("Config search path")[0]
        lines = [
            line.strip()
            for line in text.splitlines()
            if line.strip()
            and "use +" not in line
            and not line.strip().startswith(("full_key", "object_type"))
        ]
        if lines and " ".join(lines) not in parts:
            parts.append(" ".join(lines))
        error = error.__cause__
    return " ".join(parts)


def check_output_dir(argv: list[str]) -> None:
    """One line and exit code 4 when ``hydra.run.dir=...`` cannot be created or written: Hydra makes the folder
    before any of VennCell's code runs, and would answer with a traceback."""
    for arg in argv:
        if not arg.startswith("hydra.run.dir="):
            continue
        target = Path(arg.split("=", 1)[1])
        probe = target
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            why = (
                "is a file, not a folder"
                if probe.exists() and not probe.is_dir()
                else "is not writable"
            )
            verb = "written to" if probe == target else "created"
            print(
                f"venncell: error: hydra.run.dir={target} cannot be {verb}: {probe} {why}.",
                file=sys.stderr,
            )
            raise SystemExit(4)


def _routine(record: logging.LogRecord) -> bool:
    """False for dependencies' INFO lines that tell a VennCell user nothing: mudata logs through the root logger
    each time an options context opens or closes, anndata each column it stores as categorical."""
    if record.levelno >= logging.WARNING:
        return True
    return not (
        record.name.startswith("anndata")
        or (record.name == "root" and f"{os.sep}mudata{os.sep}" in record.pathname)
    )


def quiet_dependency_logs() -> None:
    """Keep the command's log to what it did: ``_routine`` on the root logger's handlers (Hydra's console and
    log file) and on anndata's own stderr handler. Repeated calls add nothing."""
    for handler in [*logging.getLogger().handlers, *logging.getLogger("anndata").handlers]:
        if _routine not in handler.filters:
            handler.addFilter(_routine)


def command_line_warning(message, category, filename, lineno, line=None) -> str:
    """VennCell's warnings as one line, like its errors: the file and source line of the ``warnings.warn`` call
    mean nothing to someone running a command. Other packages' warnings keep Python's format."""
    if issubclass(category, VennCellInputWarning):
        return f"venncell: warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


_PYTHON_FORMAT = warnings.formatwarning


def friendly(fn):
    """One clear line and an exit code instead of a traceback: 2 for bad input or settings, 3 for training that
    diverged or failed, 4 for a file that cannot be written, 128 + signal for a run stopped by SIGTERM / SIGINT."""
    from venncell.train.errors import NonFiniteLossError, TrainingFailedError, TrainingInterrupted

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        quiet_dependency_logs()
        warnings.formatwarning = command_line_warning
        try:
            return fn(*args, **kwargs)
        except (
            VennCellInputError,
            NonFiniteLossError,
            TrainingFailedError,
            TrainingInterrupted,
            OSError,
        ) as e:
            code = {
                NonFiniteLossError: 3,
                TrainingFailedError: 3,
                TrainingInterrupted: getattr(e, "exit_code", 1),
            }.get(type(e), 2)
            if isinstance(e, OSError):
                code = 4
                e = f"cannot read or write {e.filename or 'a file'}: {e.strerror or e}"
            _log_to_files(f"{e}")
            print(f"venncell: error: {e}", file=sys.stderr)
            # an exception (not an exit) lets Hydra record it and run the other jobs; a stop signal ends the sweep
            if in_multirun() and not isinstance(e, TrainingInterrupted):
                raise
            raise SystemExit(code) from None

    return wrapper
