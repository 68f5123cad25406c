"""The Hydra apps end to end, as a user runs them (real subprocesses of the console scripts)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import mudata as md
import numpy as np
import pytest

from venncell import VennCell
from venncell.data.validate import VennCellInputError


@pytest.fixture(scope="module")
def train_run(tmp_path_factory, helpers) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    helpers.run_cli(["venncell-train", *helpers.TINY_CLI, f"hydra.run.dir={out}"])
    return out


def test_train_outputs(train_run):
    out = train_run
    mdata = md.read_h5mu(str(out / "venn.h5mu"))
    for key in [
        "X_venn_shared",
        "X_venn_private_rna",
        "X_venn_private_protein",
        "X_venn_private_atac",
        "X_venn_shared_stage1",
        "X_venn_private_rna_stage1",
    ]:
        assert key in mdata.obsm, key
        assert mdata.obsm[key].shape[0] == 200
    assert mdata.obsm["X_venn_shared"].shape[1] == 8
    metrics = json.loads((out / "metrics.json").read_text())
    s2 = metrics["history"]["stage2"]
    assert "stage2/val/loss" in s2
    # the default sweep objective: the held-out reconstruction summed over the modalities, each weighted by
    # its feature count over the smallest modality's (the default ``features`` rule)
    n = {m: mdata[m].n_vars for m in ("rna", "protein", "atac")}
    weighted = [n[m] / min(n.values()) * s2[f"stage2/val/recon/{m}"] for m in n]
    assert s2["stage2/val/recon"] == pytest.approx(sum(weighted), rel=1e-5)
    summary = metrics["recovery"]["encoder"]["knn"]["summary"]
    assert {"shared_recovery", "min_private_recovery", "leak_private_into_shared"} <= set(summary)
    assert (out / "checkpoints" / "stage1" / "last.ckpt").exists()
    assert (out / "checkpoints" / "stage2" / "last.ckpt").exists()
    assert (out / ".hydra" / "config.yaml").exists() and (out / "config_resolved.yaml").exists()
    assert (out / "logs" / "stage1" / "metrics.csv").exists()
    assert (out / "model" / "venncell.json").exists()


def test_embed_and_predict_cli(train_run, tmp_path, helpers):
    helpers.run_cli(
        [
            "venncell-embed",
            f"model_dir={train_run / 'model'}",
            f"data.path={train_run / 'venn.h5mu'}",
            "modalities=rna",  # one name without brackets (it was read as ['r', 'n', 'a'])
            f"hydra.run.dir={tmp_path / 'e'}",
        ]
    )
    emb = md.read_h5mu(str(tmp_path / "e" / "embedded.h5mu"))
    assert np.isfinite(emb.obsm["X_venn_shared"]).all()
    res = helpers.run_cli(
        [
            "venncell-embed",
            f"model_dir={train_run / 'model'}",
            f"data.path={train_run / 'venn.h5mu'}",
            "modalities=[]",  # it embedded with every modality, without a word
            f"hydra.run.dir={tmp_path / 'none'}",
        ],
        ok=False,
    )
    assert res.returncode == 2 and "modalities=[] names no modality" in res.stderr
    # an output under a file cannot be written: said before the model or the data are read
    (tmp_path / "afile").write_text("")
    res = helpers.run_cli(
        [
            "venncell-embed",
            "model_dir=/nonexistent",
            f"data.path={train_run / 'venn.h5mu'}",
            f"output={tmp_path / 'afile' / 'x.h5mu'}",
            f"hydra.run.dir={tmp_path / 'blocked'}",
        ],
        ok=False,
    )
    assert res.returncode == 4 and f"cannot read or write {tmp_path / 'afile'}" in res.stderr, (
        res.stderr
    )
    helpers.run_cli(
        [
            "venncell-predict",
            f"model_dir={train_run / 'model'}",
            f"data.path={train_run / 'venn.h5mu'}",
            "source=[rna]",
            "target=protein",
            "output=sub/pred.h5mu",  # its folder is made (it failed on the missing sub/)
            f"hydra.run.dir={tmp_path / 'p'}",
        ]
    )
    pred = md.read_h5mu(str(tmp_path / "p" / "sub" / "pred.h5mu"))
    assert pred.obsm["X_venn_predicted_protein"].shape == (200, 20)
    # counts need the training library sizes, which the saved model carries (this once failed after load)
    helpers.run_cli(
        [
            "venncell-predict",
            f"model_dir={train_run / 'model'}",
            f"data.path={train_run / 'venn.h5mu'}",
            "source=[rna]",
            "target=protein",
            "scale=counts",
            f"hydra.run.dir={tmp_path / 'c'}",
        ]
    )
    counts = md.read_h5mu(str(tmp_path / "c" / "predicted.h5mu")).obsm["X_venn_predicted_protein"]
    assert counts.shape == (200, 20) and (counts >= 0).all() and counts.sum(1).mean() > 1.0


def test_multirun(tmp_path, helpers):
    helpers.run_cli(
        [
            "venncell-train",
            "-m",
            *helpers.TINY_CLI,
            "model.shared_dim=2,3",
            "evaluate_recovery=false",
            "logger=none",
            f"hydra.sweep.dir={tmp_path}",
        ]
    )
    dims = sorted(
        md.read_h5mu(str(tmp_path / str(i) / "venn.h5mu")).obsm["X_venn_shared"].shape[1]
        for i in (0, 1)
    )
    assert dims == [2, 3]


def _train_on_file(helpers, path, out):
    cmd = ["venncell-train", "data=mudata", f"data.path={path}", "trainer=fast", "logger=none"]
    helpers.run_cli([*cmd, f"hydra.run.dir={out}"])


def test_user_mudata(tmp_path, helpers):
    from venncell.data import make_synthetic

    mdata, _ = make_synthetic(n_cells=150, modalities={"rna": 40, "atac": 50}, seed=4)
    path = tmp_path / "mine.h5mu"
    mdata.write(str(path))
    _train_on_file(helpers, path, tmp_path / "out")
    out = md.read_h5mu(str(tmp_path / "out" / "venn.h5mu"))
    assert set(out.mod) == {"rna", "atac"} and "X_venn_private_atac" in out.obsm


def test_register_on_the_command_line_picks_modalities_and_layers(tmp_path, helpers):
    """The README's ``data.register={...}`` form: a dict given on the command line (Hydra once refused to merge
    it into the field's None default)."""
    import numpy as np

    from venncell.data import make_synthetic

    mdata, _ = make_synthetic(
        n_cells=150, modalities={"rna": 40, "protein": 10, "atac": 50}, seed=4
    )
    mdata["rna"].layers["counts"] = mdata["rna"].X.copy()
    mdata["rna"].X = np.log1p(
        np.asarray(
            mdata["rna"].X.todense() if hasattr(mdata["rna"].X, "todense") else mdata["rna"].X
        )
    )
    path = tmp_path / "mine.h5mu"
    mdata.write(str(path))
    cmd = ["venncell-train", "data=mudata", f"data.path={path}", "trainer=fast", "logger=none"]
    register = "data.register={rna: {kind: rna, layer: counts}, protein: protein}"
    helpers.run_cli([*cmd, register, f"hydra.run.dir={tmp_path / 'out'}"])
    out = md.read_h5mu(str(tmp_path / "out" / "venn.h5mu"))
    privates = {k for k in out.obsm if k.startswith("X_venn_private_") and k.count("_") == 3}
    assert privates == {"X_venn_private_rna", "X_venn_private_protein"}
    # neither a list nor a dict: one line naming the setting and the two forms it takes
    res = helpers.run_cli([*cmd, "data.register=5", f"hydra.run.dir={tmp_path / 'bad'}"], ok=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "venncell: error: data.register=5 must list the modalities" in res.stderr


def test_muon_fixture_h5mu(tmp_path, helpers, shared_dataset):
    path = shared_dataset("muon_pbmc_multiome_fixture") / "test_rna_atac.h5mu"
    _train_on_file(helpers, path, tmp_path)
    assert (tmp_path / "venn.h5mu").exists()


def test_preset_run_elsewhere_names_the_command_that_builds_its_data(tmp_path, helpers):
    # every experiment= preset reads a file its own script builds, relative to the repository root
    res = helpers.run_cli(
        ["venncell-train", "experiment=scicar_a549", f"hydra.run.dir={tmp_path / 'run'}"],
        ok=False,
        cwd=tmp_path,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "no such file" in res.stderr and str(tmp_path) in res.stderr
    assert (
        "Make it with `python experiments/scicar_a549_rna_atac/run.py --build-only`, run from the repository root"
        in res.stderr
    )


def test_bad_path_is_one_clear_line(tmp_path, helpers):
    res = helpers.run_cli(
        [
            "venncell-train",
            "data=mudata",
            f"data.path={tmp_path / 'nope.h5mu'}",
            "trainer=fast",
            f"hydra.run.dir={tmp_path}",
        ],
        ok=False,
    )
    assert res.returncode == 2
    assert "venncell: error: data.path=" in res.stderr and "no such file" in res.stderr
    assert "Traceback" not in res.stderr
    # said once on the terminal, and recorded in the run's log (where sweep summaries read a failed job's error)
    assert (res.stdout + res.stderr).count("no such file") == 1
    assert "][ERROR] - data.path=" in (tmp_path / "train.log").read_text()
    for unset in ([], ["data.path=null"]):
        res = helpers.run_cli(
            [
                "venncell-train",
                "data=mudata",
                "trainer=fast",
                f"hydra.run.dir={tmp_path / 'unset'}",
                *unset,
            ],
            ok=False,
        )
        assert res.returncode == 2 and "venncell: error: data.path is not set" in res.stderr
        assert "Traceback" not in res.stderr
    trunc = tmp_path / "trunc.h5mu"
    trunc.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    res = helpers.run_cli(
        [
            "venncell-train",
            "data=mudata",
            f"data.path={trunc}",
            "trainer=fast",
            f"hydra.run.dir={tmp_path}",
        ],
        ok=False,
    )
    assert res.returncode == 2 and "unreadable or truncated" in res.stderr


@pytest.mark.parametrize(
    ("command", "setting", "said"),
    [
        ("venncell-train", "model.kl_wieght=2", "Did you mean model.kl_weight?"),
        # the keys of the config the command line picks, not of the default's
        ("venncell-train", "data=mudata data.batchkey=x", "Did you mean data.batch_key"),
        ("venncell-train", "model=nosuch", "Available options in 'model'"),
        ("venncell-train", "trainer.stage1_epochs=abc", "could not be converted"),
        ("venncell-embed", "refine_epoch=3", "Did you mean refine_epochs?"),
        ("venncell-report", "attribution.n_bootstrap=3", "not in"),
    ],
)
def test_a_setting_hydra_cannot_compose_is_one_line_and_exit_code_2(
    command, setting, said, tmp_path, helpers
):
    """Hydra answered a mistyped key, option or value with several lines, advice to add the key with '+' (refused
    in turn: the configs are typed) and exit code 1, the code of a crash."""
    res = helpers.run_cli(
        [command, *setting.split(), f"hydra.run.dir={tmp_path / 'run'}"], ok=False
    )
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("venncell: error:") and said in lines[0], lines
    assert "use +" not in res.stderr and not (tmp_path / "run").exists()


def test_sweeps_are_left_to_hydra_by_the_composition_check():
    """hparams_search=optuna sets the multirun mode in its config: its sweep ranges need no -m, and were refused."""
    from venncell.cli.common import check_overrides
    from venncell.cli.store import register_configs

    register_configs()
    check_overrides(["hparams_search=optuna", "model.shared_dim=choice(4,8)"], "config")
    check_overrides(["model.kl_weight=1,2"], "config")  # without -m Hydra says what to add
    with pytest.raises(SystemExit):
        check_overrides(["model.kl_wieght=1"], "config")


def test_a_failed_training_exits_with_code_3_after_writing_its_outputs(tmp_path, helpers):
    """A stage-1 learning rate far too high: the losses explode and stay finite, so training runs to its end. A
    workflow must not take the result for a model: exit code 3 with the reason, the outputs kept for inspection."""
    run = tmp_path / "run"
    res = helpers.run_cli(
        [
            "venncell-train",
            *helpers.TINY_CLI,
            "trainer.stage1_epochs=5",
            "trainer.lr_latent=1e4",
            f"hydra.run.dir={run}",
        ],
        ok=False,
    )
    assert res.returncode == 3, res.stderr[-2000:]
    assert "venncell: error: training failed (stage1: its training loss ended at" in res.stderr
    assert "Traceback" not in res.stderr
    assert all((run / p).exists() for p in ("venn.h5mu", "metrics.json", "model"))
    assert json.loads((run / "metrics.json").read_text())["history"]["failed"]["stage1"]


def test_configs_ship_inside_the_package(helpers):
    """The Hydra configs are package data (no symlink): found through the installed package."""
    res = helpers.run_cli(
        [
            sys.executable,
            "-c",
            "import importlib.resources as r; print(r.files('venncell.conf').joinpath('config.yaml').is_file())",
        ]
    )
    assert res.stdout.strip() == "True"
    assert not (Path(__file__).resolve().parents[2] / "venncell" / "conf").is_symlink()


def test_help_lists_only_what_each_command_takes(helpers):
    """venncell-train's --help lists the config groups; the other commands' list their own keys, not training's."""
    train = helpers.run_cli(["venncell-train", "--help"]).stdout
    assert train.startswith("venncell-train:") and "trainer: " in train and "model: " in train
    for cmd, key in [
        ("venncell-embed", "refine_epochs"),
        ("venncell-predict", "target"),
        ("venncell-report", "markers"),
    ]:
        out = helpers.run_cli([cmd, "--help"]).stdout
        assert out.startswith(f"{cmd}:") and f"{key}:" in out, out
        assert "Configuration groups" not in out and "trainer: " not in out, out


def test_a_failed_report_still_writes_the_latents(tmp_path, helpers, monkeypatch):
    """The report runs before venn.h5mu (so that it carries the venn_* .var columns); its failure must not cost the
    trained latents."""
    from hydra import compose, initialize_config_module

    import venncell.cli.report
    from venncell.cli.store import register_configs
    from venncell.cli.train import run_train

    def broken_report(*args, **kwargs):
        raise RuntimeError("report failed")

    monkeypatch.setattr(venncell.cli.report, "write_run_report", broken_report)
    register_configs()
    with initialize_config_module(config_module="venncell.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*helpers.TINY_CLI, "report=true", "logger=none"])
    with pytest.raises(RuntimeError, match="report failed"):
        run_train(cfg, tmp_path)
    out = md.read_h5mu(str(tmp_path / "venn.h5mu"))
    assert "X_venn_shared" in out.obsm and (tmp_path / "metrics.json").exists()


def test_a_fresh_run_in_an_old_run_folder_removes_its_outputs_first(
    tmp_path, helpers, monkeypatch
):
    """A fresh run killed in an old run's folder left the old model, latents and report beside its new config,
    and venncell-report reported the old model without a word."""
    from hydra import compose, initialize_config_module

    from venncell.cli.common import clear_earlier_outputs
    from venncell.cli.store import register_configs
    from venncell.cli.train import run_train

    # a folder that never held a run keeps files that only share a name with a run's outputs
    (tmp_path / "mine").mkdir()
    for name in ("metrics.json", "plan_budget.csv"):
        (tmp_path / "mine" / name).write_text("mine")
    clear_earlier_outputs(tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == [
        "metrics.json",
        "plan_budget.csv",
    ]

    for name in (
        "config_resolved.yaml",
        "report.html",
        "attribution_markers.csv",
        "metrics.json",
        "notes.txt",
        "venncell-report.log",  # the report's log and Hydra record were left, saying what it wrote
    ):
        (tmp_path / name).write_text("old")
    (tmp_path / ".hydra_report").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "venncell.json").write_text("{}")

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(VennCell, "train", killed)
    register_configs()
    with initialize_config_module(config_module="venncell.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*helpers.TINY_CLI, "logger=none"])
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg, tmp_path)
    # only the user's own files and the new run's config are left
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config_resolved.yaml",
        "mine",
        "notes.txt",
    ]
    # and the run's input is kept though it has an output's name (venn.h5mu carries its setup)
    (tmp_path / "venn.h5mu").write_text("data")
    clear_earlier_outputs(tmp_path, keep=tmp_path / "venn.h5mu")
    assert (tmp_path / "venn.h5mu").exists()


def test_a_run_folder_in_use_is_refused_and_a_dead_runs_lock_taken_over(
    tmp_path, helpers, monkeypatch
):
    """Two runs in one folder (two sweeps started in the same second shared one) deleted each other's files; the
    folder is now held while a run lasts, and a lock left by a killed run does not block the next."""
    import socket
    import subprocess

    from venncell.cli.common import LOCK_FILE
    from venncell.data.validate import VennCellInputError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config_resolved.yaml").write_text("old")
    (run_dir / "metrics.json").write_text("the running run's")
    lock = run_dir / LOCK_FILE
    lock.write_text(f"{socket.gethostname()} {os.getppid()}")  # another live process holds it
    with pytest.raises(VennCellInputError, match="in use by another venncell command"):
        _train_in_process(run_dir, helpers.TINY_CLI)
    assert (run_dir / "metrics.json").read_text() == "the running run's" and lock.exists()

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.write_text(f"{socket.gethostname()} {gone.pid}")
    _train_in_process(run_dir, [*helpers.TINY_CLI, "evaluate_recovery=false"])
    assert (run_dir / "model").is_dir() and not lock.exists()  # taken over, released at the end
    # refused before Hydra writes its records into the held folder (they would describe the refused run), and
    # venncell-report waits its turn too
    lock.write_text(f"{socket.gethostname()} {os.getppid()}")
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- the running run's\n")
    for cmd in (
        ["venncell-train", *helpers.TINY_CLI, "seed=7", f"hydra.run.dir={run_dir}"],
        ["venncell-report", f"run_dir={run_dir}"],
    ):
        res = helpers.run_cli(cmd, ok=False)
        assert res.returncode == 2 and "in use by another venncell command" in res.stderr, (
            res.stderr
        )
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == "- the running run's\n"
    # a lock naming this very process was left by a namesake (a restarted container reuses its pid)
    lock.write_text(f"{socket.gethostname()} {os.getpid()}")
    _train_in_process(run_dir, [*helpers.TINY_CLI, "evaluate_recovery=false", "resume=true"])
    assert sorted(p.name for p in run_dir.glob(".venncell*")) == []


def test_a_resumed_run_removes_the_report_of_its_earlier_model(tmp_path, helpers):
    """A resume that trained further replaced the model and latents but left the old report beside them."""
    run_dir = tmp_path / "run"
    _train_in_process(run_dir, [*helpers.TINY_CLI, "evaluate_recovery=false"])
    for name in ("report.html", "attribution_markers.csv", "notes.txt"):
        (run_dir / name).write_text("of the earlier model")
    _train_in_process(
        run_dir,
        [*helpers.TINY_CLI, "evaluate_recovery=false", "resume=true", "trainer.stage2_epochs=4"],
    )
    assert (
        not (run_dir / "report.html").exists()
        and not (run_dir / "attribution_markers.csv").exists()
    )
    assert (run_dir / "notes.txt").exists() and (run_dir / "model").is_dir()


def test_train_report_takes_venncell_reports_settings_and_checks_them_first(
    tmp_path, helpers, monkeypatch
):
    """``report=true`` took no settings: markers, plan and attribution options needed a second command."""
    from hydra import compose, initialize_config_module

    import venncell.cli.report
    from venncell.cli.store import register_configs
    from venncell.cli.train import run_train

    seen = {}

    def capture(model, run_dir, markers=None, **kwargs):
        seen.update(markers=markers, **kwargs)

    monkeypatch.setattr(venncell.cli.report, "write_run_report", capture)
    register_configs()

    def cfg(report):
        with initialize_config_module(config_module="venncell.conf", version_base="1.3"):
            return compose(
                "config", overrides=[*helpers.TINY_CLI, f"report={report}", "logger=none"]
            )

    for report, message in (
        ("{markers: [protein:p0]}", "Marker 'protein:p0' was not found"),
        ("{attribution: {n_bot: 3}}", "n_bot"),
        ("{run_dir: elsewhere}", "cannot be set in venncell-train"),
        ("{attribution: {alpha: 0}}", "alpha"),
        ("maybe", "must be true, false or a dict"),
        ("{enrich: true, enrichment: {gene_sets: [/no/such/sets.gmt]}}", "neither a bundled"),
    ):
        run = tmp_path / f"bad{len(message)}"
        with pytest.raises(VennCellInputError, match=message):
            run_train(cfg(report), run)
        assert (
            not (run / "model").exists() and not (run / "checkpoints").exists()
        )  # before training
    run_train(cfg("{markers: [cluster], plan: true, attribution: {n_boot: 21}}"), tmp_path / "ok")
    assert seen["markers"] == ["cluster"] and seen["n_boot"] == 21 and seen["plan"]["n_boot"] > 0
    assert seen["save_h5mu"] is False and (tmp_path / "ok" / "venn.h5mu").exists()


def test_backed_runs_write_their_latents_whole(tmp_path, tiny_mdata, monkeypatch):
    """venn_latents.h5ad (backed runs) was written in place: a kill mid-write left a file anndata cannot open."""
    import anndata as ad

    from venncell.cli.train import _write_latents_file

    mdata = tiny_mdata.copy()
    mdata.obs["venn_split"] = "train"
    mdata.obsm["X_venn_shared"] = np.zeros((mdata.n_obs, 2))
    mdata.uns["venncell_latents"] = {
        "source": "average",
        "modalities": ["rna"],
        "refine_epochs": 0,
    }
    _write_latents_file(mdata, tmp_path, backed=True)
    before = (tmp_path / "venn_latents.h5ad").read_bytes()
    assert (
        ad.read_h5ad(tmp_path / "venn_latents.h5ad").uns["venncell_latents"]["source"] == "average"
    )

    def cut_short(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x89HDF\r\n")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ad.AnnData, "write", cut_short)
    mdata.obsm["X_venn_shared"] = np.ones((mdata.n_obs, 2))
    with pytest.raises(VennCellInputError, match="No space left"):
        _write_latents_file(mdata, tmp_path, backed=True)
    assert (tmp_path / "venn_latents.h5ad").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["venn_latents.h5ad"]


def test_report_of_a_missing_run_folder_creates_nothing(tmp_path, helpers):
    missing = tmp_path / "nope"
    res = helpers.run_cli(["venncell-report", f"run_dir={missing}"], ok=False)
    assert res.returncode == 2 and "no such folder" in res.stderr and "Traceback" not in res.stderr
    assert not missing.exists()  # Hydra would have made it, with .hydra_report/ inside


@pytest.mark.parametrize(
    "arg, fix",
    [("n_boot=30", "attribution.n_boot=30"), ("min_r2=0.1", "planner.min_r2=0.1")],
)
def test_report_names_the_group_of_a_setting_given_at_the_top_level(
    tmp_path, monkeypatch, capsys, arg, fix
):
    """Hydra's own error for n_boot=30 suggested +n_boot=30, which adds a key nothing reads."""
    import sys

    from venncell.cli import report

    monkeypatch.setattr(sys, "argv", ["venncell-report", f"run_dir={tmp_path}", arg])
    with pytest.raises(SystemExit) as out:
        report.main()
    assert out.value.code == 2
    assert f"give {fix}" in capsys.readouterr().err


def test_report_of_a_read_only_run_folder_says_so(tmp_path, monkeypatch, capsys):
    """A run folder on a read-only mount failed in Hydra's log set-up with a traceback (tested in-process: root,
    which runs CI, may write to any folder a chmod makes read-only, so the check is made to see one)."""
    import os
    import sys

    from venncell.cli import report

    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode)
    )
    monkeypatch.setattr(sys, "argv", ["venncell-report", f"run_dir={tmp_path}"])
    with pytest.raises(SystemExit) as out:
        report.main()
    assert out.value.code == 4
    assert "is not writable" in capsys.readouterr().err


def test_report_of_a_backed_run_says_how_to_report_it(tmp_path):
    """A backed run writes venn_latents.h5ad, not venn.h5mu; the report called it unfinished."""
    from omegaconf import OmegaConf

    from venncell.cli.report import run_report

    (tmp_path / "model").mkdir()
    (tmp_path / "venn_latents.h5ad").write_bytes(b"")
    with pytest.raises(VennCellInputError, match=r"trained out of core .*VennCell\.load\("):
        run_report(OmegaConf.create({"run_dir": str(tmp_path)}))


def test_a_file_set_up_in_python_trains_with_its_own_setup(tmp_path, helpers):
    """``setup_mudata`` then ``mdata.write``: venncell-train re-guessed every modality's kind instead (an image
    modality became an empty features one and was refused); then it refused the stored image options by their
    internal names (``image_key``)."""
    import anndata as ad
    import pandas as pd

    from venncell import VennCell, make_synthetic

    mdata, _ = make_synthetic(n_cells=120, modalities={"rna": 30, "protein": 10}, seed=0)
    cells = ad.AnnData(
        np.zeros((120, 0), dtype=np.float32), obs=pd.DataFrame(index=mdata.obs_names)
    )
    cells.obsm["crops"] = helpers.make_images(n=120, seed=0)[0]
    mdata = md.MuData({**{m: mdata[m] for m in mdata.mod}, "cells": cells})
    VennCell.setup_mudata(
        mdata,
        modalities={
            "rna": "rna",
            "protein": {"kind": "protein", "private_dim": 3},
            "cells": {"kind": "image", "obsm_key": "crops", "channels": [1]},
        },
    )
    mdata.write(tmp_path / "setup.h5mu")
    _train_in_process(
        tmp_path / "run",
        ["data=mudata", f"data.path={tmp_path / 'setup.h5mu'}", "evaluate_recovery=false"],
    )
    model = VennCell.load(tmp_path / "run" / "model")
    assert model.module.private_dims["protein"] == 3
    assert model.specs["cells"].image_shape[0] == 1 and model.specs["cells"].channels == [1]


def test_region_recovery_is_scored_in_metrics(tmp_path):
    """venncell-train scored the recovery of the shared and private blocks only, so every region's recovery in
    metrics.json was NaN."""
    _train_in_process(
        tmp_path / "run",
        ["data.n_cells=200", "data.region_factors={protein+rna: 2}", "model.venn_regions=pairs"],
    )
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())["recovery"]["average"]
    summary = summary["knn"]["summary"]
    assert np.isfinite(summary["min_region_recovery"]) and summary["min_region_recovery"] > 0.2


def test_true_factors_of_a_renamed_modality_are_left_unscored(tmp_path, caplog):
    """A synthetic modality renamed after the data were made (atac -> peaks) kept its true_private_atac factors,
    and venncell-train failed with pandas' KeyError after the whole training, writing no venn.h5mu."""
    from venncell.data import make_synthetic

    m, _ = make_synthetic(n_cells=200, modalities={"atac": 60, "protein": 12}, seed=0)
    renamed = md.MuData({"peaks": m["atac"], "protein": m["protein"]})
    for key in ("true_shared", "true_private_atac", "true_private_protein"):
        renamed.obsm[key] = m.obsm[key]
    renamed.write(tmp_path / "renamed.h5mu")
    _train_in_process(tmp_path / "run", ["data=mudata", f"data.path={tmp_path / 'renamed.h5mu'}"])
    assert "['private:atac'] match no block of the model" in caplog.text
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())["recovery"]["average"]
    summary = summary["knn"]["summary"]
    assert "private:peaks_recovery" not in summary and np.isfinite(
        summary["private:protein_recovery"]
    )
    assert (tmp_path / "run" / "venn.h5mu").exists()


def _train_in_process(run_dir, overrides: list[str]) -> None:
    """``venncell-train`` with the fast trainer and no logger, in this process (no start-up cost)."""
    from hydra import compose, initialize_config_module

    from venncell.cli.store import register_configs
    from venncell.cli.train import run_train

    register_configs()
    with initialize_config_module(config_module="venncell.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "trainer=fast", "logger=none"])
    run_train(cfg, run_dir)


def test_train_splits_panels_on_the_command_line(tmp_path, helpers):
    """The panel warning told a venncell-train user to split the file in Python first."""
    from venncell import make_synthetic

    mdata, _ = make_synthetic(
        n_cells=300, modalities={"rna": 60, "protein": 12}, n_batches=2, seed=0
    )
    x = mdata["protein"].X.toarray()
    lacks = (mdata.obs["batch"] == "b1").reindex(mdata["protein"].obs_names).to_numpy()
    x[np.ix_(lacks, [0, 1, 2])] = 0  # batch b1's panel had no proteins 0-2
    mdata.mod["protein"].X = x
    mdata.write(str(tmp_path / "panels.h5mu"))
    args = [
        "venncell-train",
        "trainer=fast",
        "data=mudata",
        f"data.path={tmp_path / 'panels.h5mu'}",
        "data.register={rna: rna, protein: {kind: protein}}",
        "data.split_panels=[protein]",
        "evaluate_recovery=false",
    ]
    res = helpers.run_cli([*args, f"hydra.run.dir={tmp_path / 'none'}"], ok=False)
    assert res.returncode == 2 and "data.batch_key" in res.stderr
    helpers.run_cli([*args, "data.batch_key=batch", f"hydra.run.dir={tmp_path / 'run'}"])
    out = md.read_h5mu(str(tmp_path / "run" / "venn.h5mu"))
    assert list(out["protein_panel1"].var_names) == list(mdata["protein"].var_names[:3])
    assert set(out.obs.loc[out["protein_panel1"].obs_names, "batch"]) == {"b0"}
    assert "X_venn_private_protein_panel1" in out.obsm


def test_venncells_warnings_are_one_line_on_the_command_line():
    """Each warning of a run printed the file and source line of the warnings.warn call in venncell."""
    import warnings

    from venncell import VennCellInputWarning
    from venncell.cli.common import command_line_warning, friendly

    before = warnings.formatwarning
    try:
        friendly(lambda: None)()
        assert warnings.formatwarning is command_line_warning
        said = warnings.formatwarning(
            "Modality 'rna': x", VennCellInputWarning, "/a/b.py", 3, "warn(x)"
        )
        assert said == "venncell: warning: Modality 'rna': x\n"
        other = warnings.formatwarning("y", FutureWarning, "/a/b.py", 3, "warn(y)")
        assert "b.py:3: FutureWarning: y" in other
    finally:
        warnings.formatwarning = before


def test_a_missing_optional_package_is_named_before_any_work(
    train_run, helpers, monkeypatch, capsys
):
    """Without wandb, the Optuna sweeper or gseapy, the commands failed late: logger=wandb with a traceback once the
    data were read, hparams_search=optuna with Hydra's "could not find", and venncell-report enrich=true only after
    rewriting the attribution files beside an older report.html."""
    import importlib.util

    from venncell.analysis.gene_sets import EnrichmentConfig
    from venncell.cli.train import _check_logger, _check_sweeper

    real = importlib.util.find_spec
    absent = {"wandb", "hydra_plugins", "gseapy"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.split(".")[0] in absent else real(name, *a),
    )
    with pytest.raises(VennCellInputError, match=r"logger=wandb needs .*venncell\[wandb\]"):
        _check_logger("wandb")
    _check_logger("csv")
    with pytest.raises(SystemExit) as stop:
        _check_sweeper(["hparams_search=optuna"])
    assert stop.value.code == 2 and "pip install 'venncell[sweep]'" in capsys.readouterr().err
    _check_sweeper(["model.kl_weight=2"])
    with pytest.raises(VennCellInputError, match=r"gseapy: pip install 'venncell\[genesets\]'"):
        EnrichmentConfig(method="prerank").check_sources()
    monkeypatch.undo()

    def outputs():  # the command's log of the refusal aside
        return {
            f: f.stat().st_mtime_ns
            for f in train_run.iterdir()
            if f.is_file() and f.suffix != ".log"
        }

    before = outputs()
    res = helpers.run_cli(
        [
            "venncell-report",
            f"run_dir={train_run}",
            "enrich=true",
            "enrichment.gene_sets=[/no/such.gmt]",
        ],
        ok=False,
    )
    assert res.returncode == 2 and "neither a bundled collection" in res.stderr, res.stderr
    assert outputs() == before
    # the modalities to test are a setting of the command line too, checked against the model before any work
    res = helpers.run_cli(
        ["venncell-report", f"run_dir={train_run}", "enrich=true", "enrichment.modalities=[hic]"],
        ok=False,
    )
    assert res.returncode == 2 and "no modality ['hic']" in res.stderr, res.stderr
    assert outputs() == before
