"""Marker attribution: which latent block -- shared, a modality's private one, or shared plus it -- predicts a
marker (a feature of any modality, or an ``.obs`` column), and the verdict (see ``venncell.analysis.attribution``)."""

from __future__ import annotations

import difflib
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.model_selection import KFold

from venncell.analysis.probes import PROBES, boot_weights, out_of_fold, weighted_sst, with_ci
from venncell.analysis.writers import concat_frames
from venncell.data.registry import copy_up
from venncell.data.transforms import log_normalised
from venncell.data.validate import (
    MIN_CELLS,
    VennCellInputError,
    VennCellInputWarning,
    user_stacklevel,
)
from venncell.module.embed import embed_cells
from venncell.module.regions import block_key


def combine_blocks(
    shared: np.ndarray,
    private: dict[str, np.ndarray],
    regions: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The blocks a marker is probed from: shared, each private, shared + each private, and all; with Venn regions
    also each region's block (``region:<r>``) and shared + it (``shared+region:<r>``)."""
    regions = regions or {}
    blocks = {"shared": shared}
    blocks.update({f"private:{m}": p for m, p in private.items()})
    blocks.update({f"shared+private:{m}": np.hstack([shared, p]) for m, p in private.items()})
    blocks.update({f"region:{r}": z for r, z in regions.items()})
    blocks.update({f"shared+region:{r}": np.hstack([shared, z]) for r, z in regions.items()})
    blocks["all"] = np.hstack([shared, *regions.values(), *private.values()])
    return blocks


def _regions(module, lat: dict) -> dict[str, np.ndarray]:
    return {r: lat[block_key(r)] for r in module.regions}


def marker_groups(markers: list[Marker]) -> list[list[Marker]]:
    """``.obs`` markers share one set of blocks; each feature marker needs its own (see _marker_blocks)."""
    obs = [mk for mk in markers if mk.source == "obs"]
    return ([obs] if obs else []) + [[mk] for mk in markers if mk.source != "obs"]


def marker_blocks(module, data, mk: Marker, idx: np.ndarray, lat: dict) -> dict[str, np.ndarray]:
    """The blocks a marker is probed from. A feature of modality m: the shared block from the other modalities
    only, and m's private block from m's encoder with the feature itself replaced by its mean."""
    mods = list(data.specs)
    private = {m: lat[f"private:{m}"] for m in mods}
    if mk.source == "obs":
        return combine_blocks(lat["shared"], private, _regions(module, lat))
    # A feature of modality m: shared from the other modalities only, private:m blind to the feature itself.
    m = mk.source
    others = [o for o in mods if o != m]
    fill = float(
        np.asarray(data.rows(m, np.flatnonzero(data.present(m)))[0][:, mk.feature].mean())
    )

    def hide(batch):
        batch.x[m][:, mk.feature] = fill

    masked = embed_cells(module, data, idx, others, edit=hide)
    private[m] = masked[f"private:{m}"]
    # a region's block from its members other than m (like shared): what the rest of the cell reveals
    return combine_blocks(masked["shared"], private, _regions(module, masked))


@dataclass
class Marker:
    name: str
    source: str  # "obs" or the modality the feature belongs to
    kind: str  # "continuous" | "categorical"
    values: np.ndarray  # one per analysed cell; NaN / None where unknown
    feature: int | None = None


def resolve_marker(mdata, data, name: str, idx: np.ndarray) -> Marker:
    """Find a marker among ``.obs`` columns and the modalities' features; clear errors when absent/ambiguous."""
    specs = data.specs
    name = str(name)
    hits: list[tuple[str, str]] = []
    modalities = getattr(mdata, "mod", {})
    if name.startswith("obs:") and name[4:] in mdata.obs.columns:
        hits.append(("obs", name[4:]))
    # "obs:rna:cell_type": the column of rna's .obs where rna also has a feature of that name
    held, _, column = name[4:].partition(":")
    if (
        name.startswith("obs:")
        and column
        and held in modalities
        and column in modalities[held].obs
    ):
        hits.append((f"obs of {held}", column))
    if name in mdata.obs.columns:
        hits.append(("obs", name))
    mod, _, feat = name.partition(":")
    if feat and mod in specs and feat in specs[mod].features:
        hits.append((mod, feat))
    # muon's name for a modality's .obs column ("rna:cell_type"), before or without mdata.pull_obs()
    if (
        feat
        and name not in mdata.obs.columns
        and mod in modalities
        and feat in modalities[mod].obs
    ):
        hits.append((f"obs of {mod}", feat))
    hits += [(m, name) for m, s in specs.items() if name in s.features]
    if not hits:
        raise VennCellInputError(_unknown_marker_message(name, mdata, specs))
    if len(hits) > 1:
        names = [
            f"obs:{f}"
            if s == "obs"
            else f"obs:{s[7:]}:{f}"
            if s.startswith("obs of ")
            else f"{s}:{f}"
            for s, f in hits
        ]
        raise VennCellInputError(
            f"Marker {name!r} is ambiguous: it names {names}. Use one of those qualified names."
        )
    source, key = hits[0]
    if source.startswith("obs"):
        # mdata.obs rows are the model's cells, in order; a modality's column is NaN for cells it lacks
        if source == "obs":
            column = mdata.obs[key]
        else:
            column = modalities[source[7:]].obs[key]
            if pd.api.types.is_integer_dtype(
                column
            ):  # whole numbers stay whole with cells missing
                column = column.astype("Int64")
            column = column.reindex(mdata.obs_names)
        col = column.iloc[idx]
        if col.isna().all():
            # probed on no cell, it would read "not captured", a verdict on nothing
            where = "mdata.obs" if source == "obs" else f"the .obs of '{source[7:]}'"
            raise VennCellInputError(
                f"Marker {name!r}: column '{key}' of {where} has no value for any of the {len(col)} cells "
                "(all NaN or None; e.g. lost when .obs was rebuilt or re-indexed). Fill it, or leave the "
                "marker out."
            )
        kind = infer_kind(col)
        _warn_if_ids(key, col, kind)
        values = col.astype(object if kind == "categorical" else float).to_numpy()
        return Marker(name, "obs", kind, values)
    j = specs[source].features.index(key)
    return Marker(name, source, "continuous", _feature_values(data, source, j, idx), feature=j)


def _warn_if_ids(key: str, col: pd.Series, kind: str) -> None:
    """Whole numbers with few values (cluster ids) are probed as a number, so the verdict would depend on how the
    clusters are numbered; say so and how to make them categories."""
    distinct = col.dropna().unique()
    if (
        kind == "continuous"
        and 2 < len(distinct) <= 50
        and pd.api.types.is_integer_dtype(col)
        and len(distinct) <= 0.05 * len(col)
    ):
        warnings.warn(
            f"Marker '{key}' holds {len(distinct)} whole numbers and is probed as a number (regression). If they "
            f"are labels such as cluster ids, make it a category: mdata.obs['{key}'] = "
            f"mdata.obs['{key}'].astype('category').",
            VennCellInputWarning,
            stacklevel=user_stacklevel(),
        )


def infer_kind(values) -> str:
    """Numbers are continuous; strings, categories and booleans are categorical."""
    s = pd.Series(values) if not isinstance(values, pd.Series) else values
    numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    return "continuous" if numeric else "categorical"


def _unknown_marker_message(name: str, mdata, specs) -> str:
    obs = [str(c) for c in mdata.obs.columns]
    candidates = obs + [f"{m}:{f}" for m, s in specs.items() for f in s.features]
    close = difflib.get_close_matches(
        name, candidates + [f for s in specs.values() for f in s.features], n=3
    )
    where = ", ".join(f"{m} ({s.n_features} features)" for m, s in specs.items())
    # the MuData's own columns first: columns pulled up from the modalities ('rna:n_genes') can be many
    modalities = getattr(mdata, "mod", specs)
    pulled = [c for c in obs if ":" in c and c.partition(":")[0] in modalities]
    listed = [c for c in obs if c not in pulled] + pulled
    shown = ", ".join(listed[:15]) + (" ..." if len(listed) > 15 else "")
    msg = (
        f"Marker {name!r} was not found. Looked for it as a column of mdata.obs ({shown or 'none'}) and as a "
        f"feature (var_name) of every modality: {where}."
    )
    mod, sep, feat = name.partition(":")
    if sep and mod != "obs" and mod not in specs:
        msg += f" '{mod}' is not a modality of the model ({', '.join(specs)})."
    # the name under the modality it names beats a string match: 'protein:CD4' means CD4_TotalSeqB there, not
    # rna:CD4; then the same name (in any case, or as a whole word of a feature's name) under another modality
    folded = (feat if sep else name).casefold()
    mods = sorted(specs, key=lambda m: m != mod) if sep else list(specs)
    found = [c for c in obs if c.casefold() == folded] if not sep or mod == "obs" else []
    for m in mods:
        for same in (lambda f: f.casefold() == folded, lambda f: folded in _words(f)):
            found += [f"{m}:{f}" for f in specs[m].features if same(f)]
        if found and sep and m == mod:
            break
    close = list(dict.fromkeys(found))[:5] or close
    column = feat if sep and mod == "obs" else name
    holders = [m for m in getattr(mdata, "mod", {}) if column in mdata.mod[m].obs]
    if holders:
        # one modality's column: merging several would mix what each measured (n_genes of rna and of atac)
        msg += f" It is a column of the .obs of {holders}: copy it up, e.g. {copy_up(column, holders[:1])}."
    images = [m for m, s in specs.items() if s.kind == "image"]
    if images:
        msg += (
            f" Pixels of image modalities ({', '.join(images)}) are not markers; put a per-cell summary (e.g. "
            "a stain's mean intensity) in mdata.obs and name that column."
        )
    if close:
        msg += f" Did you mean {close}?"
    return msg + " Name a feature of one modality as 'modality:feature'."


def _words(name: str) -> list[str]:
    """A feature name's words, case-folded: CD4_TotalSeqB, ADT-CD4 and cd4.1 hold 'cd4'; CD45RA does not."""
    return re.split(r"[^0-9a-z]+", name.casefold())


def _feature_values(data, m: str, j: int, idx: np.ndarray) -> np.ndarray:
    """One feature on the display scale (``log_normalised``), NaN for cells without modality m."""
    ok = data.present(m)[idx]
    out = np.full(len(idx), np.nan)
    x, lib = data.rows(m, idx[ok])
    x = log_normalised(data.specs[m], x[:, [j]], lib)
    out[ok] = np.asarray(x.todense() if sp.issparse(x) else x).ravel()
    return out


def _target(values: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, list]:
    """Target matrix (all cells x columns, one-hot for categories) and the cells where the marker is known."""
    if kind == "categorical":
        known = ~pd.isna(values)
        codes, classes = pd.factorize(pd.Series(values[known]).astype(str), sort=True)
        y = np.zeros((len(values), len(classes)))
        y[np.flatnonzero(known), codes] = 1.0
        return y, known, list(classes)
    values = np.asarray(values, dtype=float)
    return np.nan_to_num(values)[:, None], np.isfinite(values), []


def probe_marker(
    values: np.ndarray,
    blocks: dict[str, np.ndarray],
    modalities: list[str],
    cfg=None,
    kind: str | None = None,
    **kwargs,
) -> tuple[dict, pd.DataFrame]:
    """Probe one marker from every latent block and decide its verdict.

    ``blocks`` as from ``combine_blocks``; ``kind`` is inferred from the values when None. Returns the
    verdict row (dict) and the per-block, per-probe scores (DataFrame). Works on any latents, e.g. ones
    built from ground truth.
    """
    rows, scores = probe_markers(
        {"marker": values}, blocks, modalities, cfg, {"marker": kind}, **kwargs
    )
    return rows["marker"], scores.drop(columns="marker")


def probe_markers(
    markers: dict[str, np.ndarray],
    blocks: dict[str, np.ndarray],
    modalities: list[str],
    cfg=None,
    kinds: dict[str, str | None] | None = None,
    empty_regions=(),
    warn_incomplete: bool = True,
    **kwargs,
) -> tuple[dict[str, dict], pd.DataFrame]:
    """``probe_marker`` for several markers probed from the same blocks: markers known on the same cells
    share folds, permutations, bootstrap draws and -- since both probes are linear in the target -- fits.
    ``empty_regions``: regions the feature view found empty, which no verdict names (their encoders can still
    carry a member's private signal, which the probes would credit to the region); ``warn_incomplete``: warn
    when some cells lack a modality (once per attribution run, not per group of markers)."""
    if cfg is None:
        from venncell.analysis.attribution import make_config

        cfg = make_config(kwargs)
    kinds = kinds or {}
    finite = np.logical_and.reduce([np.isfinite(b).all(1) for b in blocks.values()])
    if finite.sum() < MIN_CELLS:
        raise VennCellInputError(
            f"Markers are probed on the cells measured in every modality ({', '.join(modalities)}), and only "
            f"{int(finite.sum())} of {len(finite)} are. Attribute markers on a model of modalities measured "
            "together, or pass markers=[] for the per-feature tables alone."
        )
    # a private block's gain is measured on cells that have it
    if warn_incomplete and not finite.all():
        warnings.warn(
            f"Markers are probed on the {int(finite.sum())} of {len(finite)} cells measured in every modality "
            f"({', '.join(modalities)}); the other {int((~finite).sum())} lack a private block. Verdicts of "
            "markers known mostly on those cells rest on few cells (n_cells in the markers table).",
            VennCellInputWarning,
            stacklevel=user_stacklevel(),
        )
    targets, groups = {}, defaultdict(list)
    for name, values in markers.items():
        kind = kinds.get(name) or infer_kind(values)
        y, known, classes = _target(np.asarray(values), kind)
        targets[name] = (kind, y, classes)
        groups[(known & finite).tobytes()].append(name)
    rows, scores = {}, []
    for key, names in groups.items():
        cells = np.frombuffer(key, dtype=bool)
        for batch in _batches(names, [targets[n][1].shape[1] * (cfg.n_perm + 1) for n in names]):
            sub = {n: (targets[n][0], targets[n][1][cells], targets[n][2]) for n in batch}
            got_rows, got_scores = _probe_group(
                sub, {b: x[cells] for b, x in blocks.items()}, modalities, cfg, empty_regions
            )
            rows.update(got_rows)
            scores.append(got_scores)
    return {n: rows[n] for n in markers}, concat_frames(scores, ["marker", "block", "probe"])


def _batches(names: list[str], widths: list[int], max_width: int = 20_000):
    """Split markers so that the stacked targets (real + permuted columns) stay a bounded size."""
    batch, width = [], 0
    for name, w in zip(names, widths):
        if batch and width + w > max_width:
            yield batch
            batch, width = [], 0
        batch.append(name)
        width += w
    if batch:
        yield batch


def _probe_group(
    targets: dict[str, tuple],
    blocks: dict[str, np.ndarray],
    modalities: list[str],
    cfg,
    empty_regions=(),
) -> tuple[dict[str, dict], pd.DataFrame]:
    """Markers whose targets are rows-aligned with ``blocks`` (cells already selected)."""
    n = len(next(iter(blocks.values())))
    degenerate = {
        name
        for name, (_, y, _) in targets.items()
        if n < 2 * cfg.n_folds or np.allclose(y.var(0).sum(), 0)
    }
    rows = {
        name: {
            "kind": targets[name][0],
            "n_cells": n,
            "classes": len(targets[name][2]) or None,
            "verdict": "not captured",
            "note": f"only {n} cells have its value and every modality (at least {2 * cfg.n_folds} needed)"
            if n < 2 * cfg.n_folds
            else "a constant marker: nothing to predict",
        }
        for name in degenerate
    }
    live = [name for name in targets if name not in degenerate]
    if not live:
        return rows, pd.DataFrame()
    rng = np.random.default_rng(cfg.seed)
    folds = list(KFold(cfg.n_folds, shuffle=True, random_state=cfg.seed).split(np.arange(n)))
    perms = [rng.permutation(n) for _ in range(cfg.n_perm)]
    weights = boot_weights(n, cfg.n_boot, rng)
    # Columns: per marker, its real target then each permutation of it.
    stacked, spans = [], {}
    for name in live:
        y = targets[name][1]
        start = sum(a.shape[1] for a in stacked)
        stacked.append(np.concatenate([y] + [y[p] for p in perms], axis=1))
        spans[name] = slice(start, start + stacked[-1].shape[1])
    y_all = np.concatenate(stacked, axis=1)
    sst = {name: weighted_sst(targets[name][1], weights) for name in live}
    boot, perm, score_rows = defaultdict(dict), defaultdict(dict), []
    for block, x in blocks.items():
        for probe in PROBES:
            sq = (y_all - out_of_fold(x, y_all, folds, probe, cfg.knn_k, cfg.ridge_alpha)) ** 2
            for name in live:
                err = sq[:, spans[name]].reshape(n, cfg.n_perm + 1, -1).sum(2)
                scores = 1.0 - err.sum(0) / sst[name][0]
                # a resample without a rare class's few cells has nothing to predict: no score (NaN, left out of
                # the intervals), not a division by zero
                with np.errstate(divide="ignore", invalid="ignore"):
                    draws = np.where(sst[name] > 0, 1.0 - weights @ err[:, 0] / sst[name], np.nan)
                boot[name][block, probe] = draws
                perm[name][block, probe] = scores
                score_rows.append(
                    {
                        "marker": name,
                        "block": block,
                        "probe": probe,
                        **with_ci("score", draws, cfg.ci),
                        # a score that is not a number is no evidence (its comparisons would all be False)
                        "p_value": (1 + np.sum(scores[1:] >= scores[0])) / (1 + cfg.n_perm)
                        if np.isfinite(scores[0])
                        else np.nan,
                    }
                )
    score_df = pd.DataFrame(score_rows)
    for name in live:
        kind, _, classes = targets[name]
        mine = score_df[score_df["marker"] == name].drop(columns="marker")
        rows[name] = {
            "kind": kind,
            "n_cells": n,
            "classes": len(classes) or None,
            **_verdict(mine, boot[name], modalities, cfg, empty_regions, perm[name]),
        }
        few = _smallest_class(targets[name][1]) if classes else None
        if few is not None and few < 2 * cfg.n_folds:
            rows[name]["note"] = (
                f"its smallest class has {few} cell(s): its score rests on them (wide intervals)"
                + (
                    "; a yes/no column for a rare population scores it on its own"
                    if len(classes) > 2
                    else ""
                )
            )
    return rows, score_df


def _smallest_class(y: np.ndarray) -> int:
    """Cells of a categorical marker's rarest class (``y``: one column per class, 0/1)."""
    return int(np.asarray(y).sum(0).min())


def _selected_p_value(perm: dict, blocks: list[str], probe: str, observed: float) -> float:
    """The permutation p-value of the best score over ``blocks`` (and over the probes, with ``probe="best"``): each
    permutation's scores go through the same choice of the best, so picking the best of many scores on the same
    cells is part of the test (a max-statistic test; the best one's own p-value is anti-conservative)."""
    if not np.isfinite(observed):
        return np.nan
    chosen = [
        np.nanmax([perm[b, q] for q in PROBES], axis=0) if probe == "best" else perm[b, probe]
        for b in blocks
    ]
    best_null = np.nanmax(np.vstack(chosen)[:, 1:], axis=0)
    return float((1 + np.sum(best_null >= observed)) / (1 + len(best_null)))


def _verdict(
    scores: pd.DataFrame, boot: dict, modalities: list[str], cfg, empty_regions, perm: dict
) -> dict:
    """The rule of the module docstring, on the scores of the verdict probe; ``empty_regions`` never add.
    ``perm``: each (block, probe)'s score on the real target then on each permutation of it."""
    point = scores.set_index(["block", "probe"])["score"]
    blocks = list(dict.fromkeys(scores["block"]))
    probe = {b: (point[b].idxmax() if cfg.probe == "best" else cfg.probe) for b in blocks}
    draws = {b: boot[b, probe[b]] for b in blocks}
    best = max(blocks, key=lambda b: draws[b][0])
    shared = draws["shared"]
    out = {
        "best_block": best,
        **with_ci("best_score", draws[best], cfg.ci),
        "p_value": _selected_p_value(perm, blocks, cfg.probe, draws[best][0]),
        **with_ci("shared_score", shared, cfg.ci),
    }
    gains = {}
    regions = [b.split(":", 1)[1] for b in blocks if b.startswith("shared+region:")]
    sources = {m: f"shared+private:{m}" for m in modalities}
    sources.update({r: f"shared+region:{r}" for r in regions})
    for name, block in sources.items():
        gain = draws[block] - shared
        # (1 + draws at or below 0) / (1 + draws), over the draws that have a score: never 0
        scored = gain[1:][np.isfinite(gain[1:])]
        gains[name] = float((1 + np.sum(scored <= 0)) / (1 + len(scored)))
        out.update(with_ci(f"gain_{name}", gain, cfg.ci))
        out[f"gain_{name}_p"] = gains[name]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(draws[best] > 0, np.clip(shared / draws[best], 0.0, 1.0), np.nan)
    out.update(with_ci("shared_fraction", frac, cfg.ci))
    material = cfg.min_gain * max(out["best_score"], 0.0)
    adds = [
        s
        for s, p in gains.items()
        if p < cfg.alpha and out[f"gain_{s}"] >= material and s not in empty_regions
    ]
    adds.sort(key=lambda s: -out[f"gain_{s}"])
    privates = [s for s in adds if s in modalities]
    shared_by = [s for s in adds if s in regions]
    out["private_modalities"] = ", ".join(privates)
    if regions:
        out["regions"] = ", ".join(shared_by)
    f = out["shared_fraction"]
    if out["best_score"] < cfg.min_score or out["p_value"] >= cfg.alpha:
        out["verdict"] = "not captured"
    elif not adds:
        out["verdict"] = "shared"
    elif f <= cfg.specific_max:
        parts = [f"specific to {' + '.join(privates)}"] if privates else []
        parts += [f"shared by {', '.join(shared_by)}"] if shared_by else []
        out["verdict"] = " and ".join(parts)
    else:
        out["verdict"] = f"partly shared ({100 * f:.0f} % shared)"
    return out
