"""Write the PBMC 10k CITE-seq CSVs as one .h5mu (RNA counts + ADT counts, labels in .obs) for the Hydra CLI.

Usage (from the repository root): python experiments/pbmc10k_cite/make_h5mu.py [--out PATH]
Default output: experiments/pbmc10k_cite/run/pbmc10k_cite.h5mu (gitignored: the data stays out of the repository).
Then: venncell-train experiment=pbmc10k_cite
"""

from __future__ import annotations

import argparse
from pathlib import Path

from run import HERE, load  # same folder

from venncell.data.files import atomic_write


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(HERE / "run" / "pbmc10k_cite.h5mu"))
    out = Path(p.parse_args().out)
    mdata, labels = load()
    for col in labels.columns:  # e.g. Main.RNA / Fine.RNA, usable as markers by venncell-report
        mdata.obs[col] = labels[col].astype("category").to_numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(mdata, out)
    print(f"Wrote {out}: {mdata}")


if __name__ == "__main__":
    main()
