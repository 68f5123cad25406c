"""What keeps a run's checkpoints trustworthy: stopping on SIGTERM / SIGINT at a safe point, writing each checkpoint
whole or not at all, refusing to resume a checkpoint of another run, and the fingerprint that tells them apart."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import signal
import threading
from contextlib import contextmanager
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from venncell.data.validate import VennCellInputError
from venncell.module.config import ADDED_FIELDS
from venncell.train.errors import TrainingInterrupted

log = logging.getLogger(__name__)
FINGERPRINT_KEY = "venncell_fingerprint"


class SameFolderCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their final path and renamed into place. Lightning's own save writes a temporary
    file in the system's temp folder and moves it: across file systems that is a copy, which a full disk cuts short
    into a truncated checkpoint, and its error names the temporary file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options (got {storage_options!r})."
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # serialised in memory first: torch.save's own writer reports a full disk as a RuntimeError, a plain write
        # as the OSError it is
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        partial = path.with_name(f".{path.name}.partial")  # not *.ckpt: resuming never reads it
        try:
            with open(partial, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                # on disk before the rename lets Lightning remove the previous checkpoint
                os.fsync(f.fileno())
            os.replace(partial, path)
        except OSError as e:
            partial.unlink(missing_ok=True)
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise


class StopOnSignal(Callback):
    """Stops training at the end of the step during which a signal arrived."""

    def __init__(self):
        self.signum: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.signum is not None:
            raise _Stop()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if self.signum is not None:
            raise _Stop()


class _Stop(BaseException):
    """Raised inside Lightning's loop (a BaseException, so that Lightning tears the run down and re-raises it)."""


@contextmanager
def stop_on_signals(stopper: StopOnSignal, run_dir: Path):
    """While training: SIGTERM and SIGINT only set a flag that ``stopper`` acts on at the next step boundary; then
    ``TrainingInterrupted`` is raised. Outside the main thread signals cannot be caught, and nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def note(signum, frame):
        if stopper.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: stop now
        stopper.signum = signum
        log.warning("Received %s: stopping after the current step.", signal.Signals(signum).name)

    for s in previous:
        signal.signal(s, note)
    try:
        yield
    except (
        _Stop,
        SystemExit,
    ):  # Lightning answers SIGTERM with SystemExit(None), which would exit 0
        if stopper.signum is None:
            raise
        raise TrainingInterrupted(stopper.signum, run_dir) from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if stopper.signum is not None:  # the signal came after the last step
        raise TrainingInterrupted(stopper.signum, run_dir)


def fingerprint(module, data, is_train: np.ndarray, train_cfg) -> dict:
    """What a checkpoint must agree with to be resumed: the model's configuration and data registry, the cells
    (names and split) and the training settings that shape the optimisation (not the epoch counts or logging)."""

    def digest(obj) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]

    settings = {
        k: v
        for k, v in _declared(train_cfg).items()
        if k in ("batch_size", "lr_network", "lr_latent", "lr_encoder", "grad_clip", "seed")
    }
    # it sets the rates of every step after its start (absent when off: older runs resume)
    if train_cfg.lr_anneal:
        settings["lr_anneal"] = float(train_cfg.lr_anneal)
    # the chunked sampler draws other batches with another chunk size, or without one (in memory)
    if getattr(data, "chunk_size", None) is not None:
        settings["chunk_size"] = data.chunk_size
    cells = hashlib.sha256(
        np.asarray(data.obs_names).astype(str).tobytes() + np.asarray(is_train).tobytes()
    )
    model = json.loads(json.dumps(_declared(module.cfg), default=str))
    # a checkpoint from before some fields existed hashed its settings without them; they resume where the field
    # does what its absence did, or nothing (augmenting crops without images, sizing regions without them)
    inert = set()
    if all(s.kind != "image" for s in data.registry.specs.values()):
        inert.add("image_augment")
    if model.get("venn_regions") == "shared":
        inert |= {"region_dim", "region_dims", "region_independence_weight"}
    older = [k for k, v in ADDED_FIELDS.items() if k in model and (model[k] == v or k in inert)]
    accepts = {
        digest({k: v for k, v in model.items() if k not in left_out})
        for n in range(len(older) + 1)
        for left_out in combinations(older, n)
    }
    return {
        "model": digest(model),
        "model_accepts": sorted(accepts),
        "data": digest(data.registry.to_dict()),
        "cells": cells.hexdigest()[:16],
        "training": digest(settings),
        # the settings themselves, so that a refusal can name the one that changed
        SETTINGS: {"model": model, "training": json.loads(json.dumps(settings, default=str))},
    }


SETTINGS = "settings"


def _declared(cfg) -> dict:
    """A config's fields, whole numbers given for float fields as floats (``grad_clip=10`` is the default 10.0)."""
    from dataclasses import fields

    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        declared = str(f.type)
        if (
            isinstance(v, int)
            and not isinstance(v, bool)
            and "float" in declared
            and "int" not in declared
        ):
            v = float(v)
        out[f.name] = v
    return out


_WHAT = {
    "model": "model settings",
    "data": "data (modalities, features or their statistics)",
    "cells": "cells or validation split",
    "training": "training settings (batch size, learning rates, seed, chunk size)",
}


def check_resumable(saved: dict | None, current: dict, path: Path) -> None:
    """A clear error when the checkpoint at ``path`` belongs to another run."""
    if saved is None:
        raise VennCellInputError(
            f"Checkpoint {path} was not written by this version of VennCell (no fingerprint); "
            "start afresh with resume=false in a new run folder."
        )
    accepted = {k: [current[k]] for k in _WHAT} | {"model": current.get("model_accepts", [])}
    differ = [_WHAT[k] for k in _WHAT if saved.get(k) not in accepted[k]]
    if differ:
        changed = _changed(saved.get(SETTINGS, {}), current[SETTINGS])
        # venncell-train's settings are given again on the command line; Hydra has already rewritten .hydra/ with
        # this attempt's, and config_resolved.yaml still holds the run's own
        record = Path(path).parents[2] / "config_resolved.yaml"
        given = (
            f" That run's settings are in {record}: give them again with resume=true."
            if record.exists()
            else ""
        )
        raise VennCellInputError(
            f"resume=true, but checkpoint {path} belongs to a run with other {' and other '.join(differ)}"
            + (f" ({changed})" if changed else "")
            + ". Resume with the same settings and data, or start afresh (resume=false) in a new run folder."
            + given
        )


def _changed(saved: dict, current: dict) -> str:
    """The settings that differ between a checkpoint's run and this one, as ``name: then -> now`` (checkpoints
    written before the settings were kept have none to compare)."""
    out = []
    for group in ("model", "training"):
        then, now = saved.get(group), current.get(group, {})
        if then is None:
            continue
        # a field newer than the checkpoint did there what ADDED_FIELDS says
        then = {**ADDED_FIELDS, **then} if group == "model" else then
        out += [
            f"{k}: {then.get(k)!r} in the checkpoint, {now.get(k)!r} now"
            for k in sorted(set(then) | set(now))
            if json.dumps(then.get(k)) != json.dumps(now.get(k))
        ]
    return "; ".join(out)


def clear_stale_checkpoints(run_dir: Path) -> None:
    """A fresh run (resume=false) in a folder holding an earlier run's checkpoints: they are removed, so that a
    later resume cannot continue the earlier run."""
    folder = Path(run_dir) / "checkpoints"
    if folder.exists() and any(folder.rglob("*.ckpt")):
        log.warning(
            "%s holds checkpoints of an earlier run; starting afresh (resume=false), they are removed.",
            folder,
        )
        shutil.rmtree(folder)
