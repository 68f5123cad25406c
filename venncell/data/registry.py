"""Register data once, apply it anywhere: the fields that turn a user's MuData into what a model needs.

Two steps, as in scvi-tools' data fields:

``setup_options``
    validates the user's per-modality options (kind, likelihood, layer, ...) and the batch key, and resolves what
    can be resolved without fitting (the kind from the name, the likelihood from the values). ``setup_mudata``
    stores the result in ``mdata.uns``.
``fit_registry``
    computes, once, from the training data, everything the model needs to know about each modality -- its
    features (zero-variance ones dropped or not), the statistics of its transforms, its median library size, its
    image statistics -- and the batch categories: a ``DataRegistry``. It is saved with the model, and applied
    unchanged to new data (``MultiModalData`` aligns new data to it and never modifies it).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp

from venncell.data.pairing import check_pairing
from venncell.data.spec import (
    BINARY_LIKELIHOODS,
    COUNT_LIKELIHOODS,
    KIND_DEFAULT_LIKELIHOOD,
    KINDS,
    LIKELIHOODS,
    TRANSFORMS,
    ModalitySpec,
    default_encoder_transform,
    guess_kind,
    infer_likelihood,
    not_counts_reason,
    rounding_fix,
)
from venncell.data.transforms import (
    apply_transform,
    clr_log_geomean,
    column_mean_std,
    scale_columns,
)
from venncell.data.validate import (
    MIN_CELLS,
    VennCellInputError,
    VennCellInputWarning,
    check_batch_labels,
    check_matrix,
    check_numeric,
    check_range,
    check_unique_names,
    check_zero_variance_policy,
    did_you_mean,
    warn_outlier_columns,
    warn_zero_variance,
)

REGISTRY_KEY = "_venncell"  # mdata.uns key holding setup_mudata's options (JSON)
MODALITY_OPTIONS = (
    "kind",
    "likelihood",
    "layer",
    "binarize",
    "private_dim",
    "weight",
    "zero_variance",
    "transform",
)
IMAGE_OPTIONS = ("obsm_key", "store", "channels")  # kind: image (venncell.data.images)


@dataclass
class DataRegistry:
    """What a model knows about its data: one ``ModalitySpec`` per modality and the batch categories.

    Parameters
    ----------
    specs
        Per-modality specs, in modality order.
    batch_key
        ``.obs`` column of the batch labels, or None.
    batch_categories
        The training data's batch labels, sorted; new data must use these.
    """

    specs: dict[str, ModalitySpec]
    batch_key: str | None = None
    batch_categories: list[str] | None = None

    @property
    def n_batches(self) -> int:
        return len(self.batch_categories) if self.batch_categories else 0

    def to_dict(self) -> dict:
        return {
            "specs": {m: s.to_dict() for m, s in self.specs.items()},
            "batch_key": self.batch_key,
            "batch_categories": self.batch_categories,
        }

    @classmethod
    def from_dict(cls, d: dict) -> DataRegistry:
        return cls(
            {m: ModalitySpec.from_dict(s) for m, s in d["specs"].items()},
            d.get("batch_key"),
            d.get("batch_categories"),
        )

    def batch_codes(self, obs: pd.DataFrame, unseen_ok: bool = False) -> np.ndarray | None:
        """The cells' batch codes (indices into ``batch_categories``); new labels (or no batch column) are an
        error, or with ``unseen_ok`` code -1 (new cells: the encoders do not read the batch; refinement codes new
        batches after the trained ones, prediction is batch-neutral for them)."""
        if self.batch_key is None:
            return None
        if self.batch_key not in obs:
            if unseen_ok:
                return np.full(len(obs), -1, dtype=np.int64)
            raise VennCellInputError(self.missing_message(obs.columns))
        values = check_batch_labels(self.batch_key, obs[self.batch_key], training=False)
        lookup = {c: i for i, c in enumerate(self.batch_categories)}
        # models saved before whole-number floats read as integers hold "1.0" where new labels say "1"
        for i, c in enumerate(self.batch_categories):
            if re.fullmatch(r"-?\d+\.0", c):
                lookup.setdefault(c[:-2], i)
        unknown = sorted(set(values) - set(lookup))
        if unknown and not unseen_ok:
            raise VennCellInputError(self.unseen_message(unknown))
        return np.array([lookup.get(v, -1) for v in values], dtype=np.int64)

    def missing_message(self, columns, what: str = "", holders=(), new_ok: bool = False) -> str:
        """Why new cells without the batch column cannot be read (``columns``: mdata.obs's; ``what``: by which
        step), and the fix, naming the modalities whose .obs holds it (``holders``, and those MuData shows as
        ``<modality>:<key>`` columns); ``new_ok``: the step learns batches it never saw (refinement)."""
        key = self.batch_key
        holders = self.batch_holders(columns, holders)
        return (
            f"batch_key '{key}' is not a column of mdata.obs (columns: {_shown(columns)}); the model was trained with "
            f"batches, so new data need it{what}. "
            + (
                f"The .obs of {holders} holds it; copy it up"
                if holders
                else "If a modality's .obs holds it, copy it up"
            )
            + f": {copy_up(key, holders or ['<modality>'])}; otherwise "
            + (
                f"give them a label of their own (e.g. `mdata.obs['{key}'] = 'query'`): refinement learns the "
                "effect of a batch it never saw."
                if new_ok
                else "name the training batch the cells come closest to."
            )
        )

    def batch_holders(self, columns, holders=()) -> list[str]:
        """The modalities whose .obs holds the batch column: ``holders``, and those MuData shows as
        ``<modality>:<key>`` columns of mdata.obs (``columns``)."""
        key = self.batch_key
        pulled = [str(c)[: -len(key) - 1] for c in columns if str(c).endswith(f":{key}")]
        return list(dict.fromkeys([*holders, *pulled]))

    def unseen_message(self, unknown: list[str], what: str = "") -> str:
        """Why new cells' batches cannot be read (``what``: by which step), and the fix."""
        shown = [str(u) for u in unknown[:5]]
        return (
            f"batch_key '{self.batch_key}': categories {shown} were not seen in training (it knew "
            f"{_shown([repr(c.item() if isinstance(c, np.generic) else c) for c in self.batch_categories])}){what}. Map the new cells to a training batch, "
            "or retrain with them."
        )


def copy_up(key: str, holders: list[str]) -> str:
    """The line that copies column ``key`` from the .obs of modalities ``holders`` to mdata.obs: with several, each
    cell takes its label from the first modality that has one for it, so cells missing from one still get one."""
    # pandas, not mdata.pull_obs: what pull_obs names a column held by several modalities varies by version;
    # object values, as categoricals with other categories cannot fill each other
    if len(holders) == 1:
        return (
            f"`mdata.obs['{key}'] = mdata['{holders[0]}'].obs['{key}'].reindex(mdata.obs_names)`"
        )
    each = [f"mdata['{h}'].obs['{key}'].astype(object).reindex(mdata.obs_names)" for h in holders]
    return f"`mdata.obs['{key}'] = {each[0]}" + "".join(f".fillna({e})" for e in each[1:]) + "`"


def warn_same_features(mdata, registry: dict) -> None:
    """Warn about two modalities with the same features for the same cells: two assays of one measurement (a
    Seurat export's SCT beside RNA), which the model would count twice and call shared."""
    names = [m for m in registry if registry[m].get("kind") != "image"]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            fa, fb = mdata.mod[a].var_names, mdata.mod[b].var_names
            same = len(fa.intersection(fb))
            if same < 20 or same < 0.8 * min(len(fa), len(fb)):
                continue
            cells = len(mdata.mod[a].obs_names.intersection(mdata.mod[b].obs_names))
            if cells >= 0.5 * min(mdata.mod[a].n_obs, mdata.mod[b].n_obs):
                warnings.warn(
                    f"Modalities '{a}' and '{b}' share {same} of their features ({len(fa)} and {len(fb)}) for "
                    f"{cells} of the same cells: they look like two versions of one measurement (e.g. Seurat's "
                    "SCT assay beside RNA), or one derived from another modality (gene activity from ATAC). The "
                    "model would count that measurement twice and learn the copy as shared signal. Keep one: "
                    f"`modalities=[...]` without '{b}' (or '{a}'; on the command line, `data.register=[...]`).",
                    VennCellInputWarning,
                    stacklevel=4,
                )


# ------------------------------------------------------------------------------------------------ setup
def setup_options(
    mdata, modalities: dict | list | None = None, batch_key: str | None = None
) -> dict:
    """Validated registry options: ``{"modalities": {name: options}, "batch_key": ...}`` (JSON-ready).

    ``modalities`` maps a modality name to a kind or to a dict of ``MODALITY_OPTIONS`` (images:
    ``IMAGE_OPTIONS``); a list names the modalities to use; None uses every modality.
    """
    import mudata as md

    if not isinstance(mdata, md.MuData):
        raise VennCellInputError(f"setup_mudata needs a MuData, got {type(mdata).__name__}.")
    if getattr(mdata, "axis", 0) != 0:
        # its repeated or unpaired cell names would be refused with fixes that do not apply
        raise VennCellInputError(
            f"This MuData has axis={mdata.axis} (muon's layout for modalities of the same features, such as datasets "
            "to join); VennCell needs modalities of the same cells, axis=0 (the default): build it as "
            "`mudata.MuData({'rna': rna, 'protein': protein})`."
        )
    if modalities is None:
        modalities = list(mdata.mod)
    if isinstance(modalities, (list, tuple)):
        modalities = {m: {} for m in modalities}
    if not isinstance(modalities, dict):
        raise VennCellInputError(
            f"modalities must be a dict or a list of modality names, got {type(modalities).__name__}."
        )
    if len(modalities) < 2:
        raise VennCellInputError(
            f"VennCell needs at least two modalities, got {list(modalities)}; a MuData with one modality has "
            "no shared/private split to learn."
        )
    registry = {}
    for name, opts in modalities.items():
        if name not in mdata.mod:
            raise VennCellInputError(
                f"Modality '{name}' is not in the MuData (it has {list(mdata.mod)}). Fix the name in `modalities`."
            )
        registry[name] = _modality_options(name, mdata.mod[name], opts)
        # at setup, as its message says, not at VennCell(mdata)
        if registry[name].get("kind") != "image":
            check_unique_names(name, mdata.mod[name].var_names)
    # before the batch labels: cells that pair with nothing read as cells without a batch
    check_pairing({m: mdata.mod[m].obs_names for m in registry})
    warn_same_features(mdata, registry)
    if batch_key is not None:
        check_batch_column(mdata, batch_key)
        check_batch_labels(batch_key, mdata.obs[batch_key])
    return {"modalities": registry, "batch_key": batch_key}


def check_batch_column(mdata, batch_key) -> None:
    """``batch_key`` names one column of ``mdata.obs``, or a clear error saying where the column is."""
    if not isinstance(batch_key, str):
        raise VennCellInputError(
            f"batch_key must be the name of one column of mdata.obs (a str), got {type(batch_key).__name__} "
            f"{batch_key!r}."
        )
    if batch_key in mdata.obs:
        return
    holders = [m for m, a in mdata.mod.items() if batch_key in a.obs]
    hint = (
        f" It is in the .obs of {holders}: copy it up with {copy_up(batch_key, holders)}"
        if holders
        else ""
    )
    pulled = [f"{m}:{batch_key}" for m in holders if f"{m}:{batch_key}" in mdata.obs]
    if pulled:
        hint += f", or use batch_key='{pulled[0]}', which mdata.obs has"
    hint += "." if holders else ""
    close = did_you_mean([batch_key], [str(c) for c in mdata.obs.columns])
    raise VennCellInputError(
        f"batch_key '{batch_key}' is not a column of mdata.obs (columns: {_shown(mdata.obs)}){close}.{hint}"
    )


def _raw_fix(name: str, adata) -> str:
    """The line that moves a modality's ``.raw`` (where Seurat and scanpy exports keep counts) into a layer."""
    return (
        f"Its .raw holds {adata.raw.n_vars} features: if those are the counts, copy them into a layer, "
        f"`mdata['{name}'].layers['counts'] = mdata['{name}'].raw[:, mdata['{name}'].var_names].X`, and register "
        "layer='counts'."
    )


def _counts_fix(name: str, adata, layer: str | None) -> str:
    """Where this modality's raw counts are, if it has them: .X or another layer of whole numbers, or ``.raw``."""
    from venncell.data.backed import head_rows

    held = {None: adata.X, **adata.layers}
    for other, x in held.items():
        if other == layer or x is None or not (x.shape[0] and x.shape[1]):
            continue
        if not_counts_reason(head_rows(x)) is None:
            where = ".X (no layer)" if other is None else f"`layer={other!r}`"
            return (
                f"register the whole numbers in {where} (on the command line, in `data.register`)."
            )
    raw = adata.raw
    if (
        raw is not None
        and raw.n_obs
        and raw.n_vars
        and not_counts_reason(head_rows(raw.X)) is None
    ):
        return _raw_fix(name, adata)
    return "give them in a layer (e.g. `layer='counts'`)."


def _modality_options(name: str, adata, opts) -> dict:
    if isinstance(opts, str):
        opts = {"kind": opts}
    elif opts is None:
        opts = {}
    elif not isinstance(opts, dict):
        raise VennCellInputError(
            f"Modality '{name}': options must be a kind (str) or a dict, got {type(opts).__name__}."
        )
    opts = dict(opts)
    unknown = set(opts) - set(MODALITY_OPTIONS) - set(IMAGE_OPTIONS)
    if unknown:
        raise VennCellInputError(
            f"Modality '{name}': unknown option(s) {sorted(unknown)}; use "
            f"{sorted(MODALITY_OPTIONS)} (images: {sorted(IMAGE_OPTIONS)})."
        )
    check_zero_variance_policy(name, opts.get("zero_variance", "warn"))
    if opts.get("private_dim") is not None:
        check_range(f"modalities.{name}.private_dim", opts["private_dim"], 1, integer=True)
    if opts.get("weight") is not None:
        check_range(f"modalities.{name}.weight", opts["weight"], 0.0, finite=True)
        opts["weight"] = float(opts["weight"])
    kind = opts.get("kind") or guess_kind(name)
    if kind not in KINDS:
        raise VennCellInputError(f"Modality '{name}': kind '{kind}' is not one of {KINDS}.")
    if kind == "image" or set(opts) & set(IMAGE_OPTIONS):
        from venncell.data.images import image_options

        return image_options(name, kind, adata, opts)
    layer = opts.get("layer")
    if layer is not None and layer not in adata.layers:
        raw = f" {_raw_fix(name, adata)}" if adata.raw is not None else ""
        raise VennCellInputError(
            f"Modality '{name}': layer '{layer}' does not exist (layers: {list(adata.layers) or 'none'})"
            f"{did_you_mean([layer], [str(k) for k in adata.layers])}.{raw}"
        )
    x = adata.X if layer is None else adata.layers[layer]
    if x is None:
        raise VennCellInputError(f"Modality '{name}': .X is empty; name a layer with the data.")
    lik = opts.get("likelihood") or "auto"
    transform = opts.get("transform")
    if transform not in TRANSFORMS:
        raise VennCellInputError(
            f"Modality '{name}': transform {transform!r} is not one of {list(TRANSFORMS)}."
        )
    if transform == "clr":
        if lik not in ("auto", "gaussian"):
            raise VennCellInputError(
                f"Modality '{name}': transform='clr' turns counts into real values, which need "
                f"likelihood='gaussian' (got '{lik}'). Drop the likelihood or the transform."
            )
        lik = "gaussian"
    if lik == "auto":
        from venncell.data.backed import (
            head_rows,
        )  # a backed matrix: guess from its first rows only

        head = head_rows(x) if x.shape[0] and x.shape[1] else None
        if head is not None:
            check_numeric(name, head, layer)
        lik = infer_likelihood(kind, head) if head is not None else KIND_DEFAULT_LIKELIHOOD[kind]
        if lik == "nb" and kind == "features":
            if opts.get("kind") == "features":
                # said features: measurements that happen to be whole numbers (areas, object counts), not
                # sequencing counts to normalise by each cell's total
                lik = "gaussian"
            else:
                warnings.warn(
                    f"Modality '{name}': its name names no kind VennCell knows (rna, atac, protein / adt), so it is "
                    "read as generic features; they are whole numbers only, so they are modelled as counts "
                    "(negative binomial, normalised by each cell's total): right for UMI counts such as hashtags "
                    "or guides, wrong for measurements such as areas. Register it with its kind: kind='protein' "
                    "for antibody counts, kind='rna' or 'atac', kind='features' for measurements (Gaussian), or "
                    "likelihood='nb' to keep generic counts and silence this.",
                    VennCellInputWarning,
                    stacklevel=4,
                )
        if lik == "bernoulli" and kind == "features" and opts.get("kind") != "features":
            # binarised peaks under a name such as 'mod1' would lose ATAC's per-cell depth factors without a word
            warnings.warn(
                f"Modality '{name}': its name names no kind VennCell knows (rna, atac, protein / adt), so it is "
                "read as generic features; they are 0/1 only, so they are modelled as generic binary features "
                "(Bernoulli, no per-cell depth). Register it with its kind: kind='atac' for binarised peaks "
                "(per-cell and per-peak factors), kind='features' for other yes/no measurements, or "
                "likelihood='bernoulli' to keep this and silence it.",
                VennCellInputWarning,
                stacklevel=4,
            )
        if (
            lik == "gaussian"
            and KIND_DEFAULT_LIKELIHOOD[kind] != "gaussian"
            and (reason := not_counts_reason(head))
        ):
            # e.g. log-normalised .X handed over where raw counts were meant: say so rather than quietly fitting a
            # different model
            warnings.warn(
                f"Modality '{name}' (kind '{kind}') has {reason}, so it is modelled as Gaussian, not with the "
                f"{kind} count likelihood ('{KIND_DEFAULT_LIKELIHOOD[kind]}'). If these are normalised values, "
                f"the model needs the counts: {_counts_fix(name, adata, layer)}{rounding_fix(name, head, layer)} "
                "To keep the Gaussian model and silence this, register the modality with `likelihood='gaussian'`.",
                VennCellInputWarning,
                stacklevel=4,
            )
    if lik not in LIKELIHOODS:
        raise VennCellInputError(
            f"Modality '{name}': likelihood '{lik}' is not one of {sorted(LIKELIHOODS)}."
        )
    binarize = opts.get("binarize", lik in BINARY_LIKELIHOODS and kind == "atac")
    if not isinstance(binarize, (bool, np.bool_)):
        raise VennCellInputError(
            f"Modality '{name}': binarize must be true or false, got {binarize!r}."
        )
    return {
        "kind": kind,
        "likelihood": lik,
        "layer": layer,
        "binarize": bool(binarize),
        "private_dim": opts.get("private_dim"),
        "weight": opts.get("weight"),
        "zero_variance": opts.get("zero_variance", "warn"),
        "transform": transform,
    }


def _shown(items, n: int = 10) -> str:
    """The first ``n`` names, and how many more there are: a cut list must not read as the whole one."""
    items = [str(i) for i in items]
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def stored_options(mdata) -> dict | None:
    """``setup_mudata``'s options stored in ``mdata.uns`` (None when the data were never set up)."""
    if REGISTRY_KEY not in mdata.uns:
        return None
    try:
        return json.loads(mdata.uns[REGISTRY_KEY])
    except (TypeError, json.JSONDecodeError):
        raise VennCellInputError(
            f"mdata.uns['{REGISTRY_KEY}'] is not VennCell's setup; call VennCell.setup_mudata(mdata, ...) again."
        ) from None


def as_setup_options(stored: dict) -> dict:
    """A stored setup's modalities in ``setup_mudata``'s own words, to set the data up again (the command line):
    an image's stored ``image_key`` / ``image_store`` become ``obsm_key`` / ``store``, the names it takes."""
    names = {"image_key": "obsm_key", "image_store": "store"}
    keep = ("kind", "private_dim", "weight", "channels", *names)
    return {
        m: {names.get(k, k): v for k, v in o.items() if k in keep and v is not None}
        if o.get("kind") == "image"
        else o
        for m, o in stored["modalities"].items()
    }


# ------------------------------------------------------------------------------------------------ fitting


def fit_registry(
    mdata, options: dict, backed: bool = False, chunk_size: int | None = None
) -> DataRegistry:
    """The ``DataRegistry`` of the training data ``mdata`` set up with ``options`` (see ``setup_options``)."""
    if mdata.n_obs < MIN_CELLS:
        raise VennCellInputError(
            f"The MuData has {mdata.n_obs} cell(s); VennCell needs at least {MIN_CELLS} to "
            "train (and far more to learn anything). Add cells, or use a method for few samples."
        )
    specs = {}
    for name, opts in options["modalities"].items():
        if name not in mdata.mod:
            raise VennCellInputError(
                f"Modality '{name}' is registered but not in the MuData (it has "
                f"{list(mdata.mod)}). Call setup_mudata again."
            )
        specs[name] = fit_modality(
            name,
            mdata.mod[name],
            opts,
            mdata if backed else None,
            chunk_size,
            # in setup_mudata's own words, for the fixes that write its call out
            setup={**options, "modalities": as_setup_options(options)},
        )
    batch_key = options.get("batch_key")
    categories = None
    if batch_key is not None:
        check_batch_column(mdata, batch_key)  # dropped since setup_mudata, say
        # setup_options warned about the labels already
        categories = sorted(set(check_batch_labels(batch_key, mdata.obs[batch_key], warn=False)))
        if not backed:  # a backed modality's counts are read in chunks by the spec's fit only
            _warn_unmeasured_features(mdata, specs, batch_key)
    return DataRegistry(specs, batch_key, categories)


def _warn_unmeasured_features(mdata, specs: dict, batch_key: str) -> None:
    """Protein counts that some batches did not measure (``venncell.data.panels``). Antibody panels differ between
    batches; genes and peaks absent from a batch are more often biology (Y-chromosome genes in female donors)."""
    from venncell.data.panels import batch_labels, warn_unmeasured

    for name, spec in specs.items():
        if spec.kind != "protein" or spec.likelihood not in COUNT_LIKELIHOODS:
            continue
        adata = mdata.mod[name]
        labels = batch_labels(mdata, name, batch_key)
        features = [str(v) for v in adata.var_names]
        warn_unmeasured(name, select_matrix(adata, spec), labels, features, spec.layer)


def base_spec(name: str, opts: dict) -> ModalitySpec:
    """The spec as the options give it, before anything is fitted."""
    known = {
        k: opts.get(k)
        for k in (
            "kind",
            "likelihood",
            "layer",
            "private_dim",
            "weight",
            "transform",
            "image_key",
            "image_store",
            "channels",
        )
        if k in opts
    }
    spec = ModalitySpec(
        name=name,
        binarize=bool(opts.get("binarize", False)),
        zero_variance=opts.get("zero_variance", "warn"),
        **known,
    )
    spec.encoder_transform = default_encoder_transform(spec.likelihood, spec.kind)
    return spec


def fit_modality(
    name: str,
    adata,
    opts: dict,
    backed_mdata=None,
    chunk_size: int | None = None,
    setup: dict | None = None,
) -> ModalitySpec:
    """One modality's spec, fitted on its training data (``backed_mdata``: read it from disk in chunks;
    ``setup``: the whole data's setup options, written into the fixes)."""
    spec = base_spec(name, opts)
    if spec.kind == "image":
        from venncell.data.images import fit_image_spec

        return fit_image_spec(spec, adata)
    var_names = [str(v) for v in adata.var_names]
    check_unique_names(name, var_names)
    check_not_single_count(spec, var_names)
    if backed_mdata is not None:
        from venncell.data.backed import fit_backed_spec

        return fit_backed_spec(spec, backed_mdata, var_names, chunk_size)
    x = select_matrix(adata, spec)
    const = check_matrix(
        name,
        x,
        spec.likelihood,
        var_names,
        spec.binarize,
        spec.zero_variance,
        spec.layer,
        setup=setup,
    )
    spec.features = var_names
    if spec.zero_variance == "drop" and const.size:
        keep = np.setdiff1d(np.arange(x.shape[1]), const)
        if keep.size == 0:
            raise VennCellInputError(
                f"Modality '{name}': every feature has zero variance, so zero_variance='drop' leaves nothing."
            )
        spec.dropped_features = [var_names[i] for i in const]
        spec.features = [var_names[i] for i in keep]
        x = x[:, keep]
    x = as_float32(x, spec)
    if spec.transform == "clr":
        spec.clr_log_geomean = clr_log_geomean(name, x)
        x = apply_transform(spec, x)
    if spec.likelihood == "gaussian" and spec.kind != "image":
        warn_outlier_columns(name, x, spec.features)
    if spec.likelihood == "gaussian":
        _, sd = column_mean_std(x)
        spec.data_scale = np.where(sd > 0, sd, 1.0).tolist()
        x = scale_columns(x, spec.data_scale)
    if spec.encoder_transform == "standardise":
        mean, std = column_mean_std(x)  # sparse-aware: never densify a whole modality
        spec.feature_mean, spec.feature_std = mean.tolist(), (std + 1e-6).tolist()
    spec.median_library = float(np.median(np.asarray(x.sum(1)).ravel().astype(np.float32)))
    return spec


def check_not_single_count(spec: ModalitySpec, features) -> None:
    """Refuse one feature under a count likelihood: its encoders read log counts per 10k of the cell's total (and
    nb / zinb's mean is a share of it), which with one feature is the same in every cell."""
    if len(features) != 1 or spec.likelihood not in COUNT_LIKELIHOODS:
        return
    name = spec.name
    # the counts it was registered with: .X may hold normalised values, constant for one feature
    counts = f"mdata['{name}']." + (f"layers['{spec.layer}']" if spec.layer else "X")
    raise VennCellInputError(
        f"Modality '{name}' has a single feature ({str(features[0])!r}) under a count likelihood "
        f"('{spec.likelihood}'), whose encoder reads each count as a share of the cell's total: with one feature "
        "that share is 1 in every cell, so the modality would tell the encoders nothing. Fix: give its other "
        f"features; or log-transform its counts into a layer, `mdata['{name}'].layers['log1p'] = "
        f"np.log1p({counts})`, and register it as a Gaussian feature, `modalities={{'{name}': "
        "{'kind': 'features', 'layer': 'log1p'}, ...}` in setup_mudata; or leave it out of modalities."
    )


def select_matrix(adata, spec: ModalitySpec):
    """The modality's matrix as registered (``.X`` or a layer)."""
    if spec.layer is None:
        return adata.X
    if spec.layer not in adata.layers:
        raise VennCellInputError(
            f"Modality '{spec.name}': layer '{spec.layer}' does not exist (layers: {list(adata.layers) or 'none'}). "
            "At setup, set layer=None to use .X or name an existing layer; for new cells of a trained model, "
            f"which reads that layer, put the same kind of values there (`mdata['{spec.name}'].layers['{spec.layer}'] = "
            f"mdata['{spec.name}'].X` when .X holds them)."
        )
    return adata.layers[spec.layer]


def as_float32(x, spec: ModalitySpec):
    """float32 CSR for count and binary modalities (and any sparse input), dense float32 otherwise; binarised when
    the spec says so."""
    if sp.issparse(x) or spec.likelihood != "gaussian":
        x = sp.csr_matrix(x, dtype=np.float32)
    else:
        x = np.asarray(x, dtype=np.float32)
    return (x > 0).astype(np.float32) if spec.binarize else x


def align_features(spec: ModalitySpec, var_names) -> np.ndarray | None:
    """Column indices that put new data's features in the model's order (None = already in order)."""
    var_names = [str(v) for v in var_names]
    if var_names == spec.features:
        return None
    check_unique_names(spec.name, var_names)
    pos = {f: i for i, f in enumerate(var_names)}
    missing = [f for f in spec.features if f not in pos]
    if missing:
        # the features setup dropped (zero variance) are known to the model, not extra
        known = set(spec.features) | set(spec.dropped_features)
        extra = [f for f in var_names if f not in known]
        raise VennCellInputError(
            f"Modality '{spec.name}': {len(missing)} feature(s) the model was trained on are missing from the data "
            f"(first: {missing[:5]}); {len(extra)} extra feature(s) (first: {extra[:5]}). Give the data the "
            "model's features (model.registry; a few genes absent from another annotation can be reindexed with zeros), "
            "or embed from the other modalities (modalities=[...]): zeros in place of features that were not "
            "measured, such as proteins outside a panel, read as measured zeros and move the latents. Or retrain."
        )
    features = set(spec.features)
    # the features setup dropped are known, not extra
    extra = set(var_names) - features - set(spec.dropped_features)
    if extra:
        warnings.warn(
            f"Modality '{spec.name}': the data has {len(extra)} extra feature(s); "
            "using the model's features only, in the model's order.",
            VennCellInputWarning,
            stacklevel=4,
        )
    elif [f for f in var_names if f in features] != spec.features:  # beside the dropped ones
        warnings.warn(
            f"Modality '{spec.name}': features reordered to the model's order.",
            VennCellInputWarning,
            stacklevel=4,
        )
    return np.array([pos[f] for f in spec.features])


def drop_zero_variance(
    spec: ModalitySpec, const: np.ndarray, var_names: list[str]
) -> ModalitySpec:
    """The spec with the zero-variance features ``const`` handled by its policy (warned about, dropped or kept)."""
    if spec.zero_variance == "warn":
        warn_zero_variance(spec.name, const, var_names, stacklevel=7)
    if spec.zero_variance != "drop" or not const.size:
        return replace(spec, features=list(var_names))
    keep = np.setdiff1d(np.arange(len(var_names)), const)
    if keep.size == 0:
        raise VennCellInputError(
            f"Modality '{spec.name}': every feature has zero variance, so zero_variance='drop' leaves nothing."
        )
    return replace(
        spec, features=[var_names[i] for i in keep], dropped_features=[var_names[i] for i in const]
    )
