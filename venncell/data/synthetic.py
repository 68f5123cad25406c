"""Synthetic Venn ground truth: shared factors seen by every modality, private factors seen by one.

Every modality m is generated as ``x_m = g_m(u_shared, u_private_m) + noise`` through a random
nonlinear map ``g_m``, with ``u_shared`` made of clusters plus continuous trends and the
``u_private_m`` independent of ``u_shared`` and of each other. A model that separates the blocks
correctly lets each learned block predict exactly one true block (see ``venncell.analysis.recovery``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp

from venncell.data.spec import guess_kind
from venncell.data.validate import VennCellInputError, check_range


@dataclass
class SyntheticTruth:
    """The factors that generated a synthetic MuData, row-aligned with ``mdata.obs``."""

    shared: np.ndarray
    private: dict[str, np.ndarray]
    cluster: np.ndarray
    # Per modality, which features are driven only by shared or only by private factors.
    feature_driver: dict[str, np.ndarray] = field(default_factory=dict)
    # Factors seen by some modalities but not all, keyed by region name ("protein+rna": sorted, joined by "+").
    regions: dict[str, np.ndarray] = field(default_factory=dict)

    def blocks(self) -> dict[str, np.ndarray]:
        """Every true block under the name of the learned block that should recover it: ``shared``,
        ``shared:<region>`` (``venn_regions``), ``private:<m>``."""
        out = {"shared": self.shared, **{f"shared:{r}": u for r, u in self.regions.items()}}
        out.update({f"private:{m}": v for m, v in self.private.items()})
        return out


def _random_map(rng: np.random.Generator, d_in: int, d_out: int, hidden: int = 32) -> callable:
    """A fixed random two-layer tanh network: nonlinear, smooth, and not invertible by a linear probe."""
    w1 = rng.normal(size=(d_in, hidden)) / np.sqrt(d_in)
    b1 = rng.normal(scale=0.5, size=hidden)
    w2 = rng.normal(size=(hidden, d_out)) / np.sqrt(hidden)

    def f(u: np.ndarray) -> np.ndarray:
        return np.tanh(u @ w1 * 1.5 + b1) @ w2

    return f


def _modality_signal(rng, u_shared, u_private, n_features, pure_fraction):
    """Feature-wise signal from shared + private factors.

    A fraction of features reads only the shared factors and another only the private ones, so that
    attribution can be checked against known drivers; the rest reads both.
    """
    n_pure = int(round(pure_fraction * n_features))
    driver = np.array(["both"] * n_features, dtype=object)
    driver[:n_pure] = "shared"
    driver[n_pure : 2 * n_pure] = "private"
    g_shared = _random_map(rng, u_shared.shape[1], n_features)(u_shared)
    g_private = _random_map(rng, u_private.shape[1], n_features)(u_private)
    g_joint = _random_map(rng, u_shared.shape[1] + u_private.shape[1], n_features)(
        np.hstack([u_shared, u_private])
    )
    signal = g_shared + g_private + 0.5 * g_joint
    signal[:, driver == "shared"] = 1.5 * g_shared[:, driver == "shared"]
    signal[:, driver == "private"] = 1.5 * g_private[:, driver == "private"]
    signal = (signal - signal.mean(0)) / (signal.std(0) + 1e-8)
    perm = rng.permutation(n_features)
    return signal[:, perm], driver[perm].astype(str)


def make_synthetic(
    n_cells: int = 3000,
    modalities: dict[str, int] | None = None,
    shared_dim: int = 4,
    private_dim: int = 2,
    n_clusters: int = 6,
    cluster_spread: float = 0.35,
    pure_fraction: float = 0.2,
    rna_library_mean: float = 2000.0,
    protein_library_mean: float = 3000.0,
    atac_mean_accessibility: float = 0.15,
    feature_noise: float = 0.3,
    n_batches: int = 0,
    batch_effect: float = 1.0,
    region_factors: dict[str, int] | None = None,
    seed: int = 0,
) -> tuple[md.MuData, SyntheticTruth]:
    """Generate a paired multi-modal dataset with known shared and private factors.

    Parameters
    ----------
    n_cells
        Number of cells.
    modalities
        ``{name: n_features}``; the name picks the kind as ``setup_mudata`` does (``rna``/``gex`` -> RNA counts,
        ``protein``/``adt`` -> protein counts, ``atac``/``peaks`` -> binary peaks, any other name -> Gaussian
        features). Default: RNA (1000 genes), protein (100) and ATAC (1000 peaks).
    shared_dim, private_dim
        True dimensions of the shared block and of each private block.
    n_clusters, cluster_spread
        Shared factors are cluster centres plus a continuous Gaussian trend of this spread.
    pure_fraction
        Fraction of each modality's features driven by the shared factors only, and the same fraction by the
        private ones only (``var["true_driver"]``); the rest read both.
    rna_library_mean, protein_library_mean, atac_mean_accessibility
        Mean counts per cell of RNA and protein, mean open fraction of ATAC peaks.
    feature_noise
        Gaussian noise added to every feature's standardised signal, before the counts are drawn.
    n_batches, batch_effect
        With ``n_batches >= 2`` cells are assigned to batches (``obs["batch"]``) and every feature of every
        modality gets a batch-specific shift of ``batch_effect`` standard deviations (times a random
        per-feature loading) — a technical effect present in every modality, which a model must not
        mistake for shared biology. 0 keeps the data identical to a batch-free run with the same seed.
    region_factors
        Factors shared by some modalities but not all: ``{"protein+rna": 2}`` adds 2 factors that RNA and
        protein see (next to the shared ones) and the other modalities do not. Stored in ``.obsm["true_region_<name>"]``.
        None keeps the data identical to a run without them.
    seed
        Seed of every random draw (the same seed gives the same data).

    Returns
    -------
    The MuData (raw counts / binary peaks as CSR in ``.X``, cluster labels in ``.obs``, true factors in
    ``.obsm["true_shared"]`` and ``.obsm["true_private_<m>"]``) and the truth as a separate object.
    """
    if modalities is not None and not isinstance(modalities, Mapping):
        raise VennCellInputError(
            f"make_synthetic modalities must be a dict {{name: n_features}}, e.g. {{'rna': 1000, 'protein': 100}} "
            f"(data.modalities={{rna:1000,protein:100}} on the command line); got {modalities!r}."
        )
    modalities = dict(modalities or {"rna": 1000, "protein": 100, "atac": 1000})
    if len(modalities) < 2:
        raise ValueError(f"make_synthetic needs at least two modalities, got {list(modalities)}.")
    for name, value, low in (
        ("n_cells", n_cells, 1),
        ("shared_dim", shared_dim, 1),
        ("private_dim", private_dim, 0),
        ("n_clusters", n_clusters, 1),
        ("n_batches", n_batches, 0),
        *((f"modalities['{m}']", n, 1) for m, n in modalities.items()),
    ):
        check_range(f"make_synthetic {name}", value, low, integer=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.5, size=(n_clusters, shared_dim))
    cluster = rng.integers(0, n_clusters, size=n_cells)
    u_shared = centres[cluster] + cluster_spread * rng.normal(size=(n_cells, shared_dim)) * 1.5
    u_shared = (u_shared - u_shared.mean(0)) / u_shared.std(0)

    # batches come from their own stream so that the biological data is unchanged by adding them
    batch_rng = np.random.default_rng([seed, 1])
    batch = batch_rng.integers(0, n_batches, size=n_cells) if n_batches >= 2 else None
    obs_names = [f"cell{i:06d}" for i in range(n_cells)]
    regions = _region_factors(region_factors or {}, list(modalities), n_cells, seed)
    mods: dict[str, ad.AnnData] = {}
    private: dict[str, np.ndarray] = {}
    drivers: dict[str, np.ndarray] = {}
    for name, n_features in modalities.items():
        kind = guess_kind(name)  # setup_mudata's rule: 'adt' is drawn as it is read
        u_priv = rng.normal(size=(n_cells, private_dim))
        seen = [
            u for r, u in regions.items() if name in r.split("+")
        ]  # the regions this modality sees
        u_seen = np.hstack([u_shared, *seen]) if seen else u_shared
        signal, driver = _modality_signal(rng, u_seen, u_priv, n_features, pure_fraction)
        signal = signal + feature_noise * rng.normal(size=signal.shape)
        if batch is not None:
            shifts = batch_rng.normal(size=(n_batches, n_features))
            signal = signal + batch_effect * shifts[batch]
        x = _emit(
            rng, kind, signal, rna_library_mean, protein_library_mean, atac_mean_accessibility
        )
        a = ad.AnnData(X=x)
        a.obs_names = obs_names
        a.var_names = [f"{name}_{j:04d}" for j in range(n_features)]
        a.var["true_driver"] = pd.Categorical(driver)
        mods[name] = a
        private[name] = u_priv
        drivers[name] = driver

    # keep each modality's .obs/.var where it is; set_options' own context logs through the root logger, which
    # installs a handler there (logging.basicConfig) and prints every library's warnings from then on
    previous = md.set_options(pull_on_update=False).opts
    try:
        mdata = md.MuData(mods)
    finally:
        md.set_options(**previous)
    mdata.obs["cluster"] = pd.Categorical([f"c{c}" for c in cluster])
    if batch is not None:
        mdata.obs["batch"] = pd.Categorical([f"b{b}" for b in batch])
    mdata.obsm["true_shared"] = u_shared
    for name, u in private.items():
        mdata.obsm[f"true_private_{name}"] = u
    for name, u in regions.items():
        mdata.obsm[f"true_region_{name}"] = u
    truth = SyntheticTruth(
        shared=u_shared, private=private, cluster=cluster, feature_driver=drivers, regions=regions
    )
    return mdata, truth


def _region_factors(
    spec: dict[str, int], modalities: list[str], n_cells: int, seed: int
) -> dict[str, np.ndarray]:
    """Standard-normal factors of each region (from a stream of their own, so the other factors do not change)."""
    out = {}
    rng = np.random.default_rng([seed, 2])
    for raw, dim in spec.items():
        members = sorted(raw.split("+"))
        if len(members) < 2 or len(set(members)) < len(members) or set(members) - set(modalities):
            raise ValueError(
                f"region_factors key {raw!r} must name two or more of the modalities {modalities}, joined by '+'."
            )
        if len(members) == len(modalities):
            raise ValueError(
                f"region {raw!r} holds every modality: those factors are the shared ones (shared_dim)."
            )
        out["+".join(members)] = rng.normal(size=(n_cells, int(dim)))
    return out


def truth_from_mudata(mdata: md.MuData) -> SyntheticTruth | None:
    """Recover the stored truth from ``.obsm`` (None when the data is not synthetic)."""
    if "true_shared" not in mdata.obsm:
        return None
    private = {
        k[len("true_private_") :]: np.asarray(v)
        for k, v in mdata.obsm.items()
        if k.startswith("true_private_")
    }
    cluster = (
        np.asarray(pd.Categorical(mdata.obs["cluster"]).codes) if "cluster" in mdata.obs else None
    )
    drivers = {
        m: np.asarray(a.var["true_driver"]).astype(str)
        for m, a in mdata.mod.items()
        if "true_driver" in a.var
    }
    regions = {
        k[len("true_region_") :]: np.asarray(v)
        for k, v in mdata.obsm.items()
        if k.startswith("true_region_")
    }
    return SyntheticTruth(
        shared=np.asarray(mdata.obsm["true_shared"]),
        private=private,
        cluster=cluster,
        feature_driver=drivers,
        regions=regions,
    )


def _emit(rng, kind, signal, rna_lib, prot_lib, atac_p):
    n_cells, n_features = signal.shape
    if kind in ("rna", "protein"):
        # Feature baselines vary over two orders of magnitude, as real expression does.
        base = rng.normal(scale=1.0, size=n_features)
        logits = base + signal
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        lib_mean = rna_lib if kind == "rna" else prot_lib
        lib = rng.lognormal(mean=np.log(lib_mean), sigma=0.3, size=(n_cells, 1))
        mu = p * lib
        theta = 10.0 if kind == "rna" else 20.0
        counts = rng.poisson(rng.gamma(shape=theta, scale=mu / theta))
        return sp.csr_matrix(counts.astype(np.float32))
    if kind == "atac":
        offset = np.log(atac_p / (1 - atac_p))
        prob = 1.0 / (1.0 + np.exp(-(offset + 1.5 * signal)))
        return sp.csr_matrix((rng.random(prob.shape) < prob).astype(np.float32))
    return signal.astype(np.float32)
