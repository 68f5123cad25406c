"""Which modalities to measure and which to predict: how much of each modality a trained model recovers from the
others, per feature and in total, on cells the networks never trained on.

For a target modality ``t`` and each non-empty subset ``S`` of the other modalities, the shared latent is embedded
by the encoders of ``S`` alone and ``t``'s shared-only decoder predicts ``t`` from it -- what
``VennCell.predict_modality(source=S, target=t)`` returns. Everything is on the decoders' normalised scale (see
``venncell.analysis.features``).

Per feature of ``t``
    ``r2_measured``: explained variance of the full decoder at the cell's own latents, every modality measured;
    the part of the feature the model can explain at all (the rest is noise to it). ``r2_from_<S>`` and
    ``pearson_from_<S>``: accuracy of the prediction from ``S``. ``recoverable``:
    ``r2_predicted / max(r2_measured, r2_predicted)`` (clipped to [0, 1]) for the best subset -- the fraction of
    the explainable signal that a future experiment keeps without measuring ``t`` (measuring ``t`` gives at least
    what predicting it does, so the better of the two is the reference); undefined (NaN) for a feature the model
    does not explain (that reference below ``min_r2``). Percentile bootstrap CIs over cells.

Verdict (``PlanConfig`` thresholds)
    * ``unexplained`` -- ``max(r2_measured, r2_predicted) < min_r2``: the model explains too little of it to say.
    * ``predict`` -- ``recoverable >= predict_min``: most of its explainable signal is shared with ``S``.
    * ``measure`` -- otherwise: most of it is private to ``t`` (or to ``t`` and modalities outside ``S``).

Per modality (summary rows, one per target and subset)
    ``recoverable``: mean ``r2_from_S`` over mean ``max(r2_measured, r2_from_S)`` (each R^2 floored at -1, the
    expected score of guessing a random cell's value, as in ``mean_r2_predicted``), over the features the model
    explains, with a bootstrap CI (its draws divide by the estimate's variances, so a resample missing a sparse
    feature's few cells does not swing it); ``lost = 1 - recoverable`` is what not measuring ``t`` costs. Also
    the number of features in each verdict, and ``pooled_r2_predicted``: one R^2 over every feature's values
    together (1 - the summed squared errors over the summed variances), which the most variable features dominate
    (on counts, the most expressed), so it can be far above the features' mean R^2.

Cells are the held-out (validation) cells that have every modality, so every subset is scored on the same cells;
without enough of them, the training cells (in-sample, flagged in the result).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from venncell.analysis.features import normalised_observed
from venncell.analysis.probes import boot_weights, with_ci
from venncell.analysis.writers import _records
from venncell.data.files import atomic_write_text, file_part, output_folder
from venncell.data.spec import kind_hint
from venncell.data.validate import (
    MIN_CELLS,
    VennCellInputError,
    VennCellInputWarning,
    check_range,
    config_from,
    user_stacklevel,
)
from venncell.module.embed import embed_cells
from venncell.module.regions import block_key, region_name

R2_FLOOR = -1.0  # a feature's R^2 in the summary means: what guessing a random cell's value scores in expectation
MIN_HELD_OUT = 50  # fewer held-out cells than this give CIs too wide to plan with; fall back to training cells
# fewer than this: per-feature verdicts move with which cells are held out, more than their intervals show
FEW_HELD_OUT = 200


@dataclass
class PlanConfig:
    """Knobs of ``VennCell.plan_measurements``; the verdict rule is in the module docstring."""

    predict_min: float = 0.5  # recoverable fraction from which a feature is "predict"
    min_r2: float = 0.05  # max(r2_measured, r2_predicted) below this: "unexplained"
    n_boot: int = 200
    ci: float = 0.95
    max_cells: int = 3000  # random subsample of the cells scored (0 = all)
    max_subset: int = 3  # largest source subset scored (2^M subsets grow fast)
    seed: int = 0

    def __post_init__(self):
        for name in ("predict_min", "min_r2", "ci"):
            if not 0 <= getattr(self, name) <= 1:
                raise VennCellInputError(f"{name} must lie in [0, 1], got {getattr(self, name)}.")
        for name, low in (("n_boot", 1), ("max_subset", 1), ("max_cells", 0), ("seed", 0)):
            check_range(f"planner {name}", getattr(self, name), low, integer=True)
        if 0 < self.max_cells < MIN_CELLS:
            raise VennCellInputError(
                f"planner max_cells={self.max_cells}: at least {MIN_CELLS} cells are needed to plan (0 = all)."
            )


@dataclass
class PlanResult:
    """Per-target feature tables and the per-(target, sources) summary; ``write`` saves them as CSV and JSON."""

    config: PlanConfig
    features: dict[str, pd.DataFrame]
    summary: pd.DataFrame
    cells: str  # "held-out" or "training (in-sample)"
    n_cells: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "cells": self.cells,
            "n_cells": self.n_cells,
            "summary": _records(self.summary),
        }

    def write(self, out_dir: str | Path) -> list[Path]:
        """``plan.json``, ``plan_summary.csv`` and ``plan_features_<target>.csv``, each written whole."""
        import json

        out = output_folder(out_dir, "the plan tables")
        text = json.dumps(
            self.to_dict(), indent=1, allow_nan=False
        )  # fails before any file is written
        written = [atomic_write_text(out / "plan_summary.csv", self.summary.to_csv(index=False))]
        for t, df in self.features.items():
            written.append(
                atomic_write_text(out / f"plan_features_{file_part(t)}.csv", df.to_csv())
            )
        written.append(atomic_write_text(out / "plan.json", text))
        return written


def plan_measurements(
    module,
    data,
    is_train: np.ndarray,
    targets: list[str] | None = None,
    features: list[str] | None = None,
    **kwargs,
) -> PlanResult:
    """Measure-or-predict tables of a trained module (module docstring).

    Parameters
    ----------
    module, data, is_train
        The trained ``VennModule``, its training data and which cells trained the networks.
    targets
        Modalities to plan for (default: every one, or with ``features`` the modalities those features belong to).
    features
        A panel: only these features of the targets (e.g. the proteins of a planned panel); default all.
    **kwargs
        ``PlanConfig`` fields.
    """
    cfg = _make_config(kwargs)
    mods = list(data.specs)
    if len(mods) < 2:
        raise VennCellInputError(
            "Planning needs two or more modalities: one to predict and one to predict it from."
        )
    features = [features] if isinstance(features, str) else features
    if targets is None:
        targets = _modalities_of(features, data.specs) if features is not None else mods
    targets = [targets] if isinstance(targets, str) else list(targets)
    unknown = [t for t in targets if t not in mods]
    if unknown:
        raise VennCellInputError(
            f"targets {unknown} are not modalities of the model ({mods})."
            + kind_hint(unknown, data.specs)
        )
    if not targets:
        raise VennCellInputError(
            f"targets is empty: name the modalities to plan for (of {mods}), or leave it out for every one."
        )
    rng = np.random.default_rng(cfg.seed)
    cells, where = _cells(data, is_train, mods, cfg, rng)
    weights = boot_weights(len(cells), cfg.n_boot, rng)
    own = embed_cells(module, data, cells)
    tables, summary = {}, []
    for t in targets:
        keep = _panel(data.specs[t], features, t)
        others = [m for m in mods if m != t]
        subsets = [
            s
            for k in range(1, min(cfg.max_subset, len(others)) + 1)
            for s in combinations(others, k)
        ]
        shared_from = {
            region_name(s): embed_cells(module, data, cells, modalities=list(s))["shared"]
            for s in subsets
        }
        acc = _error_sums(module, data, t, cells, own, shared_from, weights, keep)
        table, rows = _tables(t, acc, data.specs[t].feature_names, keep, cfg, len(cells))
        tables[t] = table
        summary += rows
    return PlanResult(
        config=cfg,
        features=tables,
        summary=pd.DataFrame(summary),
        cells=where,
        n_cells=len(cells),
    )


def _make_config(kwargs: dict) -> PlanConfig:
    return config_from(PlanConfig, kwargs, "planner")


def _cells(data, is_train, mods, cfg, rng) -> tuple[np.ndarray, str]:
    complete = np.logical_and.reduce([data.present(m) for m in mods])
    held_out = np.flatnonzero(complete & ~np.asarray(is_train, bool))
    if len(held_out) >= MIN_HELD_OUT:
        cells, where = held_out, "held-out"
        if len(held_out) < FEW_HELD_OUT:
            warnings.warn(
                f"The plan is scored on {len(held_out)} held-out cells: a feature that a few cells of a rare type "
                "carry can change verdict with the cells held out (another seed), more than its interval shows. "
                "Read the per-modality summary, or per-feature verdicts whose interval lies on one side of "
                f"predict_min; for firmer ones train with a larger validation_fraction (this model's: "
                f"{1 - np.mean(is_train):.2g}) or on more cells.",
                VennCellInputWarning,
                stacklevel=user_stacklevel(),
            )
    else:
        cells, where = np.flatnonzero(complete), "training (in-sample)"
        warnings.warn(
            f"Only {len(held_out)} held-out cells have every modality (a plan needs {MIN_HELD_OUT} to score on held-out "
            f"cells); it is scored on the training cells and so flatters prediction. For held-out accuracies, "
            f"train on more cells measured with every modality or with a validation_fraction above this "
            f"model's {1 - np.mean(is_train):.2g}.",
            VennCellInputWarning,
            stacklevel=user_stacklevel(),
        )
    if len(cells) < MIN_CELLS:
        raise VennCellInputError(
            f"Only {len(cells)} cells have every modality ({mods}); planning compares modalities on the same "
            f"cells and needs at least {MIN_CELLS}."
        )
    if 0 < cfg.max_cells < len(cells):
        cells = np.sort(rng.choice(cells, cfg.max_cells, replace=False))
    return cells, where


def _modalities_of(features: list[str], specs: dict) -> list[str]:
    """The modalities a panel's features belong to (``"protein:CD4"`` or a plain ``"CD4"``), for a plan whose
    targets are left out. A plain name in several modalities (a gene and its protein) is ambiguous, and a name in
    none is an error."""
    names = {m: set(spec.feature_names) for m, spec in specs.items()}
    out = []
    for f in features:
        mod, sep, feat = f.partition(":")
        if sep and mod in names and feat in names[mod]:
            hits = [mod]
        else:
            hits = [m for m, n in names.items() if f in n]
        if len(hits) > 1:
            raise VennCellInputError(
                f"Panel feature {f!r} is a feature of {hits}; name it as one of "
                f"{[f'{m}:{f}' for m in hits]}, or pass targets=..."
            )
        out += [m for m in hits if m not in out]
    if not out:
        m, spec = next(
            ((m, s) for m, s in specs.items() if s.kind != "image"), next(iter(specs.items()))
        )
        raise VennCellInputError(
            f"None of the panel features {list(features)[:5]} is a feature of a modality of the model "
            f"({', '.join(specs)}); name them as in var_names, e.g. '{m}:{spec.feature_names[0]}'."
        )
    return out


def _panel(spec, features, t) -> np.ndarray:
    """Indices of the target's features in the panel (all when no panel is given)."""
    if features is None:
        return np.arange(spec.n_features)
    names = [f.split(":", 1)[1] if f.startswith(f"{t}:") else f for f in features]
    pos = {f: j for j, f in enumerate(spec.feature_names)}
    keep = [pos[f] for f in names if f in pos]
    if not keep:
        raise VennCellInputError(
            f"None of the panel features {list(features)[:5]} is a feature of '{t}'; name features of the "
            f"target (e.g. {list(spec.feature_names[:3])})."
        )
    return np.asarray(keep)


@torch.no_grad()
def _error_sums(module, data, t, cells, own, shared_from, weights, keep) -> dict[str, np.ndarray]:
    """Bootstrap-weighted sums (rows: point estimate + draws) of y, y^2 and each estimate's squared error, and
    point sums for the Pearson correlations; chunked so no cells x features error array is held."""
    spec = data.specs[t]
    full_dec, shared_dec = module.decoders[t], module.shared_decoders[t]
    lik = full_dec.likelihood
    acc: dict[str, np.ndarray] = {}

    def add(key, value):
        acc[key] = acc.get(key, 0.0) + value

    module.eval()
    for start in range(0, len(cells), 1024):
        rows = np.arange(start, min(start + 1024, len(cells)))
        batch = data.get(cells[rows])
        y = normalised_observed(spec, batch.x[t], batch.lib[t]).double().numpy()[:, keep]
        w = weights[:, rows]
        add("sy", w @ y)
        add("syy", w @ y**2)
        zs = torch.as_tensor(own["shared"][rows])
        zp = torch.as_tensor(own[f"private:{t}"][rows])
        zr = {r: torch.as_tensor(own[block_key(r)][rows]) for r in module.regions_of[t]}
        measured = full_dec(module.decoder_input(t, zs, zp, zr), batch.batch)
        preds = {"measured": lik.normalised_mean(measured)}
        for s, z in shared_from.items():
            preds[s] = lik.normalised_mean(shared_dec(torch.as_tensor(z[rows]), batch.batch))
        for name, p in preds.items():
            p = p.double().numpy()[:, keep]
            add(f"sse:{name}", w @ (y - p) ** 2)
            add(f"sp:{name}", p.sum(0))
            add(f"spp:{name}", (p**2).sum(0))
            add(f"syp:{name}", (y * p).sum(0))
    return acc


def _tables(t, acc, names, keep, cfg, n) -> tuple[pd.DataFrame, list[dict]]:
    sst = acc["syy"] - acc["sy"] ** 2 / n  # (1 + n_boot) x features
    sources = [k[4:] for k in acc if k.startswith("sse:") and k != "sse:measured"]
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = {
            s: np.where(sst > 0, 1.0 - acc[f"sse:{s}"] / sst, np.nan)
            for s in ["measured", *sources]
        }
        pearson = {s: _pearson(acc, s, n) for s in sources}
    # the best subset per feature, chosen on the point estimate and kept fixed across bootstrap draws
    stacked = np.stack([r2[s][0] for s in sources])
    best = np.nanargmax(np.where(np.isnan(stacked), -np.inf, stacked), axis=0)
    cols = np.arange(len(keep))
    pred = np.stack([r2[s] for s in sources])[best, :, cols].T  # (1 + n_boot) x features
    measured = r2["measured"]
    # measuring t gives at least what predicting it does: the reference is the better of the two (the full
    # decoder on held-out cells' encoder latents can fit worse than the shared-only prediction)
    reference = np.fmax(measured, pred)
    with np.errstate(divide="ignore", invalid="ignore"):
        recoverable = np.clip(pred / reference, 0.0, 1.0)
    # a draw in which neither measuring nor predicting explains anything recovers nothing (0: dropping it would
    # leave the interval to the draws that do); a draw without the feature's variance (NaN) and a feature the model
    # does not explain (``unexplained``) have no fraction
    recoverable[reference <= 0] = 0.0
    recoverable[:, ~(reference[0] >= cfg.min_r2)] = np.nan
    table = {"r2_measured": measured[0]}
    table.update(with_ci("r2_predicted", pred, cfg.ci))
    table["best_source"] = np.asarray(sources, dtype=object)[best]
    table.update(with_ci("recoverable", recoverable, cfg.ci))
    verdict = np.where(
        ~(reference[0] >= cfg.min_r2),
        "unexplained",
        np.where(recoverable[0] >= cfg.predict_min, "predict", "measure"),
    )
    table["verdict"] = verdict
    for s in sources:
        table[f"r2_from_{s}"] = r2[s][0]
        table[f"pearson_from_{s}"] = pearson[s]
    df = pd.DataFrame(table, index=pd.Index(np.asarray(names)[keep], name="feature"))
    df = df.sort_values("r2_predicted", ascending=False)
    df.insert(0, "rank", np.arange(1, len(df) + 1))

    explained = reference[0] >= cfg.min_r2
    # the summary's draws divide by the point estimate's variances: a resample that leaves out the few cells of a
    # sparse feature has a near-zero variance, an R^2 of minus hundreds and a mean over features dragged down with
    # it, so the interval missed its own estimate
    with np.errstate(divide="ignore", invalid="ignore"):
        fixed = {
            k: np.where(sst[0] > 0, 1.0 - acc[f"sse:{k}"] / sst[0], np.nan)
            for k in ["measured", *sources]
        }
    rows = []
    for s in sources:
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # no explained feature: NaN rows
            # each feature's R^2 floored at -1, what guessing a random cell's value scores in expectation, so one
            # near-constant feature cannot sink its modality's mean (a floor at 0 would bias the bootstrap draws
            # of the many features near 0 upwards, past their estimate)
            ref = np.fmax(fixed["measured"], fixed[s])[:, explained]
            frac = np.clip(
                np.nanmean(np.clip(fixed[s][:, explained], R2_FLOOR, None), 1)
                / np.nanmean(np.clip(ref, R2_FLOOR, None), 1),
                0,
                1,
            )
            own_frac = np.clip(r2[s][0] / np.fmax(measured[0], r2[s][0]), 0, 1)
            rows.append(
                {
                    "target": t,
                    "sources": s,
                    "n_cells": n,
                    "n_features": len(keep),
                    "n_explained": int(explained.sum()),
                    "mean_r2_measured": float(np.nanmean(measured[0, explained])),
                    "mean_r2_predicted": float(
                        np.nanmean(np.clip(r2[s][0, explained], R2_FLOOR, None))
                    ),
                    "pooled_r2_predicted": float(1.0 - acc[f"sse:{s}"][0].sum() / sst[0].sum()),
                    **{k: float(v) for k, v in with_ci("recoverable", frac, cfg.ci).items()},
                    "lost": float(1.0 - frac[0]),
                    "n_predict": int((explained & (own_frac >= cfg.predict_min)).sum()),
                    "n_measure": int((explained & ~(own_frac >= cfg.predict_min)).sum()),
                }
            )
    return df, rows


def _pearson(acc, s, n) -> np.ndarray:
    sy, syy = acc["sy"][0], acc["syy"][0]
    sp, spp, syp = acc[f"sp:{s}"], acc[f"spp:{s}"], acc[f"syp:{s}"]
    cov = syp - sy * sp / n
    var = (syy - sy**2 / n) * (spp - sp**2 / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(var > 0, cov / np.sqrt(var), np.nan)
