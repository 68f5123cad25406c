"""The regions of the Venn diagram beyond ``shared`` and the private blocks: blocks shared by some modalities but not
all (``ModelConfig.venn_regions``).

A region is named by its modalities, sorted and joined by ``+`` (``atac+rna``); its latent block is keyed
``shared:<name>`` next to ``shared`` and ``private:<m>``. The decoder of modality m reads ``shared``, the blocks of
the regions that contain m, then ``private:m``; m's encoder produces the same blocks in the same order. Leakage
control carries over: every member's encoder alone must predict a region's block (so it cannot hold what one
member does not see), and blocks read by one decoder are kept independent (so it cannot copy the shared block or a
private one).
"""

from __future__ import annotations

import warnings
from itertools import combinations

from venncell.data.validate import VennCellInputError, VennCellInputWarning, user_stacklevel


def region_members(modalities: list[str], rule: str) -> dict[str, tuple[str, ...]]:
    """``{name: members}`` of the regions that ``rule`` (``shared``, ``pairs``, ``all``) adds for these modalities."""
    bad = [m for m in modalities if "+" in m or ":" in m]
    if rule != "shared" and bad:
        raise VennCellInputError(
            f"Modality names {bad} contain '+' or ':', which name Venn regions; rename them to use "
            f"venn_regions={rule!r}."
        )
    n = len(modalities)
    if rule != "shared" and n < 3:
        warnings.warn(
            f"venn_regions={rule!r} adds no block for {n} modalities: with two, a block shared by some but not all "
            "of them is a private block, which the model has already.",
            VennCellInputWarning,
            stacklevel=user_stacklevel(),
        )
    sizes = {"shared": [], "pairs": [2] if n >= 3 else [], "all": list(range(2, n))}[rule]
    return {region_name(s): tuple(sorted(s)) for k in sizes for s in combinations(modalities, k)}


def region_name(modalities) -> str:
    """A set of modalities' name: sorted, joined by ``+`` (``atac+rna``)."""
    return "+".join(sorted(modalities))


def region_sizes(
    regions: dict[str, tuple[str, ...]], default: int, chosen: dict
) -> dict[str, int]:
    """Each region's block size: ``chosen[name]`` where given, else ``default``; unknown names are refused."""
    unknown = sorted(set(chosen) - set(regions))
    if unknown:
        # 'rna+atac' for 'atac+rna': the names are the members sorted, which the message says when that is the slip
        resorted = {u: "+".join(sorted(u.split("+"))) for u in unknown}
        hint = [f"{u!r} is {r!r}" for u, r in resorted.items() if r in regions]
        raise VennCellInputError(
            f"model.region_dims names {unknown}, which are not regions of this model "
            f"({sorted(regions) or 'none: set venn_regions to pairs or all'})."
            + (f" Region names list their modalities sorted: {', '.join(hint)}." if hint else "")
        )
    return {r: int(chosen.get(r, default)) for r in regions}


def block_key(region: str) -> str:
    return f"shared:{region}"
