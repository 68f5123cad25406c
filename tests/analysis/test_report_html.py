"""The attribution report end to end, as a user runs it: ``venncell-train report=true``, then ``venncell-report``
on the finished run, then report.html opened in headless Chromium (skipped when Chromium is absent)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import mudata as md
import pandas as pd
import pytest

MARKERS = ["cluster", "protein:protein_0001"]
QUICK = ["attribution.n_perm=20", "attribution.n_boot=50", "attribution.progress=false"]


@pytest.fixture(scope="module")
def report_run(tmp_path_factory, helpers) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    helpers.run_cli(
        ["venncell-train", *helpers.TINY_CLI, "logger=none", "report=true", f"hydra.run.dir={out}"]
    )
    assert (out / "report.html").exists() and (
        out / "attribution.json"
    ).exists()  # written by the train hook
    helpers.run_cli(
        [
            "venncell-report",
            f"run_dir={out}",
            f"markers=[{','.join(MARKERS)}]",
            "plan=true",
            "planner.n_boot=20",
            "enrich=true",
            "enrichment.gene_sets=[KEGG_2021_Human]",
            *QUICK,
        ]
    )
    return out


def test_report_outputs(report_run):
    out = report_run
    markers = pd.read_csv(out / "attribution_markers.csv")
    assert list(markers["marker"]) == MARKERS
    assert markers["verdict"].notna().all()
    js = json.loads((out / "attribution.json").read_text())
    assert {"modalities", "markers", "marker_scores", "dimensions", "top_features"} <= set(js)
    # how the model trained, read from the saved model by venncell-report: epochs and losses of both stages
    assert (
        js["training"]["stage1"]["epochs"] > 0
        and js["training"]["stage2"]["held_out_loss"] is not None
    )
    assert (
        not js["training"]["stage1"]["failed"]
        and "<h2>Training</h2>" in (out / "report.html").read_text()
    )
    for m in ("rna", "protein", "atac"):
        assert (out / f"attribution_features_{m}.csv").exists()
    mdata = md.read_h5mu(str(out / "venn.h5mu"))
    assert (
        "venn_shared_fraction" in mdata["protein"].var
        and "venn_private_fraction_hi" in mdata["rna"].var
    )
    assert (out / ".hydra" / "config.yaml").exists()  # the training run's own config is left alone
    weights = pd.read_csv(out / "attribution_cell_weights.csv", index_col=0)
    assert list(weights.columns) == ["rna", "protein", "atac"]
    assert ((weights.sum(1) - 1).abs() < 1e-5).all()
    blocks = pd.read_csv(out / "attribution_regions.csv")
    assert list(blocks["block"]) == ["shared", "private:rna", "private:protein", "private:atac"]
    assert {"ev_rna", "ev_protein", "ev_atac", "empty"} <= set(blocks.columns)
    assert blocks.loc[0, ["ev_rna", "ev_protein", "ev_atac"]].notna().all()
    plan = pd.read_csv(out / "plan_summary.csv")
    assert len(plan) == 9  # 3 targets x 3 source subsets
    # a fraction, or NaN where the (briefly trained) model explains none of the target's features
    assert (plan["recoverable"].between(0, 1) == (plan["n_explained"] > 0)).all(), plan
    # the synthetic RNA features are not gene symbols: enrichment skips RNA, says why, and writes empty tables
    assert (out / "enrichment_terms.csv").exists() and (out / "enrichment_top.csv").exists()
    protein = pd.read_csv(out / "plan_features_protein.csv", index_col=0)
    assert set(protein["verdict"]) <= {"predict", "measure", "unexplained"}


def test_unknown_marker_is_a_clear_error(report_run, helpers):
    res = helpers.run_cli(
        ["venncell-report", f"run_dir={report_run}", "markers=[CD4_nope]", *QUICK], ok=False
    )
    assert res.returncode == 2
    assert (
        "'CD4_nope' was not found" in res.stderr
        and "mdata.obs" in res.stderr
        and "protein" in res.stderr
    )
    assert "Traceback" not in res.stderr


def _png(data: bytes):
    return mpimg.imread(io.BytesIO(data), format="png")


def test_report_html_embeds_decodable_figures(report_run):
    html = (report_run / "report.html").read_text()
    assert (
        "<script" not in html and "http://" not in html and "https://" not in html
    )  # self-contained
    images = re.findall(r"<img[^>]*src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    # Venn summary, Venn diagram, feature scatter, marker heatmap, UMAP grid, EV per latent direction,
    # recoverable fractions
    assert len(images) == len(re.findall(r"<img", html)) == 7
    assert "alt='EV per latent direction'" in html and "EV in rna" in html
    assert "alt='Venn diagram'" in html
    assert "Measure or predict" in html
    assert "Gene sets per block" in html and "modality &#x27;rna&#x27;: only 0 of its" in html
    for b64 in images:
        pixels = _png(base64.b64decode(b64))
        assert pixels.shape[0] > 50 and pixels.shape[1] > 50
        assert pixels[..., :3].std() > 0.02, "a blank figure"
    for marker in MARKERS:
        assert marker in html


def _screenshot(page: Path, tmp_path: Path, size: tuple[int, int]):
    """``page`` rendered by headless Chromium (skipped when absent), as an RGB array."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed")
    shot = tmp_path / f"{page.stem}.png"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        f"--window-size={size[0]},{size[1]}",
        page.resolve().as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.exists(), f"no screenshot ({res.returncode}):\n{res.stderr[-2000:]}"
    pixels = _png(shot.read_bytes())[..., :3]
    assert pixels.shape[:2] == (size[1], size[0])
    return pixels


def test_report_renders_in_chromium(report_run, tmp_path):
    pixels = _screenshot(report_run / "report.html", tmp_path, (1200, 3000))
    assert pixels.std() > 0.05, "the rendered page is blank"
    top = pixels[:600]
    assert top.std() > 0.05, "nothing rendered at the top of the page (title, first figure)"


def test_venn_diagram_renders_in_chromium(report_run, tmp_path):
    """The report's Venn diagram as the browser draws it: the page keeps only that image once loaded."""
    html = (report_run / "report.html").read_text()
    keep = (
        "<script>window.onload = () => {const v = [...document.images].find(i => i.alt === "
        "'Venn diagram'); document.body.style.margin = '0'; document.body.replaceChildren(v);}"
        "</script></body>"
    )
    page = tmp_path / "venn.html"
    page.write_text(html.replace("</body>", keep))
    pixels = _screenshot(page, tmp_path, (800, 700))
    drawn = pixels[pixels.min(2) < 0.98]  # everything but the white page
    assert len(drawn) > 40_000, "the Venn diagram is not on the page"  # three circles of ~100 px
    assert (pixels[550:] > 0.98).all(), "more than the Venn diagram (~500 px high) on the page"
    # the circles' pale blue fill: blue above red, as in no other part of the page kept
    assert (drawn[:, 2] - drawn[:, 0] > 0.03).mean() > 0.5


def test_the_venn_caption_says_upset_beyond_three_modalities():
    """With four modalities the figure is an UpSet plot, but its caption spoke of overlapping circles."""
    import pandas as pd

    from venncell.analysis.report import _venn_note

    assert "circles overlap" in _venn_note(pd.DataFrame({"modality": ["a", "b", "c"]}))
    four = _venn_note(pd.DataFrame({"modality": ["a", "b", "c", "d"]}))
    assert "UpSet" in four and "circles overlap" not in four


def test_an_undefined_marker_association_shows_as_a_dash():
    """A constant or all-NaN marker has no r; the report's table printed "+nan" as if it were a number."""
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd

    from venncell.analysis.report import _direction_marker_table

    a = pd.DataFrame(
        {
            "block": ["shared", "shared"],
            "component": ["PC1", "PC1"],
            "marker": ["constant", "cell_type"],
            "n_cells": [10, 10],
            "measure": ["pearson_r", "eta_squared"],
            "association": [np.nan, 0.5],
        }
    )
    html = "".join(_direction_marker_table(SimpleNamespace(direction_markers=a)))
    assert "nan" not in html.lower() and "–" in html and "0.50" in html


def test_a_failed_training_is_said_before_the_verdicts():
    """A model whose training diverged got a report of confident verdicts with no word of it."""
    from venncell.analysis.report import _training
    from venncell.analysis.writers import training_summary

    history = {
        "stage1": {"stage1/train/loss_epoch": 120.7, "stage1/val/loss": 130.0},
        "stage2": {"stage2/train/loss_epoch": 6.3, "stage2/val/loss": 6.0},
        "epochs": {"stage1": [{"epoch": i} for i in range(8)], "stage2": [{"epoch": 0}]},
        "wall_time_s": {"stage1": 3.0, "stage2": 1.0},
        "failed": {
            "stage1": "its training loss ended at 120.7, above its lowest (39.42, epoch 0)"
        },
    }
    summary = training_summary(history)
    assert summary["stage1"]["epochs"] == 8 and summary["stage2"]["failed"] == ""
    html = "".join(_training(summary))
    assert "class='warn'><b>stage1 failed</b>: its training loss ended at 120.7" in html
    assert "stage2 failed" not in html and "120.7000" in html
