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
    needs it, shared x private interactions included. Both get percentile bootstrap CIs over cells; the per-modality
    means (``AttributionResult.modalities``) get the bootstrap's spread around the estimate (``centred_ci``).
    Features whose full EV is <= 0 have no fraction (NaN).

    With Venn regions (``venn_regions`` = ``pairs`` or ``all``) a feature's decoder also reads the blocks of the
    regions that contain its modality. Each block's part of the feature's EV (``ev_in_shared``,
    ``ev_in_<region>``, ``ev_in_private``) is the EV lost when that block alone is marginalised, normalised over the
    blocks so the parts add up to the full EV. ``AttributionResult.regions`` says how big each block is: the mean
    EV it holds of each member's features, and ``empty`` when that is below 1 % for every member.

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
      * ``not captured`` -- the best block scores < ``min_score`` or its permutation p-value >= ``alpha``. That
        p-value (``p_value`` of the markers table) counts the choice of the best of the blocks and probes: each
        permutation's best score is its null (a max-statistic test); the per-score ``p_value`` of
        ``marker_scores`` is each score's own.
      * For each modality m, the gain ``score(shared+private:m) - score(shared)`` is tested with the paired
        bootstrap (one-sided p = (1 + draws with gain <= 0) / (1 + draws)). m *adds* when p < ``alpha`` and the gain
        is material: at least ``min_gain`` times the best score (with many cells, tiny gains -- e.g. a
        little leakage between blocks -- are significant without meaning anything).
      * ``shared_fraction = score(shared) / score(best block)`` (clipped to [0, 1]).
      * ``shared`` -- no modality adds.
      * ``specific to <m>`` -- m adds and ``shared_fraction <= specific_max`` (several: ``m1 + m2``).
      * ``partly shared (x % shared)`` -- otherwise; ``private_modalities`` names the private blocks that add.
      * With Venn regions, each region r is tested like a private block (``score(shared+region:r) - score(shared)``)
        and ``regions`` names those that add (never one the block table reports empty); when only regions add and
        ``shared_fraction <= specific_max`` the verdict is ``shared by <r>`` (e.g. ``shared by atac+rna``), and
        ``specific to m and shared by r`` when both kinds add.

Latent dimensions
    PCA of each latent block on the attributed cells, and the features (all modalities, on the
    encoders' scale: log1p counts per 10k, 0/1 or values) most correlated with each component.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd

from venncell.analysis.cell_weights import cell_modality_weights
from venncell.analysis.direction_variance import direction_variance
from venncell.analysis.directions import (
    block_directions,
    dimension_view,
    direction_markers,
    write_loadings,
)
from venncell.analysis.features import (
    feature_attribution,
    modality_summary,
    region_table,
    top_features,
    write_var_columns,
)
from venncell.analysis.markers import (
    infer_kind,
    marker_blocks,
    marker_groups,
    probe_markers,
    resolve_marker,
)
from venncell.analysis.probes import PROBES
from venncell.analysis.writers import AttributionResult, concat_frames
from venncell.data.validate import (
    VennCellInputError,
    VennCellInputWarning,
    check_range,
    config_from,
    user_stacklevel,
)
from venncell.module.embed import embed_cells, stage1_latents
from venncell.module.regions import block_key


@dataclass
class AttributionConfig:
    """Knobs of ``VennCell.attribution``; the verdict thresholds are documented in the module docstring."""

    n_folds: int = 5
    n_boot: int = 200  # bootstrap draws over cells (CIs, paired gain tests)
    n_perm: int = 100  # permutations per probe (p-values); the smallest p is 1 / (n_perm + 1)
    n_marginal: int = 8  # permutations averaged to marginalise a private block
    knn_k: int = 15
    ridge_alpha: float = (
        1.0  # latents are standardised and low-dimensional: a little shrinkage suffices
    )
    probe: str = "best"  # probe behind the verdict: best (per block) | linear | knn
    alpha: float = 0.05
    min_score: float = 0.05
    min_gain: float = 0.1
    specific_max: float = 0.25
    shared_estimate: str = "auto"  # auto | decoder | marginal (see module docstring)
    max_cells: int = 3000  # random subsample of cells for every view (0 = all)
    n_components: int = 5
    top_n: int = 10
    ci: float = 0.95
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.probe not in ("best", *PROBES):
            raise VennCellInputError(
                f"probe must be 'best', 'linear' or 'knn', got {self.probe!r}."
            )
        if self.shared_estimate not in ("auto", "decoder", "marginal"):
            raise VennCellInputError(
                f"shared_estimate must be 'auto', 'decoder' or 'marginal', got {self.shared_estimate!r}."
            )
        for name, low in (
            ("n_folds", 2),
            ("n_boot", 1),
            ("n_perm", 1),
            ("n_marginal", 1),
            ("knn_k", 1),
            ("max_cells", 0),
            ("n_components", 1),
            ("top_n", 1),
            ("seed", 0),
        ):
            check_range(f"attribution {name}", getattr(self, name), low, integer=True)
        check_range("attribution ridge_alpha", self.ridge_alpha, 0.0)
        if self.ridge_alpha == 0:  # an unshrunk probe on collinear latents is singular
            raise VennCellInputError("attribution ridge_alpha must be above 0 (the default is 1).")
        for name in ("alpha", "min_score", "min_gain", "specific_max", "ci"):
            if not 0 <= getattr(self, name) <= 1:
                raise VennCellInputError(f"{name} must lie in [0, 1], got {getattr(self, name)}.")
        if self.alpha == 0:
            raise VennCellInputError(
                "alpha must be above 0: no p-value is below 0 (the default is 0.05)."
            )
        # no p-value could pass: every marker would read "not captured"
        if 1 / (self.n_perm + 1) >= self.alpha:
            need = int(np.floor(1 / self.alpha))
            raise VennCellInputError(
                f"n_perm={self.n_perm} permutations cannot give a p-value below alpha={self.alpha} (the smallest "
                f"is 1/(n_perm+1)); use n_perm >= {need}"
                + (", or the default 100." if need <= 100 else ".")
            )


def attribute(
    module,
    data,
    mdata,
    markers: list[str] | str | None = None,
    write_var: bool = True,
    **kwargs,
) -> AttributionResult:
    """Feature, marker and latent-dimension attribution of a trained module on its training data (module docstring).

    Parameters
    ----------
    module
        The trained ``VennModule``.
    data
        Its training data (``MultiModalData``).
    mdata
        The MuData behind ``data`` (markers read its ``.obs``; ``write_var`` writes its ``.var``).
    markers
        Names of ``.obs`` columns or features (``"CD4"`` or ``"protein:CD4"``; ``"obs:x"`` forces an ``.obs``
        column). ``None`` = every categorical ``.obs`` column with 2-50 categories; ``[]`` = none.
    write_var
        Store per-feature fractions in ``mdata[mod].var`` (``venn_shared_fraction``, ...).
    **kwargs
        ``AttributionConfig`` fields.
    """
    cfg = make_config(kwargs)
    if markers is None:
        markers = default_markers(mdata)
        if not markers:
            held = [
                f"{m}:{c}"
                for m, a in getattr(mdata, "mod", {}).items()
                for c in default_markers(a)
                if m in data.specs
            ]
            warnings.warn(
                "attribution: no markers were named and mdata.obs has no categorical column with 2-50 categories "
                "(cell types, clusters), so no marker is probed; the feature and latent-dimension tables are "
                "made. Name markers: model.attribution(['cell_type', 'rna:CD4'])"
                + (f", or a modality's .obs column such as {held[:3]}." if held else "."),
                VennCellInputWarning,
                stacklevel=user_stacklevel(),
            )
    elif isinstance(markers, str):
        markers = [markers]
    else:
        markers = list(markers)
    rng = np.random.default_rng(cfg.seed)
    n = data.n_cells
    idx = (
        np.sort(rng.choice(n, cfg.max_cells, replace=False))
        if 0 < cfg.max_cells < n
        else np.arange(n)
    )
    resolved = [
        resolve_marker(mdata, data, name, idx) for name in markers
    ]  # fail fast, before the long steps
    # no gain could pass: no private block would ever add (only markers have gains)
    if resolved and 1 / (cfg.n_boot + 1) >= cfg.alpha:
        need = int(np.floor(1 / cfg.alpha))
        raise VennCellInputError(
            f"n_boot={cfg.n_boot} bootstrap draws cannot give a gain's p-value below alpha={cfg.alpha} (the "
            f"smallest is 1/(n_boot+1)); use n_boot >= {need}"
            + (", or the default 200." if need <= 200 else ".")
        )
    mods = list(data.specs)
    with _progress(cfg.progress) as bar:
        task = bar.add_task("attribution", total=len(mods) + len(resolved) + 1)
        lat = embed_cells(module, data, idx)
        directions = block_directions(data, idx, lat, cfg)
        features, summaries, boots, drops = {}, [], {}, {}
        for m in mods:
            bar.update(task, description=f"features of {m}")
            features[m], boots[m], drops[m] = feature_attribution(
                module, data, m, idx, lat, cfg, rng, directions
            )
            summaries.append(modality_summary(m, boots[m], cfg))
            bar.advance(task)
        blocks = region_table(module, features, lat)
        empty = {
            b.split(":", 1)[1]
            for b in blocks.loc[blocks["empty"], "block"]
            if b.startswith("shared:")
        }
        rows, score_rows = {}, []
        for i, group in enumerate(marker_groups(resolved)):
            bar.update(task, description=f"markers {', '.join(mk.name for mk in group)[:60]}")
            got, scores = probe_markers(
                {mk.name: mk.values for mk in group},
                marker_blocks(module, data, group[0], idx, lat),
                mods,
                cfg,
                {mk.name: mk.kind for mk in group},
                empty_regions=empty,
                warn_incomplete=i == 0,
            )
            rows.update(
                {mk.name: {"marker": mk.name, "source": mk.source, **got[mk.name]} for mk in group}
            )
            score_rows.append(scores)
            bar.advance(task, len(group))
        bar.update(task, description="latent dimensions")
        dims = dimension_view(directions, cfg)
        components = direction_variance(directions, drops)
        associations = direction_markers(directions, lat, resolved)
        weights = cell_modality_weights(
            module, data, stage1_latents(module, data)["shared"][idx], idx
        )
        bar.advance(task)
    if write_var:
        write_var_columns(mdata, features)
        write_loadings(mdata, directions)
    return AttributionResult(
        config=cfg,
        features=features,
        modalities=pd.DataFrame(summaries),
        regions=blocks,
        top_features={m: top_features(df, cfg.top_n) for m, df in features.items()},
        markers=_marker_table([rows[mk.name] for mk in resolved]),
        marker_scores=concat_frames(score_rows, ["marker", "block", "probe"]),
        dimensions=dims,
        components=components,
        direction_markers=associations,
        obs_names=data.obs_names[idx],
        marker_values={mk.name: mk.values for mk in resolved},
        cell_weights=weights,
        latents={
            b: lat[b]
            for b in ["shared", *(block_key(r) for r in module.regions)]
            + [f"private:{m}" for m in mods]
        },
    )


# the columns every marker row has whatever the model (intervals and per-modality gains besides): a run without
# markers keeps them, so res.markers[["marker", "verdict"]] works
MARKER_COLUMNS = [
    "marker",
    "source",
    "kind",
    "n_cells",
    "best_block",
    "best_score",
    "p_value",
    "shared_score",
    "shared_fraction",
    "private_modalities",
    "verdict",
    "note",
]


def _marker_table(rows: list[dict]) -> pd.DataFrame:
    """One row per marker, with every ``MARKER_COLUMNS`` column whatever the markers (a note only some have)."""
    table = pd.DataFrame(rows)
    for col in MARKER_COLUMNS:
        if col not in table:
            table[col] = "" if col == "note" else np.nan
    return table


def make_config(kwargs: dict) -> AttributionConfig:
    return config_from(AttributionConfig, kwargs, "attribution")


def default_markers(mdata) -> list[str]:
    """Categorical ``.obs`` columns with 2-50 categories (cell types, clusters), VennCell's own excluded."""
    out = []
    for col in mdata.obs.columns:
        s = mdata.obs[col]
        if col.startswith("venn_") or infer_kind(s) == "continuous":
            continue
        if 2 <= s.nunique(dropna=True) <= 50:
            out.append(str(col))
    return out


@contextmanager
def _progress(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from venncell.train.progress import display

    # in a notebook without ipywidgets rich draws nothing and warns at every bar
    enabled = enabled and display() != "text"
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        disable=not enabled,
    ) as bar:
        yield bar
