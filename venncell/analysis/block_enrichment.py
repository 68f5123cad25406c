"""Gene sets per Venn block: each modality's features ranked by the explained variance each latent block holds
(``ev_in_*``, or the shared / private split of a model without regions) and by their correlation with each latent
direction, and the top of each ranking tested against gene-set collections (``venncell.analysis.gene_sets``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from venncell.analysis.directions import block_directions
from venncell.analysis.features import feature_regions
from venncell.analysis.gene_sets import (
    EnrichmentConfig,
    check_overlap,
    collection_name,
    enrich,
    gene_universe,
    load_gene_sets,
    map_symbols,
    skipped_note,
    top_terms,
    untestable_note,
)
from venncell.data.files import atomic_write_text, output_folder
from venncell.data.validate import VennCellInputError, config_from
from venncell.module.regions import block_key

log = logging.getLogger("venncell")
GENE_KINDS = ("rna",)  # modalities whose feature names are gene symbols


@dataclass
class EnrichmentResult:
    """Every tested term (``terms``) and the best significant ones per ranking (``top``); ``write`` saves both."""

    config: EnrichmentConfig
    terms: pd.DataFrame
    top: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def write(self, out_dir: str | Path) -> list[Path]:
        """``enrichment_terms.csv`` and ``enrichment_top.csv``, each written whole."""
        out = output_folder(out_dir, "the enrichment tables")
        return [
            atomic_write_text(out / "enrichment_terms.csv", self.terms.to_csv(index=False)),
            atomic_write_text(out / "enrichment_top.csv", self.top.to_csv(index=False)),
        ]


def block_rankings(df: pd.DataFrame, m: str) -> dict[str, np.ndarray]:
    """Per latent block (``shared``, ``shared:<region>``, ``private:<m>``), the EV of each feature it holds."""
    names = {"shared": "shared", "private": f"private:{m}"}
    return {names.get(b) or block_key(b): ev for b, ev in feature_regions(df).items()}


def enrichment_config(kwargs: dict) -> EnrichmentConfig:
    """The run's ``EnrichmentConfig``, with at least one collection to test (checked before the slow steps)."""
    cfg = config_from(EnrichmentConfig, dict(kwargs), "enrichment")
    if not cfg.gene_sets:
        raise VennCellInputError(
            "gene_sets is empty; name collections (e.g. 'KEGG_2021_Human') or .gmt files, or leave it out for "
            "the defaults."
        )
    cfg.check_sources()
    return cfg


def enrichment_modalities(specs: dict, modalities=None) -> list[str]:
    """The modalities gene-set enrichment tests: those named, or those whose features are gene symbols (RNA); an
    error naming the way out when there are none (a model of ATAC and proteins only)."""
    if modalities is not None:
        unknown = sorted(set(modalities) - set(specs))
        if unknown:
            raise VennCellInputError(
                f"Gene-set enrichment: no modality {unknown}; the model has {list(specs)}."
            )
        return list(modalities)
    mods = [m for m, s in specs.items() if s.kind in GENE_KINDS]
    if not mods:
        kinds = ", ".join(f"{m} ({s.kind})" for m, s in specs.items())
        raise VennCellInputError(
            f"Gene-set enrichment tests modalities whose features are gene symbols (RNA), and this model has none "
            f"({kinds}): peaks and antibodies are not genes. Add a gene-level modality (e.g. gene activity "
            "scores, registered with kind='rna'), or name a modality whose feature names are gene symbols: "
            "enrich_regions(modalities=[...]), or enrichment.modalities=[...] on the command line."
        )
    return mods


def check_modalities(specs: dict, cfg: EnrichmentConfig) -> list[str]:
    """``enrichment_modalities``, and the named ones' features matched against the collections: a modality whose
    names are not genes is refused before the attribution's slow steps, not after its files are written."""
    mods = enrichment_modalities(specs, cfg.modalities)
    if cfg.modalities is not None:
        collections = _collections(cfg)
        for m in mods:
            symbols, matched, _ = map_symbols(specs[m].features, collections)
            check_overlap(m, symbols, matched, specs[m].kind, others=len(mods) > 1)
    return mods


def _collections(cfg: EnrichmentConfig) -> dict[str, dict[str, list[str]]]:
    return {
        collection_name(source, i): load_gene_sets(source)
        for i, source in enumerate(cfg.gene_sets)
    }


def enrich_blocks(data, attribution, config: EnrichmentConfig | None = None, **kwargs):
    """Gene-set enrichment of every block and latent direction of an attribution run (module docstring).

    Parameters
    ----------
    data
        The model's training data (``MultiModalData``).
    attribution
        An ``AttributionResult`` of the same model and data (its per-feature tables and latents are reused).
    config
        The settings, already checked by ``enrichment_config``; None = built from ``kwargs``.
    **kwargs
        ``EnrichmentConfig`` fields, without ``config``. A modality named in ``modalities`` whose features do
        not match the collections is an error; one chosen by default (RNA) is skipped with a note.
    """
    if config is not None and kwargs:
        raise VennCellInputError(
            f"enrich_blocks takes config or EnrichmentConfig fields, not both (given {sorted(kwargs)} too)."
        )
    cfg = config if config is not None else enrichment_config(kwargs)
    named = cfg.modalities is not None
    mods = enrichment_modalities(data.specs, cfg.modalities)
    collections = _collections(cfg)
    pos = pd.Index(data.obs_names).get_indexer(attribution.obs_names)
    # a block that holds almost none of its members' variance has no genes to rank: its directions are noise
    regions = attribution.regions
    empty_blocks = set(regions.loc[regions["empty"], "block"]) if "empty" in regions else set()
    directions = [
        d
        for d in block_directions(data, pos, attribution.latents, attribution.config)
        if d.block not in empty_blocks
    ]
    tables, notes = [], []
    if empty_blocks:
        notes.append(
            f"Not tested: {', '.join(sorted(empty_blocks))}, empty (under 1 % of every member's explained variance; "
            "the blocks table of the attribution)."
        )
    for m in mods:
        features = data.specs[m].features
        symbols, matched, note = map_symbols(features, collections)
        try:
            check_overlap(m, symbols, matched, data.specs[m].kind, others=named and len(mods) > 1)
        except VennCellInputError as err:
            if named:
                raise
            notes.append(str(err))
            log.warning("%s", err)
            continue
        if note:
            notes.append(f"{m}: {note}")
        unmatched = int((~symbols.isin(gene_universe(matched))).sum())
        if data.specs[m].kind == "protein" and unmatched:
            # antibody names (CD3, CD45RA) are often not their target's gene symbol (CD3E, PTPRC)
            antibodies = (
                f"{m}: antibody names are matched as gene symbols; {unmatched} of {len(symbols)} are none (e.g. "
                "CD3, CD45RA), so they are left out: rename the features to their targets' genes to test them."
            )
            notes.append(antibodies)
            log.warning("%s", antibodies)
        empty = untestable_note(m, symbols, matched, cfg)
        if empty:
            notes.append(empty)
            log.warning("%s", empty)
        skipped = skipped_note(m, symbols, matched, cfg)
        if skipped:
            notes.append(skipped)
        if cfg.method == "ora" and cfg.top_n >= len(features):
            # every feature a block explains at all is "at the top" of its ranking; a direction's two ends still
            # split the features by the sign of their correlation
            thin = (
                f"{m}: top_n={cfg.top_n} is at least its {len(features)} features, so a block's own ranking "
                "tests every feature it explains at all and can find little (a direction's ends are tested on "
                f"the features on each side); set top_n below that (e.g. top_n={max(1, len(features) // 5)})."
            )
            notes.append(thin)
            log.warning("%s", thin)
        scores = {
            b: _series(ev, symbols)
            for b, ev in block_rankings(attribution.features[m], m).items()
            if b not in empty_blocks
        }
        for d in directions:
            r = d.correlation.xs(m, level="modality").reindex(features).to_numpy()
            scores[f"{d.block} {d.component}+"] = _series(r, symbols)
            scores[f"{d.block} {d.component}-"] = _series(-r, symbols)
        tables.append(
            _own_names(enrich(scores, matched, cfg), features, symbols).assign(modality=m)
        )
    # no modality tested: empty tables that keep their columns (a caller's sort or filter still works)
    terms = (
        pd.concat(tables, ignore_index=True) if tables else enrich({}, {}, cfg).assign(modality="")
    )
    terms = terms[["modality", *(c for c in terms.columns if c != "modality")]]
    return EnrichmentResult(cfg, terms, top_terms(terms, cfg.n_terms, cfg.fdr), notes)


def _own_names(table: pd.DataFrame, features, symbols: pd.Index) -> pd.DataFrame:
    """The ``genes`` of each term in the data's own spelling: symbols matched upper-cased (mouse ``Cd3e`` against
    human sets) are listed as the features they came from, so they join back to ``var_names``."""
    back = {}
    for name, symbol in zip(features, symbols):
        back.setdefault(symbol, str(name))
    if "genes" not in table or all(k == v for k, v in back.items()):
        return table
    table = table.copy()
    table["genes"] = [
        ";".join(back.get(g, g) for g in genes.split(";"))
        if isinstance(genes, str) and genes
        else genes
        for genes in table["genes"]
    ]
    return table


def _series(values: np.ndarray, symbols: pd.Index) -> pd.Series:
    """Scores by symbol; symbols that collide once upper-cased keep their best score."""
    s = pd.Series(np.nan_to_num(np.asarray(values, dtype=float)), index=symbols)
    return s.groupby(level=0).max()
