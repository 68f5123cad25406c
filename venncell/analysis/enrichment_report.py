"""The gene-sets section of the HTML report (``venncell.analysis.block_enrichment`` computes it)."""

from __future__ import annotations

import html

import pandas as pd

from venncell.analysis.block_enrichment import EnrichmentResult

TERMS_SHOWN = 5  # per block or direction


def enrichment_section(result: EnrichmentResult) -> str:
    """HTML: the test used, notes (skipped modalities, symbol rules), and the best terms of every block, then of
    every latent direction."""
    cfg = result.config
    test = (
        f"over-representation of each ranking's top {cfg.top_n} features (those scoring above 0, where fewer) "
        "among all the modality's features "
        "(hypergeometric test, Benjamini&ndash;Hochberg FDR per ranking and collection)"
        if cfg.method == "ora"
        else "preranked GSEA on each whole ranking (gseapy; GSEA's FDR)"
    )
    parts = [
        "<h2>Gene sets per block</h2>",
        "<p class='note'>Each block ranks the features by the explained variance it holds of them; each latent "
        "direction (a principal component of a block, <i>+</i> / <i>&minus;</i> its two ends) by their "
        f"correlation with it. Test: {test}. Collections: "
        f"{html.escape(', '.join(_collection(c) for c in cfg.gene_sets))}. Shown: up to {TERMS_SHOWN} terms "
        f"with FDR &le; {cfg.fdr} per ranking; every term with some overlap is in enrichment_terms.csv.</p>",
    ]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in result.notes]
    top = result.top
    if not len(top):
        parts.append("<p>No term passes the FDR threshold.</p>")
        return "\n".join(parts)
    is_direction = top["ranking"].str.contains(" PC")
    for title, rows in (("Blocks", top[~is_direction]), ("Latent directions", top[is_direction])):
        if len(rows):
            parts += [f"<h3>{title}</h3>", _table(rows)]
    return "\n".join(parts)


def _collection(source) -> str:
    """A collection as the report names it: a dict of the user's own sets by its size, not its whole content."""
    return (
        f"your own {len(source)} set{'s' if len(source) != 1 else ''}"
        if isinstance(source, dict)
        else str(source)
    )


def _table(rows: pd.DataFrame) -> str:
    rows = rows.groupby(["modality", "ranking"], sort=False).head(TERMS_SHOWN)
    effect = "fold" if "fold" in rows else "nes"
    df = pd.DataFrame(
        {
            "modality": rows["modality"],
            "block / direction": rows["ranking"],
            "term": rows["term"] + " (" + rows["collection"] + ")",
            "overlap / size": rows["overlap"].astype(str) + " / " + rows["set_size"].astype(str),
            effect: rows[effect].map("{:.2f}".format),
            "FDR": rows["fdr"].map("{:.1e}".format),
            "genes": rows["genes"],
        }
    )
    return df.to_html(index=False, border=0)
