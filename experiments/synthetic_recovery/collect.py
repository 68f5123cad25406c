"""Turn runs' metrics.json into the recovery table (kNN and linear R^2, 5-fold CV)."""

import json
import sys
from pathlib import Path

ROWS = [
    ("shared_recovery", "shared ← shared (recovery)"),
    ("private:rna_recovery", "private rna ← private rna"),
    ("private:protein_recovery", "private protein ← private protein"),
    ("private:atac_recovery", "private atac ← private atac"),
    ("leak_private_into_shared", "max private → shared leakage"),
    ("leak_shared_into_private", "max shared → private leakage"),
    ("leak_private_into_other_private", "max private → other private"),
]


def main(run_dirs):
    runs = {Path(d).name: json.loads((Path(d) / "metrics.json").read_text()) for d in run_dirs}
    print("# Synthetic ground truth: recovery matrix summary\n")
    print(
        "Command: `bash experiments/synthetic_recovery/run.sh` (3,000 cells: RNA 1,000 genes NB, protein 100 NB, "
        "ATAC 1,000 peaks Bernoulli with per-cell and per-region factors; 4 true shared + 2 true private dims per modality). Cross-validated R² "
        "(5-fold) of each true factor block from each learned block; latents from the stage-2 encoders "
        "(all modalities) and from stage 1. Bars (issue #22, tested in tests/analysis/test_recovery.py on the "
        "encoder latents): shared recovery ≥ 0.95, every private ≥ 0.90, leakage ≤ 0.05 both ways.\n"
    )
    for source in ("encoder", "stage1"):
        for probe in ("knn", "linear"):
            names = list(runs)
            print(f"\n## {source} latents, {probe} probe\n")
            print("| metric | " + " | ".join(names) + " |")
            print("|---|" + "---|" * len(names))
            for key, label in ROWS:
                vals = []
                for n in names:
                    s = runs[n]["recovery"][source][probe]["summary"]
                    vals.append(f"{s[key]:.3f}" if key in s else "–")
                print(f"| {label} | " + " | ".join(vals) + " |")
    print(
        "\n`spectral_init_only` is the linear starting point of `venncell` (generalised CCA for shared, residual "
        "PCA for privates) before any training: a MOFA-like linear baseline on the same cells. It has no "
        "encoders, so its 'encoder' rows repeat its latents.\n"
    )
    if "venncell_before" in runs:
        print(
            "`venncell_before` is the same command's `venncell` run at commit 6b37c08 (KL weight 1, before the "
            "fixes of stage 1's batch order and the split batches; CHANGELOG), kept as the 'before' column.\n"
        )
    print("\n## Wall time and stage-2 held-out metrics\n")
    for n, r in runs.items():
        if not r["history"]["stage2"]:
            continue
        st2 = r["history"]["stage2"]
        keys = [k for k in st2 if k.startswith("stage2/val/") and "recon" in k]
        wall = r["history"].get("wall_time_s", {})
        print(
            f"- **{n}**: "
            + ", ".join(f"{k} = {st2[k]:.3f}" for k in sorted(keys))
            + ", wall time "
            + ", ".join(f"{k} {v:.0f} s" for k, v in wall.items())
        )


if __name__ == "__main__":
    main(sys.argv[1:])
