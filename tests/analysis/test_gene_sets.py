"""Gene-set collections and enrichment tests (``venncell.analysis.gene_sets``): planted sets found, random ones not,
the bundled collections read from disk with the network blocked, the mouse-symbol rule, and clear errors. The
same on a trained model's blocks is in test_attribution.py (it reuses that file's trained model)."""

from __future__ import annotations

import socket
import urllib.request

import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control

from venncell.analysis.gene_sets import (
    EnrichmentConfig,
    benjamini_hochberg,
    check_overlap,
    enrich,
    load_gene_sets,
    map_symbols,
    top_terms,
)
from venncell.data.validate import VennCellInputError

GENES = [f"GENE{i:04d}" for i in range(2000)]


def planted(seed: int = 0):
    """Two rankings over 2,000 genes: 'a' puts set A's genes near the top, 'b' set B's; set R is random."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(GENES)
    sets = {"A": list(perm[:40]), "B": list(perm[40:80]), "R": list(perm[80:120])}
    scores = {}
    for name, genes in (("a", sets["A"]), ("b", sets["B"])):
        s = pd.Series(rng.random(len(GENES)), index=GENES)
        s[genes] += rng.random(len(genes)) > 0.3  # 70 % of the set's genes move to the top
        scores[name] = s
    return scores, {"toy": sets}


@pytest.mark.parametrize("method", ["ora", "prerank"])
def test_planted_sets_are_found(method):
    if method == "prerank":
        pytest.importorskip("gseapy")
    scores, collections = planted()
    cfg = EnrichmentConfig(gene_sets=[], method=method, top_n=50, permutations=500)
    table = enrich(scores, collections, cfg)
    if (
        method == "prerank"
    ):  # a test of n permutations cannot show p < 1/(n + 1) (gseapy reported 0)
        assert (table["pval"] >= 1 / 501).all() and (table["pval"] == 1 / 501).any()
    got = table.set_index(["ranking", "term"])
    assert got.loc[("a", "A"), "fdr"] < 0.01 and got.loc[("b", "B"), "fdr"] < 0.01
    assert ("a", "B") not in got.index or got.loc[("a", "B"), "fdr"] > 0.05
    assert ("b", "A") not in got.index or got.loc[("b", "A"), "fdr"] > 0.05
    for r in ("a", "b"):
        assert (r, "R") not in got.index or got.loc[(r, "R"), "fdr"] > 0.05
    top = top_terms(table, n_terms=5, fdr=0.05)
    assert list(top["term"]) == ["A", "B"] and list(top["ranking"]) == ["a", "b"]


def test_ora_counts_and_bh():
    scores, collections = planted()
    table = enrich(scores, collections, EnrichmentConfig(gene_sets=[], top_n=50))
    row = table[(table["ranking"] == "a") & (table["term"] == "A")].iloc[0]
    top50 = set(scores["a"].nlargest(50).index)
    assert row["overlap"] == len(top50 & set(collections["toy"]["A"])) and row["set_size"] == 40
    assert np.isclose(row["expected"], 40 * 50 / 2000)
    p = np.array([0.01, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(benjamini_hochberg(p), [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    p = np.random.default_rng(0).random(50) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), false_discovery_control(p))


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)


def test_bundled_collections_load_offline(no_network):
    pytest.importorskip("blitzgsea")
    with pytest.raises(AssertionError, match="network"):  # the block is live
        socket.create_connection(("example.org", 80))
    kegg = load_gene_sets("KEGG_2021_Human")
    go = load_gene_sets("GO_Biological_Process_2023")
    assert len(kegg) > 250 and len(go) > 5000
    assert "RPL3" in kegg["Ribosome"] and not any("," in g for g in kegg["Ribosome"])
    # ORA on real symbols: a ranking led by ribosomal genes finds the Ribosome pathway first
    background = sorted({g for genes in kegg.values() for g in genes})
    rng = np.random.default_rng(0)
    s = pd.Series(rng.random(len(background)), index=background)
    s[[g for g in kegg["Ribosome"] if g.startswith("RPL")]] += 1.0
    table = enrich({"block": s}, {"KEGG_2021_Human": kegg}, EnrichmentConfig(gene_sets=[]))
    assert table.iloc[0]["term"] == "Ribosome" and table.iloc[0]["fdr"] < 1e-10


def test_terms_list_the_genes_as_the_data_spell_them():
    """Mouse symbols matched upper-cased were listed upper-cased (CD3E, MT-CO1): not the data's var_names."""
    from venncell.analysis.block_enrichment import _own_names
    from venncell.analysis.gene_sets import map_symbols

    features = ["Cd3e", "mt-Co1", "Ptprc"]
    symbols, matched, _ = map_symbols(features, {"s": {"T": ["CD3E", "MT-CO1", "PTPRC"]}})
    table = pd.DataFrame({"term": ["T"], "genes": ["CD3E;MT-CO1"]})
    assert _own_names(table, features, symbols)["genes"].tolist() == ["Cd3e;mt-Co1"]


def test_mouse_symbols_are_matched_upper_cased():
    sets = {"toy": {"RIBO": ["RPL3", "RPS6", "RPL7"], "T": ["CD3E", "CD3D"]}}
    symbols, matched, note = map_symbols(["Rpl3", "Rps6", "Cd3e", "Xist"], sets)
    assert list(symbols) == ["RPL3", "RPS6", "CD3E", "XIST"] and "upper-cased" in note
    assert matched == sets
    same, matched, note = map_symbols(["RPL3", "CD3E"], sets)
    assert list(same) == ["RPL3", "CD3E"] and note == "" and matched is sets
    # a .gmt in lower case against upper-case features: both sides upper-cased (it matched nothing)
    lower = {"mine": {t: [g.lower() for g in genes] for t, genes in sets["toy"].items()}}
    symbols, matched, note = map_symbols(["RPL3", "CD3E", "XIST"], lower)
    assert list(symbols) == ["RPL3", "CD3E", "XIST"] and "upper-cased" in note
    assert matched == {"mine": sets["toy"]}
    with pytest.raises(VennCellInputError, match="'atac'.*only 0 of its 3.*\\.gmt"):
        check_overlap("atac", pd.Index(["chr1:100-200", "chr1:300-400", "chr2:5-9"]), sets)


def test_gmt_files_and_bad_sources(tmp_path):
    gmt = tmp_path / "mine.gmt"
    gmt.write_text("SET_A\tdescription\tG1\tG2\tG3\nSET_B\t\tG4,1.0\tG5\n")
    assert load_gene_sets(str(gmt)) == {"SET_A": ["G1", "G2", "G3"], "SET_B": ["G4", "G5"]}
    (tmp_path / "empty.gmt").write_text("\n")
    with pytest.raises(VennCellInputError, match="holds no gene set"):
        load_gene_sets(tmp_path / "empty.gmt")
    with pytest.raises(VennCellInputError, match="neither a bundled collection.*KEGG_2021_Human"):
        load_gene_sets("KEGG_2099_Martian")
    with pytest.raises(VennCellInputError, match="method must be 'ora' or 'prerank'"):
        EnrichmentConfig(method="foo")
    with pytest.raises(VennCellInputError, match="fdr must lie"):
        EnrichmentConfig(fdr=2)


def test_empty_lists_are_refused_before_the_attribution_runs(trained_tiny, monkeypatch):
    model, _, _ = trained_tiny

    def no_attribution(*a, **k):
        raise AssertionError("the settings must be checked before the attribution")

    monkeypatch.setattr(model, "attribution", no_attribution)
    with pytest.raises(VennCellInputError, match="gene_sets is empty"):
        model.enrich_regions(gene_sets=[])
    with pytest.raises(VennCellInputError, match="modalities is empty"):
        model.enrich_regions(modalities=[])
    with pytest.raises(VennCellInputError, match="method must be"):
        model.enrich_regions(method="gsea")
    with pytest.raises(VennCellInputError, match=r"modalities \['hic'\] are not in the model"):
        model.enrich_regions(modalities=["hic"])
    with pytest.raises(VennCellInputError, match="nor a .gmt file that exists"):
        model.enrich_regions(gene_sets=["/no/such/sets.gmt"])
    # a named modality whose features are not the collections' genes was refused after the attribution
    genes = model.specs["rna"].feature_names
    sets = {f"S{i}": genes[6 * i : 6 * i + 6] for i in range(len(genes) // 6)}
    with pytest.raises(VennCellInputError, match="modality 'protein': only 0 of its"):
        model.enrich_regions(gene_sets=[sets], modalities=["protein"])


def test_a_model_without_genes_says_what_it_can_test():
    """An ATAC + protein model (ASAP-seq): enrichment tested nothing, said nothing, and the report then read "no
    term passes the FDR threshold"."""
    from venncell.analysis.block_enrichment import enrichment_modalities
    from venncell.data.spec import ModalitySpec

    specs = {
        "peaks": ModalitySpec(name="peaks", kind="atac"),
        "adt": ModalitySpec(name="adt", kind="protein"),
    }
    with pytest.raises(
        VennCellInputError, match=r"this model has none \(peaks \(atac\), adt \(protein\)\)"
    ):
        enrichment_modalities(specs)
    assert enrichment_modalities(specs, ["adt"]) == ["adt"]
    assert enrichment_modalities({**specs, "gex": ModalitySpec(name="gex", kind="rna")}) == ["gex"]


def test_sets_too_small_for_the_panel_say_so():
    """Hand-written marker sets on a 45-gene panel matched 2-4 genes each, under min_size=5: the result was empty
    with no note, and with fewer genes matched the message blamed the organism of the symbols."""
    from venncell.analysis.gene_sets import untestable_note

    panel = pd.Index(
        ["LYZ", "CD14", "S100A8", "MS4A1", "CD79A", "CD3E", "CD3D", "IL7R", "NKG7", "GNLY"]
    )
    sets = {"mine": {"MONO": ["LYZ", "CD14", "S100A8", "FCN1"], "B": ["MS4A1", "CD79A", "PAX5"]}}
    cfg = EnrichmentConfig()
    note = untestable_note("rna", panel, sets, cfg)
    assert "no gene set has between min_size=5" in note and "largest small set has 3" in note, note
    assert "min_size=3" in note and "max_size" not in note.split("features")[1]
    huge = {"mine": {"ALL": list(panel) * 1, "B": ["MS4A1"]}}
    note = untestable_note("rna", panel, huge, EnrichmentConfig(min_size=2, max_size=5))
    assert "raise max_size (its smallest large set has 10)" in note and "lower min_size" in note, (
        note
    )
    assert untestable_note("rna", panel, sets, EnrichmentConfig(min_size=3)) == ""
    # some sets testable: the ones left out are counted, not dropped without a word
    from venncell.analysis.gene_sets import skipped_note

    assert "1 of 2 gene sets have fewer than min_size=3" in skipped_note(
        "rna", panel, sets, EnrichmentConfig(min_size=3, max_size=3)
    )
    assert skipped_note("rna", panel, sets, EnrichmentConfig(min_size=2)) == ""
    with pytest.raises(VennCellInputError, match="too small for this panel"):
        check_overlap("rna", panel, sets)
    # and an empty result keeps the columns of a full one (the README's selection of them raised KeyError)
    for method in ("ora", "prerank"):
        empty = top_terms(enrich({}, sets, EnrichmentConfig(method=method)), 10, 0.05)
        assert {"ranking", "term", "fdr", "genes"} <= set(empty.columns), method


def test_blocks_the_attribution_calls_empty_are_not_tested(trained_tiny):
    """A block holding almost none of its members' variance got significant terms along its directions, whose
    correlations with the genes are noise; the attribution leaves such blocks out, and so does enrichment."""
    from venncell.analysis.block_enrichment import enrich_blocks

    model, _, _ = trained_tiny
    res = model.attribution(markers=[], progress=False)
    genes = model.specs["rna"].feature_names
    sets = {f"S{i}": genes[6 * i : 6 * i + 6] for i in range(len(genes) // 6)}
    res.regions["empty"] = False  # the fixture's short training leaves every block nearly empty
    tested = enrich_blocks(model.data, res, gene_sets=[sets], top_n=12)
    assert tested.terms["ranking"].str.startswith("private:rna").any()
    res.regions.loc[res.regions["block"] == "private:rna", "empty"] = True
    skipped = enrich_blocks(model.data, res, gene_sets=[sets], top_n=12)
    assert not skipped.terms["ranking"].str.startswith("private:rna").any()
    assert any("Not tested: private:rna, empty" in n for n in skipped.notes)
