"""Per-feature attribution: how much of each feature the full decoder explains, how much the shared block alone
explains, and the shared / private fractions with bootstrap intervals (see ``venncell.analysis.attribution``)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
import torch

from venncell.analysis.probes import boot_weights, with_ci
from venncell.data.validate import VennCellInputError
from venncell.module.regions import block_key

VAR_PREFIX = "venn_"


def _normalised_observed(spec, x: torch.Tensor, lib: torch.Tensor) -> torch.Tensor:
    """Observed data on the decoders' normalised scale (what ``likelihood.normalised_mean`` predicts)."""
    return (
        x / lib if spec.likelihood in ("nb", "zinb") else x
    )  # nb_mixture's normalised scale is counts


def _decoder_variants(module, m: str, zs, zr, zp_all, rows, perms, b) -> dict[str, torch.Tensor]:
    """Normalised decoder means for one chunk of cells under each way of (not) using the private block; ``zr``:
    the chunk's region blocks of m (Venn regions), which stay as they are."""
    dec, lik = module.decoders[m], module.decoders[m].likelihood
    zp = zp_all[rows]

    def full(z_private):
        return lik.normalised_mean(dec(module.decoder_input(m, zs, z_private, zr), b))

    return {
        "full": full(zp),
        "shared_decoder": lik.normalised_mean(module.shared_decoders[m](zs, b)),
        "private_mean": full(zp_all.mean(0, keepdim=True).expand_as(zp)),
        "private_permuted": full(zp_all[perms[0][rows]]),
        "private_marginalised": torch.stack([full(zp_all[p[rows]]) for p in perms[1:]]).mean(0),
    }


_BOOTSTRAPPED = ("full", "shared_decoder", "private_marginalised")


def feature_attribution(module, data, m: str, idx: np.ndarray, lat: dict, cfg, rng):
    """Per-feature EVs and fractions for modality m (see module docstring) and their bootstrap draws.

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
    acc: dict[str, np.ndarray] = defaultdict(float)
    module.eval()
    with torch.no_grad():
        for start in range(0, n, 1024):
            rows = torch.arange(start, min(start + 1024, n))
            batch = data.get(cells[rows.numpy()])
            y = _normalised_observed(spec, batch.x[m], batch.lib[m]).double().numpy()
            w = weights[:, rows.numpy()]
            acc["sy"] = acc["sy"] + w @ y
            acc["syy"] = acc["syy"] + w @ y**2
            zr = {r: z[rows] for r, z in zr_all.items()}
            preds = _decoder_variants(
                module, m, zs_all[rows], zr, zp_all, rows, perms, batch.batch
            )
            for v, p in preds.items():
                err = (y - p.double().numpy()) ** 2
                acc[v] = acc[v] + (w if v in _BOOTSTRAPPED else w[:1]) @ err
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
    df = pd.DataFrame(table, index=pd.Index(spec.features, name="feature"))
    df.attrs["shared_estimate"] = shared_key
    return df, boot


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
    fractions of features the decoder barely explains)."""
    shared, private = venn_regions(boot)
    s, p = shared.mean(1), private.mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(s + p > 0, s / (s + p), np.nan)
    out = {"modality": m, "n_features": shared.shape[1]}
    for name, v in (
        ("ev_shared", s),
        ("ev_private", p),
        ("ev_explained", s + p),
        ("shared_share", share),
    ):
        out.update(with_ci(name, v, cfg.ci))
    out["ev_unexplained"] = 1.0 - out["ev_explained"]
    return out


def top_features(df: pd.DataFrame, n: int) -> dict[str, list[str]]:
    shared, private = venn_regions(
        {"full": df["ev_full"].to_numpy(), "shared": df["ev_shared"].to_numpy()}
    )
    out = {}
    for region, ev in (("shared", shared), ("private", private)):
        top = np.argsort(-ev)[:n]
        out[region] = [
            str(df.index[i]) for i in top if ev[i] > 0
        ]  # a region nothing falls in stays empty
    return out


def write_var_columns(mdata, features: dict[str, pd.DataFrame]) -> None:
    """Per-feature EVs and fractions (with CIs) as ``mdata[mod].var["venn_*"]`` columns."""
    for m, df in features.items():
        var = mdata.mod[m].var
        for col in df.columns:
            var[VAR_PREFIX + col] = df[col].reindex(var.index.astype(str)).to_numpy()
