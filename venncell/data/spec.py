"""What VennCell knows about each modality (``ModalitySpec``), and the names every layer agrees on.

The registry (``venncell.data.registry``) computes a spec once, from the training data, and saves it with the
model; everything else only reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

KINDS = ("rna", "atac", "protein", "features", "image")
# Default likelihood per kind; ``auto`` inspects the data instead.
KIND_DEFAULT_LIKELIHOOD = {
    "rna": "nb",
    "protein": "nb",
    "atac": "bernoulli_factors",
    "features": "gaussian",
    "image": "gaussian",
}
# Likelihood names (the heads in ``venncell.nn.likelihoods`` are keyed by these) and what data each demands.
COUNT_LIKELIHOODS = ("nb", "zinb", "nb_mixture")
# whole numbers with fewer negative values than this share are corrupt counts (``corrupt_counts``)
CORRUPT_SHARE = 0.01
BINARY_LIKELIHOODS = ("bernoulli", "bernoulli_factors")
LIKELIHOODS = (*COUNT_LIKELIHOODS, *BINARY_LIKELIHOODS, "gaussian")
# Heads whose NLL reads the batch's non-zero positions, which the batch assembly takes from the CSR structure.
NONZERO_LIKELIHOODS = ("nb",)
# whose normalised_mean is a share of the cell's library (nb_mixture's normalised scale is denoised counts)
PROPORTION_LIKELIHOODS = ("nb", "zinb")
# Load-time transforms of the data itself (before the likelihood sees it); None = the data as given.
TRANSFORMS = (None, "clr")
# Preprocessing in front of the encoders (and of the spectral start), chosen by the likelihood.
ENCODER_TRANSFORMS = ("log1p_cp10k", "binary", "standardise", "none")


@dataclass
class ModalitySpec:
    """One modality's registry entry, saved with the model so new cells get the same treatment.

    Parameters
    ----------
    name
        Modality name (the MuData key).
    kind
        One of ``KINDS``.
    likelihood
        One of ``LIKELIHOODS``.
    layer
        AnnData layer holding the data (None = ``.X``).
    binarize
        Counts > 0 become 1 at load time (ATAC with a Bernoulli likelihood).
    private_dim
        Size of this modality's private block (None = the model's ``private_dim``).
    weight
        Multiplier of this modality's reconstruction term (None = the model's rule, ``modality_weights``).
    features
        Feature names after any dropped zero-variance features, in model order.
    encoder_transform
        Preprocessing before the encoders: ``log1p_cp10k`` (log1p of counts per 10k), ``binary``, ``standardise``
        (with ``feature_mean`` / ``feature_std`` of the training cells) or ``none`` (images: standardised pixels).
    transform
        Load-time transform of the data: ``clr`` is muon's ``prot.pp.clr`` with ``axis=0``,
        ``log1p(x_ij / exp(mean_i log1p(x_ij)))``, with ``clr_log_geomean`` from the training cells.
    zero_variance
        ``warn`` | ``drop`` | ``keep`` features with zero variance; dropped ones are listed in
        ``dropped_features`` so new data may carry them.
    median_library
        Median library size of the training cells (``predict_modality(scale="counts")``).
    data_scale
        Gaussian modalities: each feature's standard deviation on the training cells; the data are divided by it
        at load time, so the likelihood sees unit-scale values whatever the features' units (predictions are
        multiplied back).
    image_key, image_store, channels, image_shape, channel_mean, channel_std
        Image modalities: cells x C x H x W in ``.obsm[image_key]`` or in the ``.npy``/zarr file ``image_store``;
        ``channels`` picks channels; pixels are standardised per channel with the training statistics.
    """

    name: str
    kind: str = "features"
    likelihood: str = "gaussian"
    layer: str | None = None
    binarize: bool = False
    private_dim: int | None = None
    weight: float | None = None
    features: list[str] = field(default_factory=list)
    encoder_transform: str = "standardise"
    feature_mean: list[float] | None = None
    feature_std: list[float] | None = None
    transform: str | None = None
    clr_log_geomean: list[float] | None = None
    zero_variance: str = "warn"
    dropped_features: list[str] = field(default_factory=list)
    median_library: float = 1.0
    data_scale: list[float] | None = None
    image_key: str | None = None
    image_store: str | None = None
    channels: list[int] | None = None
    image_shape: list[int] | None = None
    channel_mean: list[float] | None = None
    channel_std: list[float] | None = None

    @property
    def n_features(self) -> int:
        if self.kind == "image" and self.image_shape:
            return int(np.prod(self.image_shape))
        return len(self.features)

    @property
    def feature_names(self) -> list[str]:
        """The names analyses give the modality's features: ``features``, or for images one per pixel,
        ``c<channel>_y<row>_x<col>`` in the order the decoder flattens C x H x W."""
        if self.kind != "image" or not self.image_shape:
            return list(self.features)
        n_ch, height, width = self.image_shape
        chans = self.channels if self.channels is not None else range(n_ch)
        return [f"c{c}_y{y}_x{x}" for c in chans for y in range(height) for x in range(width)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModalitySpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def guess_kind(name: str) -> str:
    """A modality's kind from its name (``rna``, ``gex`` -> rna; ``atac``, ``peaks`` -> atac; ``adt``, ``prot`` ->
    protein; anything else -> features)."""
    lname = name.lower()
    for key, kind in (
        ("atac", "atac"),
        ("peak", "atac"),
        ("chrom", "atac"),
        ("rna", "rna"),
        ("gex", "rna"),
        ("prot", "protein"),
        ("adt", "protein"),
        ("cite", "protein"),
    ):
        if key in lname:
            return kind
    return "features"


def kind_hint(names, specs: dict) -> str:
    """``" The model's protein modality is 'adt'."`` for a name that is no modality but reads as one's kind (a user
    of another data set's names, or of the README's examples); "" otherwise."""
    hints = []
    for name in names:
        kind = guess_kind(str(name))
        if name in specs or kind == "features":
            continue
        mine = [m for m, s in specs.items() if s.kind == kind]
        if len(mine) == 1:
            hints.append(f" The model's {kind} modality is '{mine[0]}'.")
    return "".join(dict.fromkeys(hints))


def default_encoder_transform(likelihood: str, kind: str | None = None) -> str:
    if kind == "image":
        return "none"  # pixels arrive standardised per channel (venncell.data.images)
    if likelihood in COUNT_LIKELIHOODS:
        return "log1p_cp10k"
    return "binary" if likelihood in BINARY_LIKELIHOODS else "standardise"


def _value_sample(x) -> np.ndarray:
    """Up to 200k of x's stored values: enough to tell counts, binary and real values apart."""
    import scipy.sparse as sp

    values = x.data if sp.issparse(x) else np.asarray(x).ravel()
    return values[:200_000]


def infer_likelihood(kind: str, x) -> str:
    """A likelihood from the modality's kind and content: binary data -> Bernoulli; non-negative integers -> NB (ATAC
    counts -> Bernoulli with cell and region factors, after binarising); anything else -> Gaussian."""
    sample = _value_sample(x)
    if sample.size == 0:
        return KIND_DEFAULT_LIKELIHOOD.get(kind, "gaussian")
    # counts all the same: the data check then refuses them, located
    corrupt = corrupt_counts(sample)
    integer = bool(np.isfinite(sample).all()) and (not_counts_reason(sample) is None or corrupt)
    if kind == "atac" and integer:
        return "bernoulli_factors"
    if integer and sample.max() <= 1 and not corrupt:
        return "bernoulli"
    return "nb" if integer else "gaussian"


def corrupt_counts(x) -> bool:
    """Whole numbers of which only a few are negative (under ``CORRUPT_SHARE`` of the stored values): counts with
    corrupt entries, which the data check refuses, rather than signed values to model as Gaussian."""
    sample = _value_sample(x)
    sample = sample[np.isfinite(sample)]
    negative = sample < 0
    return bool(
        sample.size
        and negative.any()
        and negative.mean() < CORRUPT_SHARE
        and np.allclose(sample, np.round(sample))
    )


def rounding_fix(name: str, x, layer: str | None = None, trained: bool = False) -> str:
    """For non-negative values of which most (nonzero ones) are whole numbers, as counts corrected for ambient RNA
    are: the way to round them into a layer (``trained``: new cells, rounded where the model reads them); "" for
    other values (normalised data are almost never whole)."""
    sample = _value_sample(x)
    sample = sample[np.isfinite(sample) & (sample != 0)]
    if not sample.size or sample.min() < 0:
        return ""
    whole = float(np.isclose(sample, np.round(sample)).mean())
    if whole < 0.5:
        return ""
    source = f"layers[{layer!r}]" if layer is not None else "X"
    if trained:
        return (
            f" {whole:.0%} of its nonzero values are whole numbers: if these are counts corrected for ambient RNA "
            f"(SoupX, DecontX, CellBender), round them where the model reads them, as its training counts were: "
            f"`c = mdata['{name}'].{source}.copy(); c.data = np.rint(c.data)` (dense: `c = np.rint(c)`), then "
            f"`mdata['{name}'].{source} = c`."
        )
    return (
        f" {whole:.0%} of its nonzero values are whole numbers: if these are counts corrected for ambient RNA "
        f"(SoupX, DecontX, CellBender), round them into a layer and register it: `c = mdata['{name}'].{source}"
        f".copy(); c.data = np.rint(c.data)` (dense: `c = np.rint(c)`), `mdata['{name}'].layers['counts'] = c`, "
        "layer='counts'."
    )


def not_counts_reason(x) -> str | None:
    """Why ``infer_likelihood`` would not treat x as counts (None when it would, or when only NaN / inf stand in the
    way: those are an input error of their own, raised when the data are checked)."""
    sample = _value_sample(x)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return None
    if sample.min() < 0:
        return f"negative values (min {sample.min():.3g})"
    frac = sample[~np.isclose(sample, np.round(sample))]
    return f"non-integer values (e.g. {frac[0]:.6g})" if frac.size else None
