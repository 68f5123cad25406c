"""Per-feature attribution: how much of each feature the full decoder explains, how much the shared block alone
explains, and the shared / private fractions with bootstrap intervals (see ``venncell.analysis.attribution``)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
import torch

from venncell.analysis.direction_variance import centred_along, drops_from_ev
from venncell.analysis.probes import boot_weights, centred_ci, with_ci
from venncell.data.spec import PROPORTION_LIKELIHOODS
from venncell.data.validate import VennCellInputError
from venncell.data.written_keys import drop_stale_keys, recorded
from venncell.module.regions import block_key, region_name

VAR_PREFIX = "venn_"
VAR_RECORD = "venncell_var"  # each modality's .uns: the var columns the last attribution wrote
# a block holding < 1 % of the variance of every member's features is reported empty
EMPTY_EV = 0.01


def normalised_observed(spec, x: torch.Tensor, lib: torch.Tensor) -> torch.Tensor:
    """Observed data on the decoders' normalised scale (what ``likelihood.normalised_mean`` predicts)."""
    return x / lib if spec.likelihood in PROPORTION_LIKELIHOODS else x


def _decoder_variants(
    module, m: str, zs_all, zr_all, zp_all, rows, perms, b, along=None
) -> dict[str, torch.Tensor]:
    """Normalised decoder means for one chunk of cells under each way of (not) using the private block. With Venn
    regions, also the full decoder with the shared block and with each of m's region blocks marginalised. With
    ``along`` (``direction_variance.centred_along``), also the full decoder with each latent direction's coordinate
    set to its mean (``direction:<i>``)."""
    dec, lik = module.decoders[m], module.decoders[m].likelihood
    zs, zp = zs_all[rows], zp_all[rows]
    zr = {r: z[rows] for r, z in zr_all.items()}

    def full(z_shared=zs, z_private=zp, z_regions=zr):
        return lik.normalised_mean(dec(module.decoder_input(m, z_shared, z_private, z_regions), b))

    def marginalised(swap):  # the mean over the permutations perms[1:] of one block
        return torch.stack([full(**swap(p[rows])) for p in perms[1:]]).mean(0)

    out = {
        "full": full(),
        "shared_decoder": lik.normalised_mean(module.shared_decoders[m](zs, b)),
        "private_mean": full(z_private=zp_all.mean(0, keepdim=True).expand_as(zp)),
        "private_permuted": full(z_private=zp_all[perms[0][rows]]),
        "private_marginalised": marginalised(lambda p: {"z_private": zp_all[p]}),
    }
    if zr_all:
        out["shared_marginalised"] = marginalised(lambda p: {"z_shared": zs_all[p]})
        for r, z in zr_all.items():
            out[f"region_marginalised:{r}"] = marginalised(
                lambda p, r=r, z=z: {"z_regions": {**zr, r: z[p]}}
            )
    parts = {"shared": zs, "private": zp, **zr}
    for i, (part, axis, centre) in (along or {}).items():
        z = parts[part] + (centre - parts[part] @ axis)[:, None] * axis[None, :]
        if part == "shared":
            out[f"direction:{i}"] = full(z_shared=z)
        elif part == "private":
            out[f"direction:{i}"] = full(z_private=z)
        else:
            out[f"direction:{i}"] = full(z_regions={**zr, part: z})
    return out


_BOOTSTRAPPED = ("full", "shared_decoder", "private_marginalised")


def _bootstrapped(variant: str) -> bool:
    return variant in _BOOTSTRAPPED or variant.endswith("marginalised")


def feature_attribution(module, data, m: str, idx: np.ndarray, lat: dict, cfg, rng, directions=()):
    """Per-feature EVs and fractions for modality m (see module docstring), their bootstrap draws, and the EV of
    m's features each of ``directions`` holds (``venncell.analysis.direction_variance``; NaN where m's decoder does
    not read its block), from the same pass over the data.

    Sums of squares are accumulated chunk by chunk against a (1 + n_boot) x cells weight matrix (row 0 =
    all ones = the point estimate), so no cells x features array of errors is ever held.
    """
    spec = data.specs[m]
    keep = data.present(m)[idx]
    cells, pos = idx[keep], np.flatnonzero(keep)
    n = len(cells)
    if n < 3:
        raise VennCellInputError(
            f"Modality '{m}' has {n} cell(s) among those analysed; attribution needs at least 3."
        )
    weights = boot_weights(n, cfg.n_boot, rng)
    zs_all = torch.as_tensor(lat["shared"][pos])
    zp_all = torch.as_tensor(lat[f"private:{m}"][pos])
    zr_all = {r: torch.as_tensor(lat[block_key(r)][pos]) for r in module.regions_of[m]}
    perms = [torch.as_tensor(rng.permutation(n)) for _ in range(cfg.n_marginal + 1)]
    along = centred_along(directions, m, module, {"shared": zs_all, "private": zp_all, **zr_all})
    acc: dict[str, np.ndarray] = defaultdict(float)
    module.eval()
    with torch.no_grad():
        for start in range(0, n, 1024):
            rows = torch.arange(start, min(start + 1024, n))
            batch = data.get(cells[rows.numpy()])
            y = normalised_observed(spec, batch.x[m], batch.lib[m]).double().numpy()
            w = weights[:, rows.numpy()]
            acc["sy"] = acc["sy"] + w @ y
            acc["syy"] = acc["syy"] + w @ y**2
            preds = _decoder_variants(
                module, m, zs_all, zr_all, zp_all, rows, perms, batch.batch, along
            )
            for v, p in preds.items():
                err = (y - p.double().numpy()) ** 2
                acc[v] = acc[v] + (w if _bootstrapped(v) else w[:1]) @ err
    sst = acc.pop("syy") - acc.pop("sy") ** 2 / n
    with np.errstate(divide="ignore", invalid="ignore"):
        ev = {
            v: np.where(sst[: len(s)] > 0, 1.0 - s / sst[: len(s)], np.nan) for v, s in acc.items()
        }
    shared_key = _shared_key(module, cfg)
    boot = {"full": ev["full"], "shared": ev[shared_key]}
    frac = _shared_fraction(boot["shared"], boot["full"])
    table = {"ev_full": ev["full"], "ev_shared": ev[shared_key]}
    table = {k: v for name, b in table.items() for k, v in with_ci(name, b, cfg.ci).items()}
    table.update(
        {
            f"ev_{v}": ev[v][0]
            for v in ("shared_decoder", "private_marginalised", "private_mean", "private_permuted")
        }
    )
    table.update(with_ci("shared_fraction", frac, cfg.ci))
    table.update(with_ci("private_fraction", 1.0 - frac, cfg.ci))
    if module.regions_of[m]:
        for name, draws in region_decomposition(ev, module.regions_of[m]).items():
            boot[f"in:{name}"] = draws
            table.update(with_ci(f"ev_in_{name}", draws, cfg.ci))
    df = pd.DataFrame(table, index=pd.Index(spec.feature_names, name="feature"))
    df.attrs["shared_estimate"] = shared_key
    return df, boot, drops_from_ev(ev, len(directions))


def region_decomposition(ev: dict[str, np.ndarray], regions: list[str]) -> dict[str, np.ndarray]:
    """A feature's EV split over the blocks its decoder reads (Venn regions): each block's share is the EV lost when
    that block alone is marginalised, normalised over the blocks, times the full EV (so the parts add up to it).
    Keys: ``shared``, each region's name, ``private``; values shaped like ``ev["full"]``."""
    keys = {"shared": "shared_marginalised", "private": "private_marginalised"}
    keys.update({r: f"region_marginalised:{r}" for r in regions})
    order = ["shared", *regions, "private"]
    full = np.clip(np.nan_to_num(ev["full"], nan=0.0), 0.0, None)
    drops = {
        b: np.clip(np.nan_to_num(ev["full"] - ev[keys[b]], nan=0.0), 0.0, None) for b in order
    }
    total = sum(drops.values())
    with np.errstate(divide="ignore", invalid="ignore"):
        return {b: np.where(total > 0, full * drops[b] / total, 0.0) for b in order}


def _shared_key(module, cfg) -> str:
    """The shared-only decoder estimates E[x | shared] directly (robust to a private block that carries some
    shared signal), but only when it was trained; otherwise marginalise the full decoder."""
    choice = cfg.shared_estimate
    if choice == "auto":
        choice = "decoder" if module.cfg.shared_only_weight > 0 else "marginal"
    return "shared_decoder" if choice == "decoder" else "private_marginalised"


def _shared_fraction(ev_shared: np.ndarray, ev_full: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ev_full > 0, np.clip(ev_shared / ev_full, 0.0, 1.0), np.nan)


def venn_regions(boot: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature Venn regions: shared EV and private EV, clipped so that 0 <= shared <= full."""
    full = np.clip(np.nan_to_num(boot["full"], nan=0.0), 0.0, None)
    shared = np.minimum(np.clip(np.nan_to_num(boot["shared"], nan=0.0), 0.0, None), full)
    return shared, full - shared


def modality_summary(m: str, boot: dict[str, np.ndarray], cfg) -> dict:
    """Mean over features of the Venn regions; the shared share is a ratio of means (robust to the noisy
    fractions of features the decoder barely explains). Features without an EV (constant ones: no variance to
    explain) are left out, not counted as 0; ``n_features`` counts the others. Intervals are ``centred_ci``'s."""
    defined = np.isfinite(boot["full"][0])
    boot = {k: v[:, defined] for k, v in boot.items()}
    shared, private = venn_regions(boot)
    if shared.shape[1]:
        s, p = shared.mean(1), private.mean(1)
    else:  # every feature constant: no region has a mean (numpy would warn of an empty slice)
        s = p = np.full(shared.shape[0], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(s + p > 0, s / (s + p), np.nan)
    out = {"modality": m, "n_features": shared.shape[1]}
    for name, v in (
        ("ev_shared", s),
        ("ev_private", p),
        ("ev_explained", s + p),
        ("shared_share", share),
    ):
        out.update(centred_ci(name, v, cfg.ci))
    out["ev_unexplained"] = 1.0 - out["ev_explained"]
    for key, draws in boot.items():  # Venn regions: the mean EV in each block m's decoder reads
        if key.startswith("in:"):
            means = draws.mean(1) if draws.shape[1] else np.full(len(draws), np.nan)
            out.update(centred_ci(f"ev_in_{key[3:]}", means, cfg.ci))
    return out


def ev_in_blocks(df: pd.DataFrame) -> list[str]:
    """The blocks of a Venn-region model that ``df`` has ``ev_in_<block>`` columns for (point estimates, in column
    order); empty for a model without regions."""
    return [
        c[len("ev_in_") :]
        for c in df.columns
        if c.startswith("ev_in_") and not c.endswith(("_lo", "_hi"))
    ]


def feature_regions(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-feature EV in each block the modality's decoder reads: ``shared``, its Venn regions (when the model has
    them) and ``private``."""
    blocks = ev_in_blocks(df)
    if blocks:
        return {b: df[f"ev_in_{b}"].to_numpy() for b in blocks}
    shared, private = venn_regions(
        {"full": df["ev_full"].to_numpy(), "shared": df["ev_shared"].to_numpy()}
    )
    return {"shared": shared, "private": private}


def top_features(df: pd.DataFrame, n: int) -> dict[str, list[str]]:
    """The ``n`` features with the most EV in each block (``feature_regions``); a block nothing falls in stays empty."""
    out = {}
    for region, ev in feature_regions(df).items():
        top = np.argsort(-ev)[:n]
        out[region] = [str(df.index[i]) for i in top if ev[i] > 0]
    return out


def region_table(module, features: dict[str, pd.DataFrame], lat: dict) -> pd.DataFrame:
    """How big each block of the Venn diagram is: one row per latent block (``shared``, each region, each private)
    with its members, latent width and variance (on the analysed cells), the mean EV it holds of each member's
    features (``feature_regions``), and ``empty`` when that EV is below ``EMPTY_EV`` for every member."""
    mods = list(module.modalities)
    blocks = [("shared", "shared", tuple(mods), module.cfg.shared_dim)]
    blocks += [(block_key(r), r, ms, module.region_dims[r]) for r, ms in module.regions.items()]
    blocks += [(f"private:{m}", "private", (m,), module.private_dims[m]) for m in mods]
    parts = {m: feature_regions(features[m]) for m in mods}
    rows = []
    for key, part, members, dim in blocks:
        ev = {m: float(np.mean(parts[m][part])) if len(parts[m][part]) else 0.0 for m in members}
        z = lat[key]
        z = z[np.isfinite(z).all(1)]
        rows.append(
            {
                "block": key,
                "members": region_name(members),
                "dim": dim,
                "latent_variance": float(z.var(0).sum()) if len(z) > 1 else np.nan,
                **{f"ev_{m}": ev.get(m, np.nan) for m in mods},
                "empty": max(ev.values()) < EMPTY_EV,
            }
        )
    return pd.DataFrame(rows)


def write_var_columns(mdata, features: dict[str, pd.DataFrame]) -> None:
    """Per-feature EVs and fractions (with CIs) as ``mdata[mod].var["venn_*"]`` columns; those of an earlier run
    that this one does not write (a modality or block of another model) are removed."""
    for m, ad in mdata.mod.items():
        df = features.get(m)
        columns = [] if df is None else [VAR_PREFIX + col for col in df.columns]
        drop_stale_keys(ad.var, recorded(ad.uns, VAR_RECORD), columns, f"mdata['{m}'].var")
        for col, column in zip([] if df is None else df.columns, columns):
            ad.var[column] = df[col].reindex(ad.var.index.astype(str)).to_numpy()
        ad.uns[VAR_RECORD] = columns
