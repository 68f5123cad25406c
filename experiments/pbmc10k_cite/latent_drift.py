"""Why VennCell's PBMC latents stay at the level of their linear start: cell-type kNN of the stage-1 latents while
stage 1 runs.

Usage (from the repository root):
    OMP_NUM_THREADS=1 python experiments/pbmc10k_cite/latent_drift.py [--epochs 60] [--jobs 2]

Every setting trains stage 1 of run.py's `default` model (shared 16, private 8, seed 0) on all 6,855 cells and
scores the stage-1 latent tables (shared ⊕ privates, and shared alone) with run.py's kNN protocol (k = 15, 5-fold
CV) at the start and every 10 epochs, next to the epoch's mean reconstruction NLL per feature (training cells,
with latent noise, as logged). Settings:
- `default`: latent learning rate 1e-2 (TrainConfig's default);
- `lr 3e-2`: three times that;
- `lr 3e-2, no leakage control`: consistency and independence weights 0;
- `lr 3e-2, decoders first`: latent learning rate 0 for the first 20 epochs, so the latents move only once the
  decoders fit their start;
- `lr 3e-2, strong prior`: latent_l2 0.05 (default 0.001) and latent_noise 0.3 (default 0.1);
- `lr 3e-2, RNA weight 20` / `300`, and `RNA weight 300` at the default learning rate: the RNA reconstruction
  weighted 20 or 300 times (``ModalitySpec.weight``). Each modality's NLL is a mean per feature (~0.27 for RNA, ~4
  for the 14 protein counts) and counts once, so by default the proteins dominate the latents' gradients; 300 is
  about the genes : proteins ratio (4,000 : 14), i.e. the two NLLs summed over features as in a joint likelihood,
  with the protein term, leakage control and prior ~300 times weaker against RNA (run.py's `rna_weight300`).
- `... cosine decay`: RNA weight 300 with both learning rates (latents and networks) decaying from their start to 0
  over the run on a cosine, so the latents settle instead of moving ~lr every epoch to the end; at latent rate 1e-1,
  and at 3e-2 with latent noise 0.3 alone or with the strong prior (which against RNA weighted 300 times is ~300
  times weaker than in `lr 3e-2, strong prior`).
- `lr 3e-2, variational (ELBO / 14)`: run.py's `variational` stage 1: a Gaussian per cell (mean and log-variance
  tables, ``latent_posterior="variational"``) with KL to N(0, I), and each modality's NLL summed over its features,
  all divided by the protein panel's width (RNA weight 4,000 / 14, KL weight 1 / 14); kNN of the means.
Writes LATENT_DRIFT.md and latent_drift.json next to this script. Data: ../shared/datasets/pbmc10k_cite_totalvi,
by path, through run.py's loader.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from baselines import child_result, write_results_md  # noqa: E402

SETTINGS = {
    "default": dict(lr=1e-2),
    "lr 3e-2": dict(lr=3e-2),
    "lr 3e-2, no leakage control": dict(
        lr=3e-2, model=dict(consistency_weight=0.0, independence_weight=0.0)
    ),
    "lr 3e-2, decoders first": dict(lr=3e-2, frozen_epochs=20),
    "lr 3e-2, strong prior": dict(lr=3e-2, model=dict(latent_l2=0.05, latent_noise=0.3)),
    "lr 3e-2, RNA weight 20": dict(lr=3e-2, rna_weight=20.0),
    "lr 3e-2, RNA weight 300": dict(lr=3e-2, rna_weight=300.0),
    "RNA weight 300": dict(lr=1e-2, rna_weight=300.0),
    "lr 1e-1, RNA weight 300, cosine decay": dict(lr=1e-1, rna_weight=300.0, cosine=True),
    "lr 3e-2, RNA weight 300, cosine decay, latent noise 0.3": dict(
        lr=3e-2, rna_weight=300.0, cosine=True, model=dict(latent_noise=0.3)
    ),
    "lr 3e-2, RNA weight 300, cosine decay, strong prior": dict(
        lr=3e-2, rna_weight=300.0, cosine=True, model=dict(latent_l2=0.05, latent_noise=0.3)
    ),
    "lr 3e-2, variational (ELBO / 14)": dict(
        lr=3e-2, rna_weight=4000 / 14, model=dict(latent_posterior="variational", kl_weight=1 / 14)
    ),
}


def run_setting(name: str, epochs: int) -> dict:
    """One setting's trajectory: {epoch: {label: (shared, shared ⊕ privates), "nll": {modality: value}}}."""
    import lightning as L
    import run as pbmc  # noqa: E402  (run.py beside this script: loader, kNN protocol, settings)

    from venncell import VennCell

    s = SETTINGS[name]
    mdata, labels = pbmc.load()
    VennCell.setup_mudata(
        mdata,
        modalities={
            "rna": {"kind": "rna", "weight": s.get("rna_weight", 1.0)},
            "protein": "protein",
        },
    )
    model = VennCell(mdata, seed=0, **pbmc.CONFIGS["default"], **s.get("model", {}))
    trajectory: dict = {}

    def score(module) -> dict:
        shared = module.shared_table.weight.detach().numpy()
        both = np.hstack(
            [shared, *[t.weight.detach().numpy() for t in module.private_tables.values()]]
        )
        return {
            lab: [pbmc.knn_accuracy(shared, labels[lab]), pbmc.knn_accuracy(both, labels[lab])]
            for lab in pbmc.LABELS
        }

    trajectory[0] = score(model.module)

    class Probe(L.Callback):
        def on_train_epoch_start(self, trainer, plan):
            if hasattr(plan, "lr_latent"):  # stage 1 only
                epoch = trainer.current_epoch
                # cosine: both learning rates decay from their start to 0 over the run (no constant-step jitter at the end)
                decay = 0.5 * (1 + math.cos(math.pi * epoch / epochs)) if s.get("cosine") else 1.0
                trainer.optimizers[1].param_groups[0]["lr"] = (
                    0.0 if epoch < s.get("frozen_epochs", 0) else s["lr"] * decay
                )
                trainer.optimizers[0].param_groups[0]["lr"] = plan.lr_network * decay

        def on_train_epoch_end(self, trainer, plan):
            epoch = trainer.current_epoch + 1
            if not hasattr(plan, "lr_latent") or epoch % 10:
                return
            # callbacks run before the plan's own epoch end, which logs (and clears) these sums
            nll = {
                k.split("recon/")[1].removesuffix("_epoch"): float(t / c)
                for k, (t, c) in plan._term_sums.items()
                if "/recon/" in k
            }
            trajectory[epoch] = {**score(plan.module), "nll": nll}

    run_dir = HERE / "run" / "latent_drift" / name.replace(" ", "_").replace(",", "")
    shutil.rmtree(
        run_dir, ignore_errors=True
    )  # a fresh run, not a resume of an earlier one's checkpoints
    model.train(
        stage1_epochs=epochs,
        stage2_epochs=1,
        progress_bar="none",
        lr_latent=s["lr"],
        callbacks=[Probe()],
        run_dir=run_dir,
    )
    return trajectory


def write(res: dict, argv: str) -> str:
    epochs = sorted({int(e) for t in res["settings"].values() for e in t})
    lines = [
        "# PBMC 10k CITE-seq: cell-type kNN of the stage-1 latents while stage 1 runs\n",
        f"Command: `{argv}` (one thread per job)"
        + "".join(f"; settings added with `{c}`" for c in res.get("added", []))
        + ". Written by `latent_drift.py`; its docstring lists the settings. "
        "run.py's `default` model (shared 16, private 8, seed 0), stage 1 only, every cell; kNN label accuracy "
        "(k = 15, 5-fold CV, run.py's protocol) of the latent tables. Epoch 0 is the spectral start. NLL: the "
        "epoch's mean reconstruction NLL per feature on the training cells (with latent noise), as stage 1 logs it.\n",
    ]
    tv = (
        json.loads((HERE / "results.json").read_text()).get("totalvi")
        if (HERE / "results.json").exists()
        else None
    )
    if tv:
        lines.append(
            f"totalVI (run.py's fit, {tv['epochs']} epochs, RESULTS.md): "
            + ", ".join(f"{lab} {v:.3f}" for lab, v in tv["knn_accuracy"].items())
            + ".\n"
        )
    for lab in ("Fine.RNA", "Main.RNA"):
        lines += [
            f"## `{lab}`: shared ⊕ privates (shared alone)\n",
            "| setting | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
            "|---|" + "---|" * len(epochs),
        ]
        for name, t in res["settings"].items():
            cells = [
                f"{t[str(e)][lab][1]:.3f} ({t[str(e)][lab][0]:.3f})" if str(e) in t else ""
                for e in epochs
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Reconstruction NLL per feature, rna / protein\n",
        "| setting | " + " | ".join(f"epoch {e}" for e in epochs[1:]) + " |",
        "|---|" + "---|" * (len(epochs) - 1),
    ]
    for name, t in res["settings"].items():
        cells = [
            f"{t[str(e)]['nll']['rna']:.4f} / {t[str(e)]['nll']['protein']:.3f}"
            if str(e) in t
            else ""
            for e in epochs[1:]
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument(
        "--setting", help="run one setting and print its trajectory as JSON (what each job does)"
    )
    p.add_argument(
        "--report-only", action="store_true", help="rewrite LATENT_DRIFT.md from latent_drift.json"
    )
    p.add_argument(
        "--only",
        help="settings separated by ';': run these, keep the other settings' stored trajectories "
        "(same --epochs as the stored run)",
    )
    args = p.parse_args()
    if args.report_only:
        res = json.loads((HERE / "latent_drift.json").read_text())
        write_results_md(HERE / "LATENT_DRIFT.md", write(res, res["command"]))
        return
    if args.setting:
        print("TRAJECTORY " + json.dumps(run_setting(args.setting, args.epochs)))
        return

    def spawn(name: str) -> dict:
        return child_result(
            [Path(__file__).resolve(), "--setting", name, "--epochs", args.epochs], "TRAJECTORY "
        )

    argv = f"OMP_NUM_THREADS=1 python experiments/pbmc10k_cite/latent_drift.py --epochs {args.epochs} --jobs {args.jobs}"
    names = list(SETTINGS)
    res = {"settings": {}}
    if args.only:
        names = args.only.split(";")
        unknown = [n for n in names if n not in SETTINGS]
        if unknown:
            raise SystemExit(f"--only: unknown settings {unknown}; known: {list(SETTINGS)}")
        res = json.loads((HERE / "latent_drift.json").read_text())
        if f"--epochs {args.epochs} " not in res["command"]:
            raise SystemExit(f"--only: the stored run has other epochs ({res['command']})")
        argv += f' --only "{args.only}"'
    with ThreadPoolExecutor(args.jobs) as pool:
        res["settings"].update(zip(names, pool.map(spawn, names)))
    res["settings"] = {n: res["settings"][n] for n in SETTINGS if n in res["settings"]}
    if args.only:
        res["added"] = [c for c in res.get("added", []) if c != argv] + [argv]
    else:
        res = {"settings": res["settings"], "command": argv}
    (HERE / "latent_drift.json").write_text(json.dumps(res, indent=1))
    write_results_md(HERE / "LATENT_DRIFT.md", write(res, res["command"]))


if __name__ == "__main__":
    main()
