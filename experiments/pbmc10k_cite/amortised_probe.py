"""Probe (not a VennCell feature): would amortised stage-1 latents beat the latent tables on PBMC's kNN labels?

VennCell's stage-1 latents stay close to their spectral start (RESULTS.md: untrained start 0.944 / 0.851, trained
0.944 / 0.850), and totalVI, an amortised VAE, scores 0.943 / 0.857. This probe replaces the per-cell latent tables
by one joint encoder over both modalities (VennCell's encoder input transforms, concatenated) and trains it with
VennCell's unchanged stage-1 objective and decoders:

- ``ae``: the encoder's output is the latent (deterministic autoencoder, VennCell's latent noise and L2);
- ``vae``: the encoder gives a mean and a log-variance, the latent is sampled, plus KL to N(0, I) divided by
  ``--kl-scale`` (the NB terms are means over features, so 2,000 puts KL on totalVI's footing against ~2,000 genes).

Usage: OMP_NUM_THREADS=1 python experiments/pbmc10k_cite/amortised_probe.py --variant ae --epochs 30
Appends its row to amortised_probe.json and prints every row. kNN: every cell's latent (encoder mean), the
protocol of run.py (k = 15, 5-fold).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from run import LABELS, knn_accuracy, load  # beside this script

from venncell import VennCell
from venncell.data.dataset import make_loader
from venncell.data.transforms import encoder_transform
from venncell.nn import MLP

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=["ae", "vae"], default="ae")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--kl-scale", type=float, default=2000.0)
    ap.add_argument(
        "--rna-weight",
        type=float,
        default=1.0,
        help="RNA reconstruction weight (ModalitySpec.weight; run.py's rna_weight300 uses 300)",
    )
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mdata, labels = load()
    VennCell.setup_mudata(
        mdata, modalities={"rna": {"kind": "rna", "weight": a.rna_weight}, "protein": "protein"}
    )
    vae = a.variant == "vae"
    # the VAE's sampling replaces the latent noise and its KL the latent L2
    extra = dict(latent_noise=0.0, latent_l2=0.0) if vae else {}
    # point latents: the probe's encoder replaces the latent tables, and its VAE variant brings its own posterior
    model = VennCell(
        mdata,
        seed=0,
        shared_dim=16,
        private_dim=8,
        latent_init="random",
        latent_posterior="point",
        **extra,
    )
    mod, data = model.module, model.data
    mods = mod.modalities
    dims = [mod.cfg.shared_dim] + [mod.private_dims[m] for m in mods]
    n_in = sum(s.n_features for s in mod.specs.values())
    joint = MLP(n_in, sum(dims) * (2 if vae else 1), 256, 2, 0.0)
    state: dict = {}

    def encode(batch) -> torch.Tensor:
        inp = torch.cat(
            [encoder_transform(mod.specs[m], batch.x[m], batch.lib[m]) for m in mods], 1
        )
        out = joint(inp)
        if not vae:
            return out
        mean, log_var = out[:, : sum(dims)], out[:, sum(dims) :].clamp(-10.0, 6.0)
        state["kl"] = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(1).mean()
        return mean + torch.randn_like(mean) * (0.5 * log_var).exp() if joint.training else mean

    def split(z: torch.Tensor):
        parts = z.split(dims, 1)
        return parts[0], dict(zip(mods, parts[1:]))

    # stage1_loss reads the batch's latents through module.latents: here they come from the joint encoder
    mod.latents = lambda idx: split(state["z"])
    params = list(joint.parameters()) + mod.network_parameters()
    opt = torch.optim.Adam(params, lr=1e-3)
    loader = make_loader(data, np.flatnonzero(model.is_train), 128, shuffle=True, seed=0)
    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            state["z"] = encode(batch)
            loss = mod.stage1_loss(batch).loss + (state["kl"] / a.kl_scale if vae else 0.0)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
    seconds = time.perf_counter() - t0
    joint.eval()
    with torch.no_grad():
        z = torch.cat(
            [
                encode(data.get(np.arange(s, min(s + 1024, data.n_cells))))
                for s in range(0, data.n_cells, 1024)
            ]
        ).numpy()
    row = {
        "variant": a.variant,
        "epochs": a.epochs,
        "kl_scale": a.kl_scale if vae else None,
        "rna_weight": a.rna_weight,
        "train_seconds": round(seconds, 1),
        "shared": {lab: knn_accuracy(z[:, : dims[0]], labels[lab]) for lab in LABELS},
        "shared ⊕ privates": {lab: knn_accuracy(z, labels[lab]) for lab in LABELS},
    }
    out = HERE / "amortised_probe.json"
    rows = json.loads(out.read_text()) if out.exists() else []
    key = ("variant", "epochs", "kl_scale", "rna_weight")
    rows = [r for r in rows if tuple(r.get(k, 1.0) for k in key) != tuple(row[k] for k in key)]
    out.write_text(json.dumps(rows + [row], indent=1))
    for r in rows + [row]:
        print(r)


if __name__ == "__main__":
    main()
