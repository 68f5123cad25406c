"""Image modalities: cells x C x H x W crops, in ``.obsm[key]`` or in an external ``.npy`` / zarr store.

A store is opened memory-mapped (``np.load(mmap_mode="r")`` or ``zarr.open``) and only the rows of a
mini-batch are read, so image sets larger than memory train like any other modality. Several modalities may
share one store and pick different ``channels`` of it (e.g. a DNA channel vs cytoskeleton channels).

Pixels reach the model standardised per channel (mean / std over every cell and pixel, computed once at setup
and saved with the model) and flattened to ``C*H*W`` columns, so the rest of VennCell sees an ordinary
Gaussian modality; the CNN encoder and decoder (``venncell.nn.cnn``) reshape them using ``spec.image_shape``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from venncell.data.validate import VennCellInputError, VennCellInputWarning, check_image_array

# ``adata.uns`` key naming a modality's store file; new data for a saved model points at its own store here.
STORE_UNS_KEY = "venncell_image_store"
# the .obsm key setup_mudata named for this data: new cells' own setup, whatever the model was trained from
OBSM_UNS_KEY = "venncell_image_obsm_key"
_CHUNK = 512  # rows per read when scanning a whole store (statistics, NaN check)


def open_store(name: str, path: str | Path):
    """Open a store lazily: ``.npy`` memory-mapped, ``.zarr`` through zarr (optional dependency)."""
    p = Path(path)
    if not p.exists():
        raise VennCellInputError(
            f"Modality '{name}': image store {str(p)!r} does not exist. Fix the `store` path in setup_mudata "
            f"(or `adata.uns['{STORE_UNS_KEY}']` of that modality), or put the array in `.obsm` instead."
        )
    if p.suffix == ".zarr" or p.is_dir():
        try:
            import zarr
        except ImportError:
            raise VennCellInputError(
                f"Modality '{name}': image store {str(p)!r} is a zarr store but zarr is not installed. "
                "`pip install zarr`, or save the array as .npy (np.save)."
            ) from None
        return zarr.open_array(str(p), mode="r")
    try:
        return np.load(p, mmap_mode="r", allow_pickle=False)
    except ValueError as e:  # object arrays need pickling and cannot be memory-mapped
        raise VennCellInputError(
            f"Modality '{name}': image store {str(p)!r} cannot be memory-mapped ({e}); it must hold a numeric "
            "array (save it with `np.save(path, images.astype(np.float32))`)."
        ) from None
    except OSError as e:
        raise VennCellInputError(
            f"Modality '{name}': image store {str(p)!r} is not a readable .npy file ({e})."
        ) from None


def _read_rows(arr, rows: np.ndarray) -> np.ndarray:
    if hasattr(arr, "get_orthogonal_selection"):  # zarr
        return np.asarray(
            arr.get_orthogonal_selection((rows, slice(None), slice(None), slice(None)))
        )
    # np.memmap (fancy indexing reads only these rows), in-memory arrays, h5py datasets (sorted rows)
    return np.asarray(arr[rows])


class ImageSource:
    """One modality's view of an image array: selected channels, standardised, flattened per cell."""

    def __init__(self, name: str, array, channels: list[int] | None, n_obs: int):
        check_image_array(name, array, channels, n_obs)
        self.name = name
        self.array = array
        self.channels = (
            list(range(array.shape[1])) if channels is None else [int(c) for c in channels]
        )
        self.shape = (len(self.channels), int(array.shape[2]), int(array.shape[3]))
        self.mean = np.zeros(len(self.channels))
        self.std = np.ones(len(self.channels))

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def raw(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")  # sorted reads are sequential on disk
        out = np.empty((len(rows),) + self.shape, dtype=np.float32)
        if len(rows):
            block = _read_rows(self.array, rows[order])
            out[order] = block[:, self.channels].astype(np.float32)
        return out

    def scan(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std over all cells, checking every pixel is finite on the way."""
        total = np.zeros(len(self.channels))
        sq = np.zeros(len(self.channels))
        n_pix = 0
        for start in range(0, len(self), _CHUNK):
            x = self.raw(np.arange(start, min(start + _CHUNK, len(self)))).astype(np.float64)
            finite = np.isfinite(x)
            if not finite.all():
                i, c, h, w = np.unravel_index(int(np.argmin(finite.ravel())), x.shape)
                raise VennCellInputError(
                    f"Modality '{self.name}': the images contain {int((~finite).sum())}+ NaN/inf pixel(s) (first at "
                    f"cell row {start + i}, channel {self.channels[c]}, pixel ({h}, {w})). Replace them (e.g. "
                    "`np.nan_to_num(images)`) or drop those cells before training or embedding."
                )
            total += x.sum((0, 2, 3))
            sq += (x**2).sum((0, 2, 3))
            n_pix += x.shape[0] * x.shape[2] * x.shape[3]
        mean = total / max(n_pix, 1)
        std = np.sqrt(np.maximum(sq / max(n_pix, 1) - mean**2, 0.0)) + 1e-6
        return mean, std

    def set_stats(self, mean, std) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __getitem__(self, rows) -> np.ndarray:
        """Standardised pixels of these rows, flattened to ``C*H*W`` columns."""
        x = self.raw(rows)
        x = (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]
        return x.reshape(len(x), -1)


def _open_array(spec, adata, training: bool):
    """The modality's image array: ``.obsm[spec.image_key]`` when the data has it; otherwise the store named in
    ``adata.uns`` (set by setup_mudata, or by the user for new data) and, for the training data, the store the
    registry recorded. So a saved model embeds new data from that data's own store, never from the training one."""
    name = spec.name
    path = adata.uns.get(STORE_UNS_KEY) or (spec.image_store if training else None)
    own = adata.uns.get(OBSM_UNS_KEY)
    # new cells' own setup first: a model trained from a store has no .obsm key of its own
    if not training and own is not None and own in adata.obsm:
        return adata.obsm[own]
    if spec.image_key is not None and spec.image_key in adata.obsm:
        return adata.obsm[spec.image_key]
    if path is not None:
        return open_store(name, path)
    if spec.image_key is not None:
        raise VennCellInputError(
            f"Modality '{name}': `.obsm['{spec.image_key}']` does not exist (obsm keys: "
            f"{list(adata.obsm) or 'none'}). Put the cells x C x H x W array there, or point "
            f"`mdata['{name}'].uns['{STORE_UNS_KEY}']` at a .npy/.zarr file holding it."
        )
    raise VennCellInputError(
        f"Modality '{name}' is an image modality stored outside the MuData, but this data names no store. "
        f"Set `mdata['{name}'].uns['{STORE_UNS_KEY}'] = 'path/to/images.npy'` (rows = this modality's cells) "
        f"or set the data up with setup_mudata(mdata, modalities={{'{name}': {{'kind': 'image', 'store': path}}}}) "
        "(or 'obsm_key': key for crops in .obsm)."
    )


def fit_image_spec(spec, adata):
    """The spec with the training images' shape and per-channel statistics (one scan, checking every pixel)."""
    src = ImageSource(
        spec.name, _open_array(spec, adata, training=True), spec.channels, adata.n_obs
    )
    mean, std = src.scan()
    # the same value in every pixel of every cell: nothing to learn, and the spectral start divides by its spread
    flat = [int(c) for c in np.flatnonzero(std <= 1e-5 * np.maximum(1.0, np.abs(mean)))]
    if flat:
        picked = spec.channels if spec.channels is not None else list(range(len(std)))
        raise VennCellInputError(
            f"Modality '{spec.name}': channel(s) {[picked[c] for c in flat]} of its images hold one value in every "
            f"pixel of every cell ({', '.join(f'{mean[c]:g}' for c in flat)}); an empty or wrongly chosen channel. "
            "Pick the channels that were imaged (channels=[...]) or leave the modality out."
        )
    spec.image_shape = list(src.shape)
    spec.channel_mean, spec.channel_std = mean.tolist(), std.tolist()
    return spec


def image_source(spec, adata, training: bool) -> ImageSource:
    """The modality's images as the model reads them, standardised with the spec's (training) statistics."""
    src = ImageSource(spec.name, _open_array(spec, adata, training), spec.channels, adata.n_obs)
    if not training:
        if spec.image_shape is not None and list(src.shape) != list(spec.image_shape):
            fix = (
                "Crop/resize them to the training size."
                if src.shape[0] == spec.image_shape[0]
                else f"Give the {spec.image_shape[0]} channel(s) the model was trained on, in the same order."
            )
            raise VennCellInputError(
                f"Modality '{spec.name}': images are {tuple(src.shape)} (channels x height x width) but the model "
                f"was trained on {tuple(spec.image_shape)}. {fix}"
            )
        # the model's own statistics standardise the crops; the scan checks finiteness and the intensity scale
        # (no crops, nothing to compare)
        if len(src):
            warn_other_scale(spec, *src.scan())
    src.set_stats(spec.channel_mean, spec.channel_std)
    return src


def warn_other_scale(spec, mean: np.ndarray, std: np.ndarray) -> None:
    """Warn when new crops' intensities are on another scale than training's (another bit depth, a rescaled
    export): the model standardises them with training's statistics, so their latents would shift silently."""
    t_mean, t_std = np.asarray(spec.channel_mean), np.asarray(spec.channel_std)
    off = [
        i
        for i in range(len(t_std))
        if not 0.2 <= std[i] / t_std[i] <= 5 or abs(mean[i] - t_mean[i]) > 3 * t_std[i]
    ]
    if off:
        picked = spec.channels if spec.channels is not None else list(range(len(t_std)))
        shown = "; ".join(
            f"channel {picked[i]}: mean {mean[i]:.4g}, sd {std[i]:.4g} (training {t_mean[i]:.4g}, "
            f"{t_std[i]:.4g})"
            for i in off
        )
        warnings.warn(
            f"Modality '{spec.name}': these crops' intensities are on another scale than the training crops' "
            f"({shown}). If they were saved with another bit depth or rescaled, give them as in training (same "
            "dtype and scale); their latents are otherwise not comparable with the training cells'.",
            VennCellInputWarning,
            stacklevel=2,
        )


def downsample(x: np.ndarray, shape, max_side: int = 16) -> np.ndarray:
    """Average-pool flattened images to at most ``max_side`` pixels a side (for PCA-based initialisation)."""
    import torch
    import torch.nn.functional as F

    c, h, w = shape
    t = torch.as_tensor(x, dtype=torch.float32).reshape(-1, c, h, w)
    t = F.adaptive_avg_pool2d(t, (min(h, max_side), min(w, max_side)))
    return t.reshape(len(t), -1).numpy()


def image_options(name: str, kind: str, adata, opts: dict) -> dict:
    """The validated setup options of an image modality (called by ``VennCell.setup_mudata``).

    Options: ``obsm_key`` (array in ``adata.obsm``) or ``store`` (path of a ``.npy`` / ``.zarr`` array whose
    row i is the modality's cell i), ``channels`` (indices into the array's channel axis; default all),
    ``private_dim``, ``weight``. The likelihood is Gaussian on per-channel standardised pixels.
    """
    if kind != "image":
        raise VennCellInputError(
            f"Modality '{name}': options obsm_key/store/channels are for image modalities; set kind: image."
        )
    key, store = opts.get("obsm_key"), opts.get("store")
    if (
        key is None and store is None
    ):  # a MuData written after an earlier setup keeps its store path
        store = adata.uns.get(STORE_UNS_KEY)
    if (key is None) == (store is None):
        raise VennCellInputError(
            f"Modality '{name}' is an image modality: give exactly one of obsm_key (a cells x C x H x W array in "
            f"`.obsm`) or store (path of a .npy/.zarr file holding it); got obsm_key={key!r}, store={store!r}."
        )
    if opts.get("likelihood") not in (None, "auto", "gaussian"):
        raise VennCellInputError(
            f"Modality '{name}': image modalities use the Gaussian likelihood on standardised pixels; "
            f"likelihood={opts['likelihood']!r} is not supported (drop the option)."
        )
    # pixels are standardised per channel: no feature-wise transform or zero-variance rule applies
    for bad in ("layer", "binarize", "transform"):
        if opts.get(bad):
            raise VennCellInputError(
                f"Modality '{name}': option {bad!r} does not apply to image modalities; drop it."
            )
    if opts.get("zero_variance") not in (None, "warn"):
        raise VennCellInputError(
            f"Modality '{name}': option 'zero_variance' does not apply to image modalities (pixels are "
            "standardised per channel); drop it."
        )
    if adata.n_vars:
        raise VennCellInputError(
            f"Modality '{name}' is an image modality but its AnnData has {adata.n_vars} feature column(s); the "
            "pixels live in .obsm or a store. Register tabular features as a separate modality of kind 'features'."
        )
    channels = opts.get("channels")
    if channels is not None:
        channels = [channels] if isinstance(channels, (int, np.integer)) else list(channels)
        channels = [
            int(c) if isinstance(c, (int, np.integer)) else c for c in channels
        ]  # JSON-safe
    if store is not None:
        store = str(Path(store).resolve())
        arr = open_store(name, store)
        adata.uns[STORE_UNS_KEY] = store
        adata.uns.pop(OBSM_UNS_KEY, None)
    else:
        if key not in adata.obsm:
            raise VennCellInputError(
                f"Modality '{name}': `.obsm['{key}']` does not exist (obsm keys: {list(adata.obsm) or 'none'}). "
                "Put the cells x C x H x W array there or register a `store` path."
            )
        arr = adata.obsm[key]
        adata.uns[OBSM_UNS_KEY] = key
        adata.uns.pop(STORE_UNS_KEY, None)
    check_image_array(name, arr, channels, adata.n_obs)
    return {
        "kind": "image",
        "likelihood": "gaussian",
        "layer": None,
        "binarize": False,
        "private_dim": opts.get("private_dim"),
        "weight": opts.get("weight"),
        "image_key": key,
        "image_store": store,
        "channels": channels,
    }
