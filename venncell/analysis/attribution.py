"""Attribution: which latent block -- the shared one or a modality's private one -- carries a feature or a marker.

Three views of a trained ``VennCell``, computed on the encoder latents of (a subsample of) the training cells:

Features (every gene / peak / protein)
    Explained variance (EV, an R^2 against the observed data) of the feature under the full decoder
    ``f(shared, private_m)`` and under a shared-only estimate. Everything is on the decoders'
    *normalised* scale, the one ``VennCell.predict_modality(scale="normalised")`` returns: observed
    proportions ``x / library`` against expected proportions for count modalities, 0/1 against
    probabilities for binary ones, values for Gaussian ones. The shared-only estimate is the model's
    shared-only decoder (an estimate of ``E[x | shared]``) when it was trained, otherwise the full decoder
    with the private block marginalised (averaged over several permutations of it across cells). Also
    reported: the full decoder with the private block replaced by its mean, and with it permuted once.

    ``shared_fraction = EV(shared-only) / EV(full)`` (clipped to [0, 1]) is the part of what the decoder
    explains that needs no private latent; ``private_fraction = 1 - shared_fraction`` is the part that
    needs it, shared x private interactions included. Both get percentile bootstrap CIs over cells.
    Features whose full EV is <= 0 have no fraction (NaN).

Markers (a feature of any modality, e.g. protein ``CD4``, or any ``.obs`` column)
    Cross-validated probes -- ridge regression (linear) and k-nearest neighbours (nonlinear) -- predict the
    marker from each latent block: ``shared``, ``private:<m>``, ``shared+private:<m>`` and ``all``. Held-out
    predictions of every fold are pooled into one score: R^2 for a continuous marker, the Brier skill
    score (R^2 of the one-hot class indicators) for a categorical one; 0 is chance, 1 is perfect. Both
    probes are linear smoothers of the target, so a permutation test (refit on permuted targets) costs
    one matrix product per permutation; CIs are a paired bootstrap over cells of the held-out errors.

    No leakage for feature markers: a marker that is a feature of modality ``m`` is probed from a shared
    latent embedded by the *other* modalities' encoders only (``get_latent_representation(modalities=
    [others])``), so the shared score is what the rest of the cell reveals about it. Its own private
    block ``private:m`` necessarily comes from m's encoder; that encoder is run with the marker's own
    column replaced by its mean, so the private block can only know the marker through the other
    features of m that move with it.

    Verdict (thresholds are ``AttributionConfig`` fields):
      * ``not captured`` -- the best block scores < ``min_score`` or its permutation p-value >= ``alpha``.
      * For each modality m, the gain ``score(shared+private:m) - score(shared)`` is tested with the paired
        bootstrap (one-sided p = fraction of draws with gain <= 0). m *adds* when p < ``alpha`` and the gain
        is material: at least ``min_gain`` times the best score (with many cells, tiny gains -- e.g. a
        little leakage between blocks -- are significant without meaning anything).
      * ``shared_fraction = score(shared) / score(best block)`` (clipped to [0, 1]).
      * ``shared`` -- no modality adds.
      * ``specific to <m>`` -- m adds and ``shared_fraction <= specific_max`` (several: ``m1 + m2``).
      * ``partly shared (x % shared)`` -- otherwise; ``private_modalities`` names the private blocks that add.

Latent dimensions
    PCA of each latent block on held-out (validation) cells, and the features (all modalities, on the
    encoders' scale: log1p counts per 10k, 0/1 or values) most correlated with each component.
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.decomposition import PCA
from sklearn.model_selection import KFold

from venncell.data.dataset import make_loader
from venncell.data.validate import VennCellInputError

PROBES = ("linear", "knn")
VAR_PREFIX = "venn_"


@dataclass
class AttributionConfig:
    """Knobs of ``VennCell.attribution``; the verdict thresholds are documented in the module docstring."""

    n_folds: int = 5
    n_boot: int = 200          # bootstrap draws over cells (CIs, paired gain tests)
    n_perm: int = 100          # permutations per probe (p-values); the smallest p is 1 / (n_perm + 1)
    n_marginal: int = 8        # permutations averaged to marginalise a private block
    knn_k: int = 15
    ridge_alpha: float = 1.0   # latents are standardised and low-dimensional: a little shrinkage suffices
    probe: str = "best"        # probe behind the verdict: best (per block) | linear | knn
    alpha: float = 0.05
    min_score: float = 0.05
    min_gain: float = 0.1
    specific_max: float = 0.25
    shared_estimate: str = "auto"  # auto | decoder | marginal (see module docstring)
    max_cells: int = 3000      # random subsample of cells for every view (0 = all)
    n_components: int = 5
    top_n: int = 10
    ci: float = 0.95
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.probe not in ("best", *PROBES):
            raise VennCellInputError(f"probe must be 'best', 'linear' or 'knn', got {self.probe!r}.")
        if self.shared_estimate not in ("auto", "decoder", "marginal"):
            raise VennCellInputError(f"shared_estimate must be 'auto', 'decoder' or 'marginal', got {self.shared_estimate!r}.")
        if self.n_folds < 2 or self.n_boot < 1 or self.n_perm < 1 or self.n_marginal < 1:
            raise VennCellInputError("n_folds must be >= 2 and n_boot, n_perm, n_marginal >= 1.")
        for name in ("alpha", "min_score", "min_gain", "specific_max", "ci"):
            if not 0 <= getattr(self, name) <= 1:
                raise VennCellInputError(f"{name} must lie in [0, 1], got {getattr(self, name)}.")


@dataclass
class AttributionResult:
    """Tables of one attribution run; ``write`` saves them, ``venncell.analysis.report`` renders them."""

    config: AttributionConfig
    features: dict[str, pd.DataFrame]
    modalities: pd.DataFrame
    top_features: dict[str, dict[str, list[str]]]
    markers: pd.DataFrame
    marker_scores: pd.DataFrame
    dimensions: pd.DataFrame
    # For plots: latent blocks and marker values of the cells used (rows = obs_names).
    obs_names: np.ndarray = field(repr=False, default=None)
    latents: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    marker_values: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary (per-feature tables are in the CSVs only: they can be large)."""
        return {
            "config": asdict(self.config),
            "scale": "normalised (proportions for counts, probabilities for binary, values for Gaussian)",
            "modalities": _records(self.modalities),
            "top_features": self.top_features,
            "markers": _records(self.markers),
            "marker_scores": _records(self.marker_scores),
            "dimensions": _records(self.dimensions),
        }

    def write(self, out_dir: str | Path) -> list[Path]:
        """``attribution.json`` plus CSV tables; each written whole (temporary file, then rename)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tables = {f"attribution_features_{m}.csv": df for m, df in self.features.items()}
        tables.update({"attribution_modalities.csv": self.modalities, "attribution_markers.csv": self.markers,
                       "attribution_marker_scores.csv": self.marker_scores,
                       "attribution_dimensions.csv": self.dimensions})
        written = []
        for name, df in tables.items():
            written.append(_atomic_write(out / name, df.to_csv(index=name.startswith("attribution_features_"))))
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)  # strict JSON: NaN went to null in _records
        written.append(_atomic_write(out / "attribution.json", text))
        return written


# ---------------------------------------------------------------------------------------------- entry point
def attribute(model, markers: list[str] | str | None = None, write_var: bool = True, **kwargs) -> AttributionResult:
    """Feature, marker and latent-dimension attribution for a trained ``VennCell`` (see module docstring).

    markers: names of ``.obs`` columns or features (``"CD4"`` or ``"protein:CD4"``; ``"obs:x"`` forces an
    ``.obs`` column). ``None`` = every categorical ``.obs`` column with 2-50 categories; ``[]`` = none.
    write_var: store per-feature fractions in ``mdata[mod].var`` (``venn_shared_fraction``, ...).
    Other keywords are ``AttributionConfig`` fields.
    """
    cfg = _make_config(kwargs)
    model._require_trained()
    if getattr(model, "mdata", None) is None:
        raise VennCellInputError("attribution needs the training data: load the model with VennCell.load(dir, mdata=...).")
    markers = default_markers(model.mdata) if markers is None else [markers] if isinstance(markers, str) else list(markers)
    rng = np.random.default_rng(cfg.seed)
    n = model.data.n_cells
    idx = np.sort(rng.choice(n, cfg.max_cells, replace=False)) if 0 < cfg.max_cells < n else np.arange(n)
    resolved = [resolve_marker(model, name, idx) for name in markers]  # fail fast, before the long steps
    mods = list(model.specs)
    with _progress(cfg.progress) as bar:
        task = bar.add_task("attribution", total=len(mods) + len(resolved) + 1)
        lat = _embed(model, idx)
        features, summaries, boots = {}, [], {}
        for m in mods:
            bar.update(task, description=f"features of {m}")
            features[m], boots[m] = feature_attribution(model, m, idx, lat, cfg, rng)
            summaries.append(_modality_summary(m, boots[m], cfg))
            bar.advance(task)
        rows, score_rows = {}, []
        for group in _marker_groups(resolved):
            bar.update(task, description=f"markers {', '.join(mk.name for mk in group)[:60]}")
            got, scores = probe_markers({mk.name: mk.values for mk in group}, _marker_blocks(model, group[0], idx, lat),
                                        mods, cfg, {mk.name: mk.kind for mk in group})
            rows.update({mk.name: {"marker": mk.name, "source": mk.source, **got[mk.name]} for mk in group})
            score_rows.append(scores)
            bar.advance(task, len(group))
        bar.update(task, description="latent dimensions")
        dims = dimension_view(model, idx, lat, cfg)
        bar.advance(task)
    if write_var:
        write_var_columns(model.mdata, features)
    return AttributionResult(
        config=cfg, features=features, modalities=pd.DataFrame(summaries),
        top_features={m: _top_features(df, cfg.top_n) for m, df in features.items()},
        markers=pd.DataFrame([rows[mk.name] for mk in resolved]),
        marker_scores=_concat(score_rows, ["marker", "block", "probe"]), dimensions=dims,
        obs_names=model.data.obs_names[idx], marker_values={mk.name: mk.values for mk in resolved},
        latents={b: lat[b] for b in ["shared"] + [f"private:{m}" for m in mods]},
    )


def _make_config(kwargs: dict) -> AttributionConfig:
    known = {f.name for f in fields(AttributionConfig)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise VennCellInputError(f"Unknown attribution option(s) {unknown}; valid: {sorted(known)}.")
    return AttributionConfig(**kwargs)


def default_markers(mdata) -> list[str]:
    """Categorical ``.obs`` columns with 2-50 categories (cell types, clusters), VennCell's own excluded."""
    out = []
    for col in mdata.obs.columns:
        s = mdata.obs[col]
        if col.startswith("venn_") or _infer_kind(s) == "continuous":
            continue
        if 2 <= s.nunique(dropna=True) <= 50:
            out.append(str(col))
    return out


# ---------------------------------------------------------------------------------------------- latents
def _embed(model, idx: np.ndarray, modalities: list[str] | None = None, mask: tuple[str, int, float] | None = None):
    """Encoder latents of the cells ``idx``; ``mask=(m, j, fill)`` feeds m's encoder a constant feature j."""
    module = model.module
    module.eval()
    chunks: dict[str, list] = defaultdict(list)
    with torch.no_grad():
        for batch in make_loader(model.data, idx, 2048, shuffle=False):
            if mask is not None:
                m, j, fill = mask
                batch[f"x:{m}"][:, j] = fill
            for k, v in module.embed(batch, modalities).items():
                chunks[k].append(v.numpy())
    return {k: np.concatenate(v) for k, v in chunks.items()}


def combine_blocks(shared: np.ndarray, private: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The blocks a marker is probed from: shared, each private, shared + each private, and all."""
    blocks = {"shared": shared}
    blocks.update({f"private:{m}": p for m, p in private.items()})
    blocks.update({f"shared+private:{m}": np.hstack([shared, p]) for m, p in private.items()})
    blocks["all"] = np.hstack([shared, *private.values()])
    return blocks


def _marker_groups(markers: list["Marker"]) -> list[list["Marker"]]:
    """``.obs`` markers share one set of blocks; each feature marker needs its own (see _marker_blocks)."""
    obs = [mk for mk in markers if mk.source == "obs"]
    return ([obs] if obs else []) + [[mk] for mk in markers if mk.source != "obs"]


def _marker_blocks(model, mk: "Marker", idx: np.ndarray, lat: dict) -> dict[str, np.ndarray]:
    mods = list(model.specs)
    private = {m: lat[f"private:{m}"] for m in mods}
    if mk.source == "obs":
        return combine_blocks(lat["shared"], private)
    # A feature of modality m: shared from the other modalities only, private:m blind to the feature itself.
    m = mk.source
    others = [o for o in mods if o != m]
    x = model.data.x[m]
    fill = float(np.asarray(x[:, mk.feature].mean()))
    masked = _embed(model, idx, others, mask=(m, mk.feature, fill))
    private[m] = masked[f"private:{m}"]
    return combine_blocks(masked["shared"], private)


# ---------------------------------------------------------------------------------------------- features
def _normalised_observed(spec, x: torch.Tensor, lib: torch.Tensor) -> torch.Tensor:
    """Observed data on the decoders' normalised scale (what ``likelihood.normalised_mean`` predicts)."""
    return x / lib if spec.likelihood in ("nb", "zinb") else x  # nb_mixture's normalised scale is counts


def _decoder_variants(module, m: str, zs, zp_all, rows, perms, b) -> dict[str, torch.Tensor]:
    """Normalised decoder means for one chunk of cells under each way of (not) using the private block."""
    dec, lik = module.decoders[m], module.decoders[m].likelihood
    zp = zp_all[rows]

    def full(z_private):
        return lik.normalised_mean(dec(torch.cat([zs, z_private], 1), b))

    return {
        "full": full(zp),
        "shared_decoder": lik.normalised_mean(module.shared_decoders[m](zs, b)),
        "private_mean": full(zp_all.mean(0, keepdim=True).expand_as(zp)),
        "private_permuted": full(zp_all[perms[0][rows]]),
        "private_marginalised": torch.stack([full(zp_all[p[rows]]) for p in perms[1:]]).mean(0),
    }


_BOOTSTRAPPED = ("full", "shared_decoder", "private_marginalised")


def feature_attribution(model, m: str, idx: np.ndarray, lat: dict, cfg: AttributionConfig, rng):
    """Per-feature EVs and fractions for modality m (see module docstring) and their bootstrap draws.

    Sums of squares are accumulated chunk by chunk against a (1 + n_boot) x cells weight matrix (row 0 =
    all ones = the point estimate), so no cells x features array of errors is ever held.
    """
    data, module, spec = model.data, model.module, model.specs[m]
    keep = data.present(m)[idx]
    cells, pos = idx[keep], np.flatnonzero(keep)
    n = len(cells)
    if n < 3:
        raise VennCellInputError(f"Modality '{m}' has {n} cell(s) among those analysed; attribution needs at least 3.")
    weights = _boot_weights(n, cfg.n_boot, rng)
    zs_all = torch.as_tensor(lat["shared"][pos])
    zp_all = torch.as_tensor(lat[f"private:{m}"][pos])
    perms = [torch.as_tensor(rng.permutation(n)) for _ in range(cfg.n_marginal + 1)]
    acc: dict[str, np.ndarray] = defaultdict(float)
    module.eval()
    with torch.no_grad():
        for start in range(0, n, 1024):
            rows = torch.arange(start, min(start + 1024, n))
            batch = data.get(cells[rows.numpy()])
            y = _normalised_observed(spec, batch[f"x:{m}"], batch[f"lib:{m}"]).double().numpy()
            w = weights[:, rows.numpy()]
            acc["sy"] = acc["sy"] + w @ y
            acc["syy"] = acc["syy"] + w @ y**2
            preds = _decoder_variants(module, m, zs_all[rows], zp_all, rows, perms, batch.get("batch"))
            for v, p in preds.items():
                err = (y - p.double().numpy()) ** 2
                acc[v] = acc[v] + (w if v in _BOOTSTRAPPED else w[:1]) @ err
    sst = acc.pop("syy") - acc.pop("sy") ** 2 / n
    with np.errstate(divide="ignore", invalid="ignore"):
        ev = {v: np.where(sst[: len(s)] > 0, 1.0 - s / sst[: len(s)], np.nan) for v, s in acc.items()}
    shared_key = _shared_key(model, cfg)
    boot = {"full": ev["full"], "shared": ev[shared_key]}
    frac = _shared_fraction(boot["shared"], boot["full"])
    table = {"ev_full": ev["full"], "ev_shared": ev[shared_key]}
    table = {k: v for name, b in table.items() for k, v in _with_ci(name, b, cfg.ci).items()}
    table.update({f"ev_{v}": ev[v][0] for v in ("shared_decoder", "private_marginalised", "private_mean",
                                                "private_permuted")})
    table.update(_with_ci("shared_fraction", frac, cfg.ci))
    table.update(_with_ci("private_fraction", 1.0 - frac, cfg.ci))
    df = pd.DataFrame(table, index=pd.Index(spec.features, name="feature"))
    df.attrs["shared_estimate"] = shared_key
    return df, boot


def _shared_key(model, cfg: AttributionConfig) -> str:
    """The shared-only decoder estimates E[x | shared] directly (robust to a private block that carries some
    shared signal), but only when it was trained; otherwise marginalise the full decoder."""
    choice = cfg.shared_estimate
    if choice == "auto":
        choice = "decoder" if model.config.shared_only_weight > 0 else "marginal"
    return "shared_decoder" if choice == "decoder" else "private_marginalised"


def _shared_fraction(ev_shared: np.ndarray, ev_full: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ev_full > 0, np.clip(ev_shared / ev_full, 0.0, 1.0), np.nan)


def venn_regions(boot: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature Venn regions: shared EV and private EV, clipped so that 0 <= shared <= full."""
    full = np.clip(np.nan_to_num(boot["full"], nan=0.0), 0.0, None)
    shared = np.minimum(np.clip(np.nan_to_num(boot["shared"], nan=0.0), 0.0, None), full)
    return shared, full - shared


def _modality_summary(m: str, boot: dict[str, np.ndarray], cfg: AttributionConfig) -> dict:
    """Mean over features of the Venn regions; the shared share is a ratio of means (robust to the noisy
    fractions of features the decoder barely explains)."""
    shared, private = venn_regions(boot)
    s, p = shared.mean(1), private.mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(s + p > 0, s / (s + p), np.nan)
    out = {"modality": m, "n_features": shared.shape[1]}
    for name, v in (("ev_shared", s), ("ev_private", p), ("ev_explained", s + p), ("shared_share", share)):
        out.update(_with_ci(name, v, cfg.ci))
    out["ev_unexplained"] = 1.0 - out["ev_explained"]
    return out


def _top_features(df: pd.DataFrame, n: int) -> dict[str, list[str]]:
    shared, private = venn_regions({"full": df["ev_full"].to_numpy(), "shared": df["ev_shared"].to_numpy()})
    out = {}
    for region, ev in (("shared", shared), ("private", private)):
        top = np.argsort(-ev)[:n]
        out[region] = [str(df.index[i]) for i in top if ev[i] > 0]  # a region nothing falls in stays empty
    return out


def write_var_columns(mdata, features: dict[str, pd.DataFrame]) -> None:
    """Per-feature EVs and fractions (with CIs) as ``mdata[mod].var["venn_*"]`` columns."""
    for m, df in features.items():
        var = mdata.mod[m].var
        for col in df.columns:
            var[VAR_PREFIX + col] = df[col].reindex(var.index.astype(str)).to_numpy()


# ---------------------------------------------------------------------------------------------- markers
@dataclass
class Marker:
    name: str
    source: str            # "obs" or the modality the feature belongs to
    kind: str              # "continuous" | "categorical"
    values: np.ndarray     # one per analysed cell; NaN / None where unknown
    feature: int | None = None


def resolve_marker(model, name: str, idx: np.ndarray) -> Marker:
    """Find a marker among ``.obs`` columns and the modalities' features; clear errors when absent/ambiguous."""
    mdata, specs = model.mdata, model.specs
    name = str(name)
    hits: list[tuple[str, str]] = []
    if name.startswith("obs:") and name[4:] in mdata.obs.columns:
        hits.append(("obs", name[4:]))
    if name in mdata.obs.columns:
        hits.append(("obs", name))
    mod, _, feat = name.partition(":")
    if feat and mod in specs and feat in specs[mod].features:
        hits.append((mod, feat))
    hits += [(m, name) for m, s in specs.items() if name in s.features]
    if not hits:
        raise VennCellInputError(_unknown_marker_message(name, mdata, specs))
    if len(hits) > 1:
        names = [f"obs:{f}" if s == "obs" else f"{s}:{f}" for s, f in hits]
        raise VennCellInputError(f"Marker {name!r} is ambiguous: it names {names}. Use one of those qualified names.")
    source, key = hits[0]
    if source == "obs":
        col = mdata.obs[key].iloc[idx]  # mdata.obs rows are the model's cells, in order
        kind = _infer_kind(col)
        values = col.astype(object if kind == "categorical" else float).to_numpy()
        return Marker(name, "obs", kind, values)
    j = specs[source].features.index(key)
    return Marker(name, source, "continuous", _feature_values(model, source, j, idx), feature=j)


def _infer_kind(values) -> str:
    """Numbers are continuous; strings, categories and booleans are categorical."""
    s = pd.Series(values) if not isinstance(values, pd.Series) else values
    numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    return "continuous" if numeric else "categorical"


def _unknown_marker_message(name: str, mdata, specs) -> str:
    obs = [str(c) for c in mdata.obs.columns]
    candidates = obs + [f"{m}:{f}" for m, s in specs.items() for f in s.features]
    close = difflib.get_close_matches(name, candidates + [f for s in specs.values() for f in s.features], n=3)
    where = ", ".join(f"{m} ({s.n_features} features)" for m, s in specs.items())
    shown = ", ".join(obs[:15]) + (" ..." if len(obs) > 15 else "")
    msg = (f"Marker {name!r} was not found. Looked for it as a column of mdata.obs ({shown or 'none'}) and as a "
           f"feature (var_name) of every modality: {where}.")
    if close:
        msg += f" Did you mean {close}?"
    return msg + " Name a feature of one modality as 'modality:feature'."


def _feature_values(model, m: str, j: int, idx: np.ndarray) -> np.ndarray:
    """One feature on the encoders' scale, NaN for cells without modality m."""
    data = model.data
    rows = data.row[m][idx]
    ok = rows >= 0
    out = np.full(len(idx), np.nan)
    x = log_normalised(model.specs[m], data.x[m][rows[ok]][:, [j]], data.library[m][rows[ok]])
    out[ok] = np.asarray(x.todense() if sp.issparse(x) else x).ravel()
    return out


def log_normalised(spec, x, library: np.ndarray):
    """The encoders' scale without torch: log1p counts per 10k for counts, the values otherwise (sparse kept)."""
    if spec.encoder_transform != "log1p_cp10k":
        return x
    scale = 1e4 / np.maximum(library, 1.0)
    if sp.issparse(x):
        x = sp.csr_matrix(sp.diags(scale) @ x)
        x.data = np.log1p(x.data)
        return x
    return np.log1p(np.asarray(x) * scale[:, None])


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


def probe_marker(values: np.ndarray, blocks: dict[str, np.ndarray], modalities: list[str],
                 cfg: AttributionConfig | None = None, kind: str | None = None, **kwargs) -> tuple[dict, pd.DataFrame]:
    """Probe one marker from every latent block and decide its verdict.

    ``blocks`` as from ``combine_blocks``; ``kind`` is inferred from the values when None. Returns the
    verdict row (dict) and the per-block, per-probe scores (DataFrame). Works on any latents, e.g. ones
    built from ground truth.
    """
    rows, scores = probe_markers({"marker": values}, blocks, modalities, cfg, {"marker": kind}, **kwargs)
    return rows["marker"], scores.drop(columns="marker")


def probe_markers(markers: dict[str, np.ndarray], blocks: dict[str, np.ndarray], modalities: list[str],
                  cfg: AttributionConfig | None = None, kinds: dict[str, str | None] | None = None,
                  **kwargs) -> tuple[dict[str, dict], pd.DataFrame]:
    """``probe_marker`` for several markers probed from the same blocks: markers known on the same cells
    share folds, permutations, bootstrap draws and -- since both probes are linear in the target -- fits."""
    cfg = cfg or _make_config(kwargs)
    kinds = kinds or {}
    finite = np.logical_and.reduce([np.isfinite(b).all(1) for b in blocks.values()])
    targets, groups = {}, defaultdict(list)
    for name, values in markers.items():
        kind = kinds.get(name) or _infer_kind(values)
        y, known, classes = _target(np.asarray(values), kind)
        targets[name] = (kind, y, classes)
        groups[(known & finite).tobytes()].append(name)
    rows, scores = {}, []
    for key, names in groups.items():
        cells = np.frombuffer(key, dtype=bool)
        for batch in _batches(names, [targets[n][1].shape[1] * (cfg.n_perm + 1) for n in names]):
            sub = {n: (targets[n][0], targets[n][1][cells], targets[n][2]) for n in batch}
            got_rows, got_scores = _probe_group(sub, {b: x[cells] for b, x in blocks.items()}, modalities, cfg)
            rows.update(got_rows)
            scores.append(got_scores)
    return {n: rows[n] for n in markers}, _concat(scores, ["marker", "block", "probe"])


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


def _probe_group(targets: dict[str, tuple], blocks: dict[str, np.ndarray], modalities: list[str],
                 cfg: AttributionConfig) -> tuple[dict[str, dict], pd.DataFrame]:
    """Markers whose targets are rows-aligned with ``blocks`` (cells already selected)."""
    n = len(next(iter(blocks.values())))
    degenerate = {name for name, (_, y, _) in targets.items() if n < 2 * cfg.n_folds or np.allclose(y.var(0).sum(), 0)}
    rows = {name: {"kind": targets[name][0], "n_cells": n, "verdict": "not captured",
                   "note": "too few cells or a constant marker"} for name in degenerate}
    live = [name for name in targets if name not in degenerate]
    if not live:
        return rows, pd.DataFrame()
    rng = np.random.default_rng(cfg.seed)
    folds = list(KFold(cfg.n_folds, shuffle=True, random_state=cfg.seed).split(np.arange(n)))
    perms = [rng.permutation(n) for _ in range(cfg.n_perm)]
    weights = _boot_weights(n, cfg.n_boot, rng)
    # Columns: per marker, its real target then each permutation of it.
    stacked, spans = [], {}
    for name in live:
        y = targets[name][1]
        start = sum(a.shape[1] for a in stacked)
        stacked.append(np.concatenate([y] + [y[p] for p in perms], axis=1))
        spans[name] = slice(start, start + stacked[-1].shape[1])
    y_all = np.concatenate(stacked, axis=1)
    sst = {name: _weighted_sst(targets[name][1], weights) for name in live}
    boot, score_rows = defaultdict(dict), []
    for block, x in blocks.items():
        for probe in PROBES:
            sq = (y_all - _out_of_fold(x, y_all, folds, probe, cfg)) ** 2
            for name in live:
                err = sq[:, spans[name]].reshape(n, cfg.n_perm + 1, -1).sum(2)
                scores = 1.0 - err.sum(0) / sst[name][0]
                draws = 1.0 - weights @ err[:, 0] / sst[name]
                boot[name][block, probe] = draws
                score_rows.append({"marker": name, "block": block, "probe": probe, **_with_ci("score", draws, cfg.ci),
                                   "p_value": (1 + np.sum(scores[1:] >= scores[0])) / (1 + cfg.n_perm)})
    score_df = pd.DataFrame(score_rows)
    for name in live:
        kind, _, classes = targets[name]
        mine = score_df[score_df["marker"] == name].drop(columns="marker")
        rows[name] = {"kind": kind, "n_cells": n, "classes": len(classes) or None,
                      **_verdict(mine, boot[name], modalities, cfg)}
    return rows, score_df


def _out_of_fold(x: np.ndarray, y: np.ndarray, folds, probe: str, cfg: AttributionConfig) -> np.ndarray:
    """Held-out predictions of every column of y. Both probes are linear in y, so the permuted targets in y's
    other columns are refitted for the cost of one matrix product."""
    pred = np.empty_like(y)
    for train, test in folds:
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-8
        xtr, xte = (x[train] - mu) / sd, (x[test] - mu) / sd
        if probe == "linear":
            ybar = y[train].mean(0)
            coef = np.linalg.solve(xtr.T @ xtr + cfg.ridge_alpha * np.eye(x.shape[1]), xtr.T @ (y[train] - ybar))
            pred[test] = ybar + xte @ coef
        else:
            k = min(cfg.knn_k, len(train))
            nbr = _knn_indices(xtr, xte, k)
            avg = sp.csr_matrix((np.full(nbr.size, 1.0 / k), nbr.ravel(), np.arange(0, nbr.size + 1, k)),
                                shape=(len(test), len(train)))
            pred[test] = avg @ y[train]
    return pred


def _knn_indices(xtr: np.ndarray, xte: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Brute-force k nearest training rows of each test row (plain numpy: latents are low-dimensional and
    folds small, where sklearn's per-call overhead would dominate)."""
    sq_tr = (xtr**2).sum(1)
    out = np.empty((len(xte), k), dtype=np.int64)
    for start in range(0, len(xte), chunk):
        block = xte[start : start + chunk]
        d = sq_tr[None, :] - 2.0 * block @ xtr.T  # + |x_test|^2, constant per row: irrelevant to the ranking
        out[start : start + chunk] = np.argpartition(d, k - 1, axis=1)[:, :k]
    return out


def _verdict(scores: pd.DataFrame, boot: dict, modalities: list[str], cfg: AttributionConfig) -> dict:
    """The rule of the module docstring, on the scores of the verdict probe."""
    point = scores.set_index(["block", "probe"])["score"]
    pvals = scores.set_index(["block", "probe"])["p_value"]
    blocks = list(dict.fromkeys(scores["block"]))
    probe = {b: (point[b].idxmax() if cfg.probe == "best" else cfg.probe) for b in blocks}
    draws = {b: boot[b, probe[b]] for b in blocks}
    best = max(blocks, key=lambda b: draws[b][0])
    shared = draws["shared"]
    out = {"best_block": best, **_with_ci("best_score", draws[best], cfg.ci),
           "p_value": pvals[best, probe[best]], **_with_ci("shared_score", shared, cfg.ci)}
    gains = {}
    for m in modalities:
        gain = draws[f"shared+private:{m}"] - shared
        gains[m] = float(np.mean(gain[1:] <= 0))
        out.update(_with_ci(f"gain_{m}", gain, cfg.ci))
        out[f"gain_{m}_p"] = gains[m]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(draws[best] > 0, np.clip(shared / draws[best], 0.0, 1.0), np.nan)
    out.update(_with_ci("shared_fraction", frac, cfg.ci))
    material = cfg.min_gain * max(out["best_score"], 0.0)
    adds = [m for m, p in gains.items() if p < cfg.alpha and out[f"gain_{m}"] >= material]
    adds.sort(key=lambda m: -out[f"gain_{m}"])
    out["private_modalities"] = ", ".join(adds)
    f = out["shared_fraction"]
    if out["best_score"] < cfg.min_score or out["p_value"] >= cfg.alpha:
        out["verdict"] = "not captured"
    elif not adds:
        out["verdict"] = "shared"
    elif f <= cfg.specific_max:
        out["verdict"] = f"specific to {' + '.join(adds)}"
    else:
        out["verdict"] = f"partly shared ({100 * f:.0f} % shared)"
    return out


# ---------------------------------------------------------------------------------------------- dimensions
def dimension_view(model, idx: np.ndarray, lat: dict, cfg: AttributionConfig) -> pd.DataFrame:
    """Top features (by |Pearson r|, all modalities) of each principal component of each latent block."""
    held_out = ~model.is_train[idx]
    pos = np.flatnonzero(held_out) if held_out.sum() >= 50 else np.arange(len(idx))
    feats = {m: _feature_matrix(model, m, idx[pos]) for m in model.specs}
    rows = []
    for block in ["shared"] + [f"private:{m}" for m in model.specs]:
        z = lat[block][pos]
        ok = np.isfinite(z).all(1)
        n_comp = min(cfg.n_components, z.shape[1], int(ok.sum()) - 1)
        if n_comp < 1:
            continue
        pca = PCA(n_components=n_comp, random_state=cfg.seed).fit(z[ok])
        pcs = np.full((len(z), n_comp), np.nan)
        pcs[ok] = pca.transform(z[ok])
        corr = np.vstack([_correlate(pcs, x, present) for x, present in feats.values()])
        names = [(m, f) for m in feats for f in model.specs[m].features]
        for c in range(n_comp):
            for rank, i in enumerate(np.argsort(-np.abs(corr[:, c]))[: cfg.top_n]):
                rows.append({"block": block, "component": f"PC{c + 1}",
                             "explained_variance_ratio": float(pca.explained_variance_ratio_[c]), "rank": rank + 1,
                             "modality": names[i][0], "feature": names[i][1], "correlation": float(corr[i, c])})
    return pd.DataFrame(rows)


def _feature_matrix(model, m: str, cells: np.ndarray):
    data = model.data
    rows = data.row[m][cells]
    present = rows >= 0
    x = log_normalised(model.specs[m], data.x[m][rows[present]], data.library[m][rows[present]])
    return x, present


def _correlate(pcs: np.ndarray, x, present: np.ndarray) -> np.ndarray:
    """Pearson r of every feature with every component, over cells that have both (sparse-friendly)."""
    z = pcs[present]
    ok = np.isfinite(z).all(1)
    z, x = z[ok], x[ok]
    n = len(z)
    z = (z - z.mean(0)) / (z.std(0) + 1e-12)
    mean = np.asarray(x.mean(0)).ravel()
    sq = x.multiply(x).mean(0) if sp.issparse(x) else (np.asarray(x) ** 2).mean(0)
    sd = np.sqrt(np.maximum(np.asarray(sq).ravel() - mean**2, 0.0))
    cov = np.asarray(x.T @ z) / max(n, 1)  # z is centred, so x's mean drops out
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd[:, None] > 0, cov / sd[:, None], 0.0)


# ---------------------------------------------------------------------------------------------- helpers
def _boot_weights(n: int, n_boot: int, rng) -> np.ndarray:
    """(1 + n_boot) x n cell weights: row 0 all ones (the estimate itself), then multinomial resamples."""
    return np.vstack([np.ones((1, n)), rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)])


def _weighted_sst(y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Total sum of squares of y's columns (pooled) under each row of cell weights."""
    total = weights.sum(1)
    return weights @ (y**2).sum(1) - ((weights @ y) ** 2).sum(1) / total


def _with_ci(name: str, draws: np.ndarray, ci: float) -> dict:
    """Row 0 is the estimate; the rest are bootstrap draws -> percentile interval (NaN draws ignored)."""
    draws = np.asarray(draws, dtype=float)
    if len(draws) < 2:
        return {name: draws[0], f"{name}_lo": draws[0], f"{name}_hi": draws[0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: features nothing explains
        q = np.nanpercentile(draws[1:], [(1 - ci) / 2 * 100, (1 + ci) / 2 * 100], axis=0)
    return {name: draws[0], f"{name}_lo": q[0], f"{name}_hi": q[1]}


@contextmanager
def _progress(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), disable=not enabled) as bar:
        yield bar


def _concat(frames: list[pd.DataFrame], first: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=first)
    df = pd.concat(frames, ignore_index=True)
    return df[first + [c for c in df.columns if c not in first]]


def _records(df: pd.DataFrame) -> list[dict]:
    return json.loads(df.to_json(orient="records")) if len(df) else []


def _atomic_write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


__all__ = ["AttributionConfig", "AttributionResult", "attribute", "combine_blocks", "default_markers",
           "feature_attribution", "probe_marker", "probe_markers", "resolve_marker", "venn_regions", "write_var_columns"]
