"""Gene-set collections and enrichment tests: over-representation (hypergeometric, Benjamini-Hochberg per ranking
and collection) of the top of a ranking, or gseapy's preranked GSEA (its FDR) on the whole ranking.

The bundled collections (``BUNDLED``: Enrichr's GO Biological Process 2023 and KEGG 2021 Human) ship inside the
optional ``blitzgsea`` package and are read from its folder on disk; blitzgsea's own loader downloads missing
libraries, so it is never called and nothing is fetched at run time.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import hypergeom

from venncell.data.validate import VennCellInputError

BUNDLED = ("GO_Biological_Process_2023", "KEGG_2021_Human")
INSTALL = "pip install 'venncell[genesets]'"
PRERANK_NEEDS = f"method='prerank' needs the optional package gseapy: {INSTALL}."
MIN_OVERLAP = (
    10  # fewer features found in the collections: the symbols are probably not genes of them
)
MAX_GENES_SHOWN = 20


@dataclass
class EnrichmentConfig:
    """Knobs of ``VennCell.enrich_regions``."""

    # bundled names, .gmt paths or {term: genes} dicts
    gene_sets: list = field(default_factory=lambda: list(BUNDLED))
    # modalities to test; None = those whose features are gene symbols (RNA)
    modalities: list | None = None
    method: str = (
        "ora"  # ora (top_n features vs all) | prerank (gseapy's GSEA on the whole ranking)
    )
    top_n: int = 100  # features at the top of each ranking tested by ORA
    min_size: int = 5  # gene-set sizes kept, counted within the modality's features
    max_size: int = 500
    fdr: float = 0.05  # Benjamini-Hochberg level of the terms shown in the report
    n_terms: int = 10  # terms kept per ranking in the summary
    permutations: int = 1000  # prerank only
    seed: int = 0

    def __post_init__(self):
        if self.method not in ("ora", "prerank"):
            raise VennCellInputError(f"method must be 'ora' or 'prerank', got {self.method!r}.")
        if not 0 < self.fdr <= 1:
            raise VennCellInputError(f"fdr must lie in (0, 1], got {self.fdr}.")
        if min(self.top_n, self.min_size, self.n_terms, self.permutations) < 1:
            raise VennCellInputError("top_n, min_size, n_terms and permutations must be >= 1.")
        if self.max_size < self.min_size:
            raise VennCellInputError(
                f"max_size ({self.max_size}) must be >= min_size ({self.min_size})."
            )
        if isinstance(self.gene_sets, str | Path | dict):
            self.gene_sets = [self.gene_sets]
        if self.modalities is not None:
            self.modalities = (
                [self.modalities] if isinstance(self.modalities, str) else list(self.modalities)
            )
            if not self.modalities:
                raise VennCellInputError(
                    "Gene-set enrichment: modalities is empty; name the modalities to test, or leave it out for "
                    "RNA."
                )

    def check_sources(self) -> None:
        """Every collection's file, and gseapy for prerank: checked before a command line's work starts, so a
        missing package stops it before anything is trained or written."""
        for source in self.gene_sets:
            if not isinstance(source, dict):
                gene_set_path(source)
        if self.method == "prerank" and importlib.util.find_spec("gseapy") is None:
            raise VennCellInputError(PRERANK_NEEDS)


def load_gene_sets(source) -> dict[str, list[str]]:
    """A collection as ``{term: genes}``: a bundled name (``BUNDLED``), a ``.gmt`` file, or a dict."""
    if isinstance(source, dict):
        return {str(k): [str(g) for g in v] for k, v in source.items()}
    return read_gmt(gene_set_path(source))


def collection_name(source, i: int) -> str:
    """How a collection is named in the tables: its bundled name or path, or ``gene_sets[i]`` for a dict."""
    return f"gene_sets[{i}]" if isinstance(source, dict) else str(source)


def gene_set_path(source) -> Path:
    """The file behind a collection name or ``.gmt`` path; an error naming both forms when there is none."""
    name = str(source)
    if name in BUNDLED:
        return _bundled_path(name)
    path = Path(name).expanduser()
    if not path.is_file():
        raise VennCellInputError(
            f"Gene sets {name[:80]!r}: neither a bundled collection ({', '.join(BUNDLED)}) nor a .gmt file "
            "that exists. Give one of those names, the path of a .gmt file, or your own sets as a dict "
            "(`gene_sets=[{'MONO': ['LYZ', 'CD14', ...]}]`)."
        )
    return path


def _bundled_path(name: str) -> Path:
    spec = importlib.util.find_spec("blitzgsea")  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise VennCellInputError(
            f"The bundled gene-set collection {name!r} ships with the optional package blitzgsea, which is not "
            f"installed: {INSTALL}. Or give the path of a .gmt file."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise VennCellInputError(
            f"The installed blitzgsea has no {name!r} at {path} (it ships in blitzgsea >= 1.3.50); "
            f"{INSTALL} --upgrade, or give the path of a .gmt file. Nothing is downloaded."
        )
    return path


def read_gmt(path: Path) -> dict[str, list[str]]:
    """GMT: one set per line, ``name<TAB>description<TAB>gene...``; Enrichr's ``GENE,1.0`` weights are dropped."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise VennCellInputError(f"Gene sets: cannot read {path}: {err}.") from err
    sets = {}
    for line in lines:
        parts = line.rstrip("\n").split("\t")
        genes = [g.split(",")[0].strip() for g in parts[2:]]
        genes = [g for g in genes if g]
        if parts[0].strip() and genes:
            sets[parts[0].strip()] = genes
    if not sets:
        raise VennCellInputError(
            f"Gene sets: {path} holds no gene set; a .gmt file has one set per line: name, description, "
            "then its genes, separated by tabs."
        )
    return sets


def map_symbols(
    features, collections: dict[str, dict[str, list[str]]]
) -> tuple[pd.Index, dict[str, dict[str, list[str]]], str]:
    """Feature names and collections as matched against each other, and a note when a rule was applied: names
    match as given, or both sides upper-cased when that matches more (mouse symbols such as ``Cd3e`` against human
    collections, or a .gmt written in lower case)."""
    names = pd.Index([str(f) for f in features])
    upper = names.str.upper()
    direct = names.isin(gene_universe(collections)).sum()
    folded = {
        c: {t: [g.upper() for g in genes] for t, genes in sets.items()}
        for c, sets in collections.items()
    }
    upcased = upper.isin(gene_universe(folded)).sum()
    if upcased > direct:
        return (
            upper,
            folded,
            (
                f"feature names and gene sets matched upper-cased ({upcased} of {len(names)} found, {direct} as "
                "given): the documented rule for symbols whose case differs (mouse symbols against human "
                "collections)"
            ),
        )
    return names, collections, ""


def check_overlap(
    modality: str, symbols: pd.Index, collections: dict, kind: str = "", others: bool = False
) -> None:
    """Refuse a modality whose features are (almost) absent from the collections: its names are not their genes.
    ``kind``: the modality's kind (peaks get their own advice); ``others``: other modalities are tested, so leaving
    this one out is a fix."""
    found = int(symbols.isin(gene_universe(collections)).sum())
    if found >= MIN_OVERLAP:
        return
    if kind == "atac":
        fix = (
            "ATAC features are peaks, not genes: gene sets need one score per gene, so test the RNA modality, or "
            "register gene-level values (e.g. a gene-activity matrix, peaks summed per gene) as a modality of "
            "their own"
        )
    else:
        fix = (
            "either the names are not the collections' gene symbols (give a .gmt file of this organism's "
            "symbols, gene_sets=[path.gmt]) or the collections are too small for this panel (give larger ones)"
        )
    raise VennCellInputError(
        f"Gene-set enrichment of modality '{modality}': only {found} of its {len(symbols)} feature names are "
        f"genes of the collections {list(collections)} (matched as given and upper-cased); enrichment needs "
        f"at least {MIN_OVERLAP}. Fix: {fix}"
        + (f"; or leave '{modality}' out of modalities=[...]." if others else ".")
    )


def gene_universe(collections: dict) -> set[str]:
    return {g for sets in collections.values() for genes in sets.values() for g in genes}


def enrich(
    scores: dict[str, pd.Series],
    collections: dict[str, dict[str, list[str]]],
    cfg: EnrichmentConfig,
) -> pd.DataFrame:
    """Test the top of every ranking in ``scores`` (``{ranking: scores by symbol}``, higher = more; one background:
    the union of their indexes) against every collection. One row per (ranking, collection, term) with some
    overlap (ORA) or enriched at the top (prerank); the FDR counts every term tested."""
    background = pd.Index(sorted(set().union(*(s.index for s in scores.values()))))
    aligned = {ranking: s.reindex(background).fillna(0.0) for ranking, s in scores.items()}
    test = _ora if cfg.method == "ora" else _prerank
    frames = []
    for cname, sets in collections.items():
        terms, members = _restrict(sets, background, cfg)
        if not terms:
            continue
        for ranking, s in aligned.items():
            df = test(s, terms, members, cfg)
            if len(df):
                frames.append(df.assign(ranking=ranking, collection=cname))
    if not frames:  # the columns of a result with rows (a caller's selection of them still works)
        method = ["expected", "fold"] if cfg.method == "ora" else ["nes"]
        return pd.DataFrame(
            columns=[
                "ranking",
                "collection",
                "term",
                "set_size",
                "overlap",
                *method,
                "pval",
                "fdr",
                "genes",
            ]
        )
    out = pd.concat(frames, ignore_index=True)
    first = ["ranking", "collection", "term", "set_size", "overlap"]
    out = out[first + [c for c in out.columns if c not in first]]
    return out.sort_values(
        ["ranking", "collection", "pval", "term"], kind="stable", ignore_index=True
    )


def untestable_note(modality: str, symbols: pd.Index, collections: dict, cfg) -> str:
    """Why nothing of ``modality`` can be tested when no set has between min_size and max_size of its features
    (else an empty result would say nothing), or ""."""
    present = set(symbols)
    sizes = [
        len(present.intersection(genes))
        for sets in collections.values()
        for genes in sets.values()
    ]
    if not sizes or any(cfg.min_size <= n <= cfg.max_size for n in sizes):
        return ""
    small, large = [n for n in sizes if n < cfg.min_size], [n for n in sizes if n > cfg.max_size]
    fixes = []
    if small:
        fixes.append(
            f"lower min_size (its largest small set has {max(small)}, e.g. min_size={max(1, max(small))})"
        )
    if large:
        fixes.append(f"raise max_size (its smallest large set has {min(large)})")
    return (
        f"{modality}: no gene set has between min_size={cfg.min_size} and max_size={cfg.max_size} of its features, "
        f"so nothing was tested: {' or '.join(fixes)}, or give other sets."
    )


def skipped_note(modality: str, symbols: pd.Index, collections: dict, cfg) -> str:
    """How many sets are left out for having fewer than min_size or more than max_size of ``modality``'s
    features, when others are tested (a hand-made set of three markers vanished without a word), or ""."""
    present = set(symbols)
    sizes = [
        len(present.intersection(genes))
        for sets in collections.values()
        for genes in sets.values()
    ]
    out = [n for n in sizes if not cfg.min_size <= n <= cfg.max_size]
    if not out or len(out) == len(sizes):  # none left out, or untestable_note says it all
        return ""
    return (
        f"{modality}: {len(out)} of {len(sizes)} gene sets have fewer than min_size={cfg.min_size} or more than "
        f"max_size={cfg.max_size} of its features and are not tested."
    )


def _restrict(sets, background: pd.Index, cfg) -> tuple[list[str], sp.csr_matrix]:
    """The terms whose size within the background lies in [min_size, max_size], as a terms x genes 0/1 matrix."""
    rows, cols, terms = [], [], []
    for term, genes in sets.items():
        idx = np.unique(background.get_indexer(genes))
        idx = idx[idx >= 0]
        if cfg.min_size <= len(idx) <= cfg.max_size:
            rows.append(np.full(len(idx), len(terms)))
            cols.append(idx)
            terms.append(term)
    if not terms:
        return [], sp.csr_matrix((0, len(background)))
    data = np.ones(sum(len(c) for c in cols))
    m = sp.csr_matrix(
        (data, (np.concatenate(rows), np.concatenate(cols))), (len(terms), len(background))
    )
    return terms, m


def _ora(s: pd.Series, terms: list[str], members: sp.csr_matrix, cfg) -> pd.DataFrame:
    top = np.argsort(-s.to_numpy(), kind="stable")[: cfg.top_n]
    top = top[s.to_numpy()[top] > 0]  # a ranking with nothing in it tests nothing
    if len(top) == 0:
        return pd.DataFrame()
    hit = np.zeros(len(s))
    hit[top] = 1.0
    n_bg, n_hit = len(s), len(top)
    size = np.asarray(members.sum(1)).ravel()
    overlap = members @ hit
    pval = hypergeom.sf(overlap - 1, n_bg, size, n_hit)
    expected = size * n_hit / n_bg
    fdr = benjamini_hochberg(
        pval
    )  # over every term tested; terms without overlap are then left out
    keep = np.flatnonzero(overlap > 0)
    return pd.DataFrame(
        {
            "term": [terms[i] for i in keep],
            "set_size": size[keep].astype(int),
            "overlap": overlap[keep].astype(int),
            "expected": expected[keep],
            "fold": overlap[keep] / expected[keep],
            "pval": pval[keep],
            "fdr": fdr[keep],
            "genes": [_genes(s.index, members[i].indices, hit) for i in keep],
        }
    )


def _genes(index: pd.Index, cols: np.ndarray, hit: np.ndarray) -> str:
    return ";".join(sorted(index[cols[hit[cols] > 0]])[:MAX_GENES_SHOWN])


def _prerank(s: pd.Series, terms: list[str], members: sp.csr_matrix, cfg) -> pd.DataFrame:
    try:
        import gseapy
    except ImportError as err:
        raise VennCellInputError(PRERANK_NEEDS) from err
    if not (s > 0).any():
        return pd.DataFrame()
    library = {t: list(s.index[members[i].indices]) for i, t in enumerate(terms)}
    # gseapy logs notes on the ranking (tied scores) through its own handler, past verbose=False
    loggers = [
        logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if "gseapy" in n
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        res = gseapy.prerank(
            rnk=s,
            gene_sets=library,
            permutation_num=cfg.permutations,
            min_size=cfg.min_size,
            max_size=cfg.max_size,
            seed=cfg.seed,
            threads=1,  # the thread policy is ours
            outdir=None,
            no_plot=True,
            verbose=False,
        ).res2d
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    res = res[res["NES"].astype(float) > 0]  # enriched at the top of the ranking, like ORA
    size = dict(zip(terms, np.asarray(members.sum(1)).ravel().astype(int)))
    lead = [str(g).split(";") if str(g) else [] for g in res["Lead_genes"]]
    return pd.DataFrame(
        {
            "term": res["Term"].astype(str).to_numpy(),
            "set_size": [size[t] for t in res["Term"]],
            "overlap": [len(g) for g in lead],  # the leading edge
            "nes": res["NES"].astype(float).to_numpy(),
            # gseapy reports 0 when no permutation reached the score; that many permutations show p >= 1/(n+1)
            "pval": np.maximum(
                res["NOM p-val"].astype(float).to_numpy(), 1.0 / (cfg.permutations + 1)
            ),
            # GSEA's own FDR (against the NES null), floored as the p-values are
            "fdr": np.maximum(
                res["FDR q-val"].astype(float).to_numpy(), 1.0 / (cfg.permutations + 1)
            ),
            "genes": [";".join(sorted(g)[:MAX_GENES_SHOWN]) for g in lead],
        }
    )


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (step-up, monotone, capped at 1)."""
    p = np.asarray(p, dtype=float)
    if p.size == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def top_terms(table: pd.DataFrame, n_terms: int, fdr: float) -> pd.DataFrame:
    """The ``n_terms`` best terms with FDR <= ``fdr`` of every ranking (and modality, when the table has one)."""
    if not len(table):
        return table
    keys = [c for c in ("modality", "ranking") if c in table.columns]
    sig = table[table["fdr"] <= fdr].sort_values([*keys, "pval"], kind="stable")
    return sig.groupby(keys, sort=False).head(n_terms).reset_index(drop=True)
