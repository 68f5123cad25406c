"""Spectral initialisation of the stage-1 latent tables.

Latent optimisation from random starts settles in poor local optima: a private factor that a
random shared latent happens to encode stays there, and a private latent the decoder ignores at
the start dies. A linear start that already puts shared signal in the shared table and each
modality's own signal in its private table avoids both; stage 1 then refines it nonlinearly.

Shared: generalised CCA (MAXVAR) — the top principal components of the concatenated *whitened*
per-modality PCA scores are the directions most correlated across modalities.
Private m: top principal components of modality m's PCA scores after regressing out the shared start.
The starting components keep their relative variances (``_keep_spectrum``) rather than being whitened.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence

from venncell.data.dataset import MultiModalData
from venncell.data.samplers import chunk_groups
from venncell.data.transforms import encoder_input
from venncell.data.validate import VennCellInputError, VennCellInputWarning, user_stacklevel
from venncell.module.init_regions import venn_components

if TYPE_CHECKING:
    from sklearn.decomposition import PCA

log = logging.getLogger(__name__)
_DENSE_FALLBACK = 20_000  # features up to which a failed sparse PCA is redone densely


def _pca_input(data: MultiModalData, m: str, rows: np.ndarray):
    return (
        _image_pixels(data, m, rows)
        if data.specs[m].kind == "image"
        else _encoder_input(data, m, rows)
    )


def _fit_scores(pca: PCA, x, same_map: bool) -> np.ndarray:
    """Scores of the rows a PCA is fitted on. ``same_map``: through ``transform``, exactly the map other cells are
    placed by; ``fit_transform`` returns the (randomised) SVD's U·S instead, which differs from it on trailing
    components, and is kept when no other cell is placed, so such runs stay as they were."""
    return pca.fit(x).transform(x) if same_map else pca.fit_transform(x)


def _modality_scores(
    data: MultiModalData, m: str, rows: np.ndarray, k: int, seed: int, same_map: bool = False
) -> tuple[np.ndarray, PCA]:
    """PCA scores of modality m for the rows, and the fitted PCA (to place other cells with the same map)."""
    from sklearn.decomposition import PCA  # noqa: F811 (loaded on use: a second at import time)

    x = _pca_input(data, m, rows)
    if x.shape[1] < 2:  # one feature: its centred values are the only component
        x = x.toarray() if sp.issparse(x) else x
        pca = PCA(n_components=1, svd_solver="full")
        return _fit_scores(pca, np.asarray(x, dtype=np.float64), same_map), pca
    k = max(1, min(k, x.shape[1] - 1, x.shape[0] - 1))
    if sp.issparse(x):
        # arpack centres implicitly, so this is the dense PCA's answer without densifying tens of thousands
        # of peaks for every cell (covariance_eigh would build a features x features matrix)
        pca = PCA(n_components=k, random_state=seed, svd_solver="arpack")
        try:
            return _fit_scores(pca, x, same_map), pca
        except (ArpackError, ArpackNoConvergence) as e:
            if x.shape[1] > _DENSE_FALLBACK:
                raise VennCellInputError(
                    f"Modality '{m}': its principal components could not be computed ({e}); "
                    "check that modality for extreme or degenerate values."
                ) from None
            # a few features with far-apart scales can defeat arpack; densified, the exact solver cannot fail
            log.info("Modality %s: arpack failed (%s); using the dense PCA.", m, e)
            x = x.toarray()
    solver = "randomized" if min(x.shape) > 2 * k + 10 else "full"
    pca = PCA(n_components=k, random_state=seed, svd_solver=solver)
    return _fit_scores(pca, np.asarray(x, dtype=np.float64), same_map), pca


def _rows_sparse(data: MultiModalData, m: str, rows: np.ndarray, chunk: int = 1024):
    """Modality m's rows for the given cells (CSR when the data is sparse) and their libraries (>= 1, as batches).
    Backed data are read one chunk at a time and kept sparse; other modalities (images, say) are not read."""
    if not data.backed:
        x, lib = data.rows(m, rows)
        return x, np.maximum(lib, 1.0)
    parts = [data.rows(m, rows[i : i + chunk]) for i in range(0, len(rows), chunk)]
    x = sp.vstack([sp.csr_matrix(p[0]) for p in parts], format="csr")
    return x, np.maximum(np.concatenate([p[1] for p in parts]), 1.0)


def _encoder_input(data: MultiModalData, m: str, rows: np.ndarray):
    """``encoder_transform`` of the rows, computed on the sparse matrix when there is one.

    Counts are not scaled per feature before PCA (scanpy's ``scale``): scaling gives rare, noisy features the weight
    of informative ones and blurs the start's cell types on small real sets."""
    x, lib = _rows_sparse(data, m, rows)
    return encoder_input(data.specs[m], x, lib)


def _image_pixels(data: MultiModalData, m: str, rows: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Standardised pixels average-pooled to <= 16 x 16, read in chunks: PCA needs coarse shape and intensity,
    and full-resolution crops of many cells need not fit in memory."""
    from venncell.data.images import downsample

    spec = data.specs[m]
    return np.concatenate(
        [
            downsample(data.rows(m, rows[i : i + chunk])[0], spec.image_shape)
            for i in range(0, len(rows), chunk)
        ]
    )


def _whole_chunks(cells: np.ndarray, chunk_size: int, max_cells: int, rng) -> np.ndarray:
    """A random subsample made of whole on-disk chunks: backed data then reads only those chunks, each
    sequentially, instead of touching every chunk of the file for a few scattered cells."""
    groups = chunk_groups(cells, chunk_size)
    take = rng.permutation(len(groups))[: max(1, max_cells // chunk_size)]
    rows = np.concatenate([groups[g] for g in take])
    log.info(
        "Spectral init fitted on %d of %d cells (%d on-disk chunks); the other cells are placed by the fitted maps.",
        len(rows),
        len(cells),
        len(take),
    )
    return rows


def _align(s: np.ndarray, batch: np.ndarray, maps_m: dict) -> np.ndarray:
    """Scores with each cell's batch mean removed and, where a map was fitted, its batch's covariance mapped onto
    the pooled one (``maps_m``: batch -> (mean, matrix or None), from the fit rows of that batch)."""
    out = np.empty(s.shape, dtype=np.float64)
    for b in np.unique(batch):
        r = batch == b
        mean, shape = maps_m[b]
        out[r] = s[r] - mean if shape is None else (s[r] - mean) @ shape
    return out


def _matrix_power(c: np.ndarray, power: float) -> np.ndarray:
    """``c ** power`` of a covariance matrix (eigenvalues floored far below the largest, so it can be inverted)."""
    w, v = np.linalg.eigh(c)
    w = np.clip(w, 1e-6 * max(float(w.max()), 1e-12), None)
    return (v * w**power) @ v.T


def _warn_unmatched(codes, names: list | None, components: int, of: str) -> None:
    """The warning for batches (``codes``, named by ``names`` where given) whose covariance cannot be matched (they
    keep their mean only), with the fixes."""
    small = [str(names[b]) if names is not None else str(b) for b in codes]
    warnings.warn(
        f"start_batch_alignment='covariance': batches {small} have too few cells {of} "
        f"({5 * (components + 1)} needed for {components} components) to match their covariance; their starts have "
        "only their mean removed. Measure more of their cells, leave out a modality few of them have "
        "(modalities=[...] in setup_mudata, data.register=[...] on the command line), or use "
        "start_batch_alignment='mean'.",
        VennCellInputWarning,
        stacklevel=user_stacklevel(),
    )


def _batches_to_match(
    batch: np.ndarray, components: int, how: str, names: list | None, n_other: int
) -> list:
    """The batches of the fit rows whose covariance the start matches (``how`` = ``covariance``): those with enough
    fit rows to estimate one; the others are named in a warning and keep their mean only. None unless at least two
    batches are matched, counting the ``n_other`` batches without fit rows (matched later from all their cells)."""
    if how == "mean":
        return []
    codes = np.unique(batch)
    kept = [b for b in codes if _enough_to_place(int((batch == b).sum()), components)]
    if len(kept) < len(codes):
        _warn_unmatched(
            [b for b in codes if b not in kept], names, components, "with every modality"
        )
    return kept if len(kept) + n_other >= 2 else []


def _pooled_root(sc: np.ndarray) -> np.ndarray:
    """The square root of the pooled (Ledoit-Wolf) covariance: every matched batch's target."""
    from sklearn.covariance import ledoit_wolf

    return _matrix_power(ledoit_wolf(sc)[0], 0.5)


def _batch_map(sc: np.ndarray, root: np.ndarray) -> np.ndarray:
    """The matrix that maps one batch's (mean-removed) scores onto the pooled covariance (``root``: its square
    root): whitening by the batch's own Ledoit-Wolf covariance, so that its map is not driven by noise."""
    from sklearn.covariance import ledoit_wolf

    return _matrix_power(ledoit_wolf(sc)[0], -0.5) @ root


def _batch_shapes(sc: np.ndarray, batch: np.ndarray, kept: list) -> tuple[dict, np.ndarray | None]:
    """Per batch in ``kept``, the matrix that maps its (mean-removed) scores' covariance onto the pooled one, and
    the pooled covariance's square root (None without batches to match).

    A batch effect that scales features does not only shift a batch's scores: the same biology loads on other
    components in each batch, GCCA reads that as shared signal, and the batches start (and stay) apart. Matching
    each batch's covariance to the pooled one (whitening, then the pooled colouring) removes that, but also any
    difference in cell-type proportions between batches.
    """
    if not kept:
        return {}, None
    root = _pooled_root(sc[np.isin(batch, kept)])
    return {b: _batch_map(sc[batch == b], root) for b in kept}, root


def _keep_spectrum(z: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, float]]:
    """Centred, scaled so the mean per-dimension variance is 1, leading components staying larger; also returns the
    (centre, scale) used, to place other cells on the same axes.

    Whitening the starting components would give a weak trailing component as much weight in every distance as
    the leading one, blurring the starting neighbourhoods; decoders can rescale any latent axis, so this only
    changes where neighbourhoods start."""
    centre = z.mean(0)
    scale = float(np.sqrt(((z - centre) ** 2).mean(0).mean()) + 1e-8)
    return (z - centre) / scale, (centre, scale)


def spectral_init(
    data: MultiModalData,
    shared_dim: int,
    private_dims: dict[str, int],
    n_pcs: int = 30,
    seed: int = 0,
    max_cells: int = 50_000,
    place_chunk: int = 20_000,
    regions: dict[str, tuple[str, ...]] | None = None,
    region_dims: dict[str, int] | None = None,
    batch_alignment: str = "mean",
    batch_names: list[str] | None = None,
) -> tuple | None:
    """Starting latents for every cell (mean per-dimension variance 1), or None when too few cells have every
    modality.

    The maps (per-modality PCA, GCCA, private PCA of the residuals) are fitted on (at most ``max_cells``) cells
    that have every modality; every other cell is placed by the same maps (``_place_rest``). A cell lacking some
    modalities gets the least-squares prediction of its shared start from the modalities it has: from a random
    start such cells recover the shared factors worse, and leakage control trades recovery against leakage. When
    too few cells have every modality to place the others, a modality measured in few cells is left out of the
    fit (``_modalities_to_fit``).

    With ``regions`` (Venn regions), the starting directions are split between the shared and the region blocks
    (``venncell.module.init_regions``), every cell is placed by least squares, and the return value is
    ``(shared, private, {region: block})``.

    With batches, each modality's scores lose their batch's mean before GCCA and, with ``batch_alignment`` =
    ``covariance``, have their batch's covariance matched to the pooled one (``_batch_shapes``); ``batch_names``
    (by code) name batches in warnings.
    """
    from sklearn.decomposition import PCA  # noqa: F811 (loaded on use: a second at import time)

    rng = np.random.default_rng(seed)
    mods = list(data.specs) if regions else _modalities_to_fit(data, n_pcs)
    complete = np.flatnonzero(np.logical_and.reduce([data.present(m) for m in mods]))
    if len(complete) < max(10, shared_dim + 2):
        return None
    fit_rows = (
        complete if len(complete) <= max_cells else rng.choice(complete, max_cells, replace=False)
    )
    if getattr(data, "backed", False) and len(complete) > max_cells:
        fit_rows = _whole_chunks(complete, data.chunk_size, max_cells, rng)
    fit_rows = np.sort(fit_rows)
    rest = np.setdiff1d(np.arange(data.n_cells), fit_rows)
    same_map = len(rest) > 0
    fitted = {m: _modality_scores(data, m, fit_rows, n_pcs, seed, same_map) for m in mods}
    scores = {m: sc for m, (sc, _) in fitted.items()}
    maps = {"pca": {m: pca for m, (_, pca) in fitted.items()}, "batch": {}}
    if data.batch is not None:
        # a batch effect shows in every modality, so GCCA would call it shared; the decoders see the batch,
        # so the latents should start without it
        batch = data.batch[fit_rows]
        components = max(sc.shape[1] for sc in scores.values())
        n_other = len(np.setdiff1d(np.unique(data.batch[data.batch >= 0]), batch))
        kept = _batches_to_match(batch, components, batch_alignment, batch_names, n_other)
        maps["batch_root"], maps["batch_names"] = {}, batch_names
        for m, sc in scores.items():
            means = {b: sc[batch == b].mean(0) for b in np.unique(batch)}
            centred = _align(sc, batch, {b: (mu, None) for b, mu in means.items()})
            shapes, maps["batch_root"][m] = _batch_shapes(centred, batch, kept)
            maps["batch"][m] = {b: (mu, shapes.get(b)) for b, mu in means.items()}
        scores = {m: _align(sc, batch, maps["batch"][m]) for m, sc in scores.items()}
    maps["unit"] = {m: (sc.mean(0), sc.std(0) + 1e-8) for m, sc in scores.items()}
    white_fit = {m: (sc - maps["unit"][m][0]) / maps["unit"][m][1] for m, sc in scores.items()}
    whitened = np.hstack(list(white_fit.values()))
    region_fit, region_out = {}, {}
    if regions:
        raw_shared, raw_regions = venn_components(
            white_fit, shared_dim, regions, region_dims, seed
        )
        shared_fit = _keep_spectrum(raw_shared)[0] if raw_shared.shape[1] else raw_shared
        maps["shared"] = None  # placed by least squares, like the region blocks
        for r, raw in raw_regions.items():
            region_fit[r] = _keep_spectrum(raw)[0] if raw.shape[1] else raw
            region_out[r] = rng.normal(size=(data.n_cells, region_dims[r]))
            region_out[r][fit_rows, : raw.shape[1]] = region_fit[r]
    else:
        pca = PCA(n_components=min(shared_dim, whitened.shape[1]), random_state=seed)
        shared_fit, spectrum = _keep_spectrum(_fit_scores(pca, whitened, same_map))
        maps["shared"] = (pca, *spectrum)
    shared = rng.normal(size=(data.n_cells, shared_dim))
    shared[fit_rows, : shared_fit.shape[1]] = shared_fit
    # a modality left out of the fit starts its private block at random, like a cell without a start
    private = {
        m: rng.normal(size=(data.n_cells, d)) for m, d in private_dims.items() if m not in mods
    }
    maps["private"] = {}
    for m in mods:
        sc = scores[m]
        # the private start is what is left of m once everything m shares (shared, its regions) is taken out
        seen = np.hstack(
            [shared_fit, *(region_fit[r] for r in region_fit if m in regions[r])]
            + [np.ones((len(sc), 1))]
        )
        beta, *_ = np.linalg.lstsq(seen, sc, rcond=None)
        resid = sc - seen @ beta
        d = private_dims[m]
        pca_p = PCA(n_components=min(d, resid.shape[1]), random_state=seed)
        comp, spectrum = _keep_spectrum(_fit_scores(pca_p, resid, same_map))
        maps["private"][m] = (beta, pca_p, *spectrum)
        block = rng.normal(size=(data.n_cells, d))
        block[fit_rows, : comp.shape[1]] = comp
        private[m] = block
    if len(rest):
        log.info(
            "Spectral start fitted on %d cells with every modality; placing the other %d by its maps.",
            len(fit_rows),
            len(rest),
        )
        _place_rest(
            data,
            rest,
            maps,
            white_fit,
            shared_fit,
            shared,
            private,
            chunk=place_chunk,
            regions=(regions or {}, region_fit, region_out),
        )
    return (shared, private, region_out) if regions else (shared, private)


def _modalities_to_fit(data: MultiModalData, n_pcs: int) -> list[str]:
    """The modalities the spectral start is fitted on: every one, unless too few cells have every one to place the
    cells that lack one (``_subset_regression``); then the modality measured in the fewest cells is left out, in
    turn, down to two. A start fitted with a modality measured on a few cells would leave every other cell
    unplaced."""
    mods = list(data.specs)
    present = {m: data.present(m) for m in mods}
    while len(mods) > 2:
        measured = np.logical_or.reduce([present[m] for m in mods])
        every = np.logical_and.reduce([present[m] for m in mods])
        complete = int(every.sum())
        # no cell to place, or enough complete cells to place a cell lacking one modality (its other n_pcs each)
        if not (measured & ~every).any() or _enough_to_place(complete, n_pcs * (len(mods) - 1)):
            break
        drop = min(mods, key=lambda m: int(present[m].sum()))
        if 2 * int(present[drop].sum()) >= int(measured.sum()):
            break  # measured in most cells: their starts matter more than the others'
        warnings.warn(
            f"Only {complete} cells have every modality: the spectral start is fitted without {drop!r} "
            f"(measured in {int(present[drop].sum())} cells). Its private block starts at random, and its cells' "
            "shared start comes from their other modalities.",
            VennCellInputWarning,
            stacklevel=user_stacklevel(),
        )
        mods.remove(drop)
    return mods


def _place_rest(
    data: MultiModalData,
    rest: np.ndarray,
    maps: dict,
    white_fit: dict,
    shared_fit: np.ndarray,
    shared: np.ndarray,
    private: dict,
    chunk: int = 20_000,
    regions: tuple = ({}, {}, {}),
) -> None:
    """Starts for the cells outside the fit rows, written into ``shared`` / ``private`` in place.

    A cell with every modality goes through exactly the fitted maps, so it starts where it would have started
    as a fit row. A cell with only some modalities S gets its shared start from a least-squares regression of the
    fit rows' shared start on their whitened scores of S, and each private start from its own residual, as for the
    fit rows. Cells are read ``chunk`` at a time (backed data: in file order).
    """
    mods = list(maps["pca"])  # the modalities the start was fitted on
    if data.batch is not None:
        _add_unseen_batch_means(data, rest, maps, chunk)
    by_subset: dict[
        tuple, np.ndarray | None
    ] = {}  # modality subset -> regression of the shared start on its scores
    members, region_fit, region_out = regions
    by_region: dict[
        tuple, np.ndarray | None
    ] = {}  # (region, modality subset) -> regression of its start
    pca_s, centre_s, scale_s = maps["shared"] or (None, None, None)
    for start in range(0, len(rest), chunk):
        rows = rest[start : start + chunk]
        has = np.stack([data.present(m)[rows] for m in mods], axis=1)
        raw, white = {}, {}
        for k, m in enumerate(mods):
            if has[:, k].any():
                r = rows[has[:, k]]
                raw[m] = np.full((len(rows), maps["pca"][m].n_components_), np.nan)
                raw[m][has[:, k]] = _scores(data, m, r, maps)
                white[m] = (raw[m] - maps["unit"][m][0]) / maps["unit"][m][1]
        for subset in map(tuple, np.unique(has, axis=0)):
            present = [m for m, h in zip(mods, subset) if h]
            if not present:
                continue  # a cell with no modality has nothing to place it by
            cells = np.flatnonzero((has == subset).all(1))
            w = np.hstack([white[m][cells] for m in present])
            placed = {}
            for r, fit in region_fit.items():  # a region's start from the modalities the cell has
                key = (r, subset)
                if key not in by_region:
                    by_region[key] = _subset_regression(white_fit, present, fit)
                if by_region[key] is not None and set(members[r]) & set(present):
                    placed[r] = np.c_[w, np.ones(len(w))] @ by_region[key]
                    region_out[r][rows[cells], : fit.shape[1]] = placed[r]
            if len(present) == len(mods) and pca_s is not None:
                z = (pca_s.transform(w) - centre_s) / scale_s
            else:
                if subset not in by_subset:
                    by_subset[subset] = _subset_regression(white_fit, present, shared_fit)
                if by_subset[subset] is None:
                    continue
                z = np.c_[w, np.ones(len(w))] @ by_subset[subset]
            shared[rows[cells], : z.shape[1]] = z
            for m in present:
                beta, pca_p, centre, scale = maps["private"][m]
                mine = [placed[r] for r in region_fit if m in members[r] and r in placed]
                if len(mine) < sum(m in members[r] for r in region_fit):
                    continue  # a region of m could not be placed: keep the random private start
                resid = raw[m][cells] - np.hstack([z, *mine, np.ones((len(z), 1))]) @ beta
                comp = (pca_p.transform(resid) - centre) / scale
                private[m][rows[cells], : comp.shape[1]] = comp


def _subset_regression(
    white_fit: dict, present: list[str], shared_fit: np.ndarray
) -> np.ndarray | None:
    """Least squares of the fit rows' shared start on their whitened scores of the ``present`` modalities (with an
    intercept); None when too few fit rows back it: it would interpolate them and place cells by noise."""
    x_fit = np.hstack([white_fit[m] for m in present])
    if not _enough_to_place(len(x_fit), x_fit.shape[1]):
        warnings.warn(
            f"Only {len(x_fit)} cells have every modality, too few to place the cells that have only {present}: "
            "they start from random latents, and their shared latent can end far worse (a modality measured "
            "on few cells can cost every cell's). Leave that modality out (modalities=[...] in setup_mudata, "
            "data.register=[...] on the command line) or measure more cells in every modality.",
            VennCellInputWarning,
            stacklevel=user_stacklevel(),
        )
        return None
    return np.linalg.lstsq(np.c_[x_fit, np.ones(len(x_fit))], shared_fit, rcond=None)[0]


def _enough_to_place(rows: int, columns: int) -> bool:
    """Whether ``rows`` fit rows back a least-squares placement on ``columns`` scores (plus an intercept): five
    rows per coefficient, fewer would interpolate them."""
    return rows >= 5 * (columns + 1)


def _scores(
    data: MultiModalData, m: str, rows: np.ndarray, maps: dict, centred: bool = True
) -> np.ndarray:
    """Modality m's PCA scores for the rows (which have m); ``centred``: batches removed as for the fit rows."""
    sc = maps["pca"][m].transform(_pca_input(data, m, rows))
    return (
        _align(sc, data.batch[rows], maps["batch"][m])
        if centred and data.batch is not None
        else sc
    )


def _add_unseen_batch_means(
    data: MultiModalData, rest: np.ndarray, maps: dict, chunk: int
) -> None:
    """Batch means of the PCA scores for batches that have no fit row (e.g. a batch measured with one modality
    only), over all of that batch's other cells: one extra pass over just those cells. Where the fit rows'
    batches were matched by covariance, such a batch is too, from the same cells (kept in memory for it)."""
    small: dict = {}  # batch -> components of a modality it has too few cells of
    for m in maps["pca"]:
        seen = maps["batch"][m]
        root = maps.get("batch_root", {}).get(m)
        rows = rest[data.present(m)[rest] & ~np.isin(data.batch[rest], list(seen))]
        parts: dict = {}
        for start in range(0, len(rows), chunk):
            r = rows[start : start + chunk]
            sc = _scores(data, m, r, maps, centred=False)
            for b in np.unique(data.batch[r]):
                mine = sc[data.batch[r] == b]
                total, count, blocks = parts.get(b, (0.0, 0, []))
                if root is not None:
                    blocks.append(mine)
                parts[b] = (total + mine.sum(0), count + len(mine), blocks)
        for b, (total, count, blocks) in parts.items():
            mean, shape = total / count, None
            if root is not None and _enough_to_place(count, root.shape[0]):
                shape = _batch_map(np.vstack(blocks) - mean, root)
            elif root is not None:
                small[b] = max(small.get(b, 0), root.shape[0])
            seen[b] = (mean, shape)
    if small:
        _warn_unmatched(
            sorted(small),
            maps.get("batch_names"),
            max(small.values()),
            "in the modalities they have",
        )


def init_likelihoods(module, data: MultiModalData, max_cells: int = 50_000, seed: int = 0) -> None:
    """Data-dependent starts of the likelihood heads (protein background, ATAC reference depth and region
    factors), from at most ``max_cells`` cells that have the modality. Stored in the module's state, so a
    saved model keeps them."""
    from venncell.nn.likelihoods import Likelihood

    rng = np.random.default_rng(seed)
    for m in module.specs:
        heads = [
            dec.likelihood
            for decs in (module.decoders, module.shared_decoders)
            if m in decs
            for dec in [decs[m]]
        ]
        heads = [h for h in heads if type(h).init_from_data is not Likelihood.init_from_data]
        # images: standardised pixels, and a read of every crop just for a mean
        if not heads or m not in data.x or module.specs[m].kind == "image":
            continue
        cells = np.flatnonzero(data.present(m))
        if len(cells) == 0:
            continue
        if len(cells) > max_cells:
            cells = np.sort(rng.choice(cells, max_cells, replace=False))
        x, _ = _rows_sparse(data, m, cells)
        depth = np.asarray(x.sum(1)).ravel()
        for h in heads:
            h.init_from_data(x, depth)
