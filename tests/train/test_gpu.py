"""The two-stage schedule on a CUDA GPU: skipped where none is visible (CI has none).

Run on a GPU machine with ``python3 -m pytest -q tests/test_gpu.py``. The quality claims are those of
``test_recovery.py`` (same cells, settings and thresholds), checked on the GPU and against the same run on the CPU;
Lightning DDP is run with the NCCL backend on one GPU (one rank: a second rank needs a second GPU).
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from venncell import VennCell, make_synthetic
from venncell.analysis.recovery import evaluate_recovery

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")

TOL = 0.05  # absolute, on kNN R^2: CPU and GPU kernels round differently, so the runs differ a little


@pytest.fixture(scope="module")
def synthetic(recovery_cells, helpers):
    return helpers.training_cells(recovery_cells)


class _Backend(Callback):
    """What each stage trained on: (process-group backend or None, world size, device type)."""

    def __init__(self):
        self.seen = []

    def on_train_start(self, trainer, pl_module):
        dist = torch.distributed
        self.seen.append(
            (
                dist.get_backend() if dist.is_initialized() else None,
                trainer.world_size,
                pl_module.device.type,
            )
        )


def _fit(mdata, run_dir, train, **kwargs):
    mdata = mdata.copy()
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=8, private_dim=4, seed=0)
    seen = _Backend()
    model.train(run_dir=run_dir, **{**train, **kwargs}, trainer_kwargs={"callbacks": [seen]})
    want = "cuda" if kwargs.get("accelerator") == "gpu" else "cpu"
    assert [device for _, _, device in seen.seen] == [
        want,
        want,
    ]  # both stages, no silent fallback
    model.backends = seen.seen
    return model


@pytest.fixture(scope="module")
def fitted(synthetic, tmp_path_factory, helpers):
    mdata, _ = synthetic
    gpu = _fit(mdata, tmp_path_factory.mktemp("gpu"), helpers.RECOVERY_TRAIN, accelerator="gpu")
    cpu = _fit(mdata, tmp_path_factory.mktemp("cpu"), helpers.RECOVERY_TRAIN, accelerator="cpu")
    return gpu, cpu


def test_gpu_recovers_factors_like_the_cpu(fitted, synthetic, helpers):
    _, truth = synthetic
    gpu, cpu = fitted
    for source in ("encoder", "stage1"):
        g = evaluate_recovery(helpers.learned_blocks(gpu, source), truth.blocks())["knn"][
            "summary"
        ]
        c = evaluate_recovery(helpers.learned_blocks(cpu, source), truth.blocks())["knn"][
            "summary"
        ]
        assert g["shared_recovery"] >= 0.9 and g["min_private_recovery"] >= 0.85, (source, g)
        assert g["leak_private_into_shared"] <= 0.15, (source, g)
        gaps = {k: abs(g[k] - c[k]) for k in c}
        assert max(gaps.values()) < TOL, (source, gaps, g, c)


def test_gpu_model_comes_back_to_the_cpu_and_reloads(fitted, synthetic, tmp_path):
    mdata, _ = synthetic
    gpu, _ = fitted
    assert {p.device.type for p in gpu.module.parameters()} == {"cpu"}
    z = gpu.get_latent_representation(mdata)
    gpu.save(tmp_path / "model")
    again = VennCell.load(tmp_path / "model")
    np.testing.assert_allclose(again.get_latent_representation(mdata), z, rtol=0, atol=1e-6)


def test_gpu_same_seed_same_latents(tmp_path, helpers):
    """Two GPU runs with one seed: the same latents (up to float rounding of GPU reductions)."""
    mdata, _ = make_synthetic(n_cells=400, modalities={"rna": 60, "protein": 20}, seed=3)
    runs = [
        _fit(
            mdata,
            tmp_path / str(i),
            helpers.RECOVERY_TRAIN,
            accelerator="gpu",
            stage1_epochs=8,
            stage2_epochs=4,
        )
        for i in range(2)
    ]
    a, b = (r.get_latent_representation(block="shared", source="stage1") for r in runs)
    assert np.abs(a - b).max() < 1e-3, np.abs(a - b).max()
    a, b = (r.get_latent_representation(mdata) for r in runs)
    assert np.abs(a - b).max() < 1e-3, np.abs(a - b).max()


def test_ddp_strategy_with_nccl_on_one_gpu(synthetic, fitted, tmp_path, helpers):
    mdata, truth = synthetic
    try:
        model = _fit(
            mdata, tmp_path, helpers.RECOVERY_TRAIN, accelerator="gpu", devices=1, strategy="ddp"
        )
    finally:  # Lightning leaves the group (and its port) open in this process
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert model.backends == [("nccl", 1, "cuda")] * 2  # both stages
    g = evaluate_recovery(helpers.learned_blocks(model), truth.blocks())["knn"]["summary"]
    single = evaluate_recovery(helpers.learned_blocks(fitted[0]), truth.blocks())["knn"]["summary"]
    assert max(abs(g[k] - single[k]) for k in g) < TOL, (g, single)


def test_cli_trainer_ddp_runs_on_the_gpu(tmp_path):
    # without the rendezvous variables an in-process DDP run of this session left behind (its port may be taken)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")
    }
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run(
        [
            "venncell-train",
            "trainer=ddp",
            "trainer.devices=1",
            "data.n_cells=400",
            "logger=csv",
            "trainer.stage1_epochs=4",
            "trainer.stage2_epochs=2",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["recovery"]["stage1"]["knn"]["summary"]["shared_recovery"] > 0.3


def test_batches_gathered_on_the_gpu_equal_the_cpu_batches(helpers):
    """venncell.data.resident on CUDA: the same values, masks, library sizes and non-zero lists as the host batches,
    for partly paired cells."""
    from venncell.data.resident import ResidentCells, fits_on

    mdata, *_ = helpers.partially_paired(seed=3, n=300)
    VennCell.setup_mudata(mdata)
    data = VennCell(mdata, shared_dim=3, private_dim=2, seed=0).data
    assert fits_on(data, torch.device("cuda"))
    cells = ResidentCells(data, "cuda")
    idx = np.random.default_rng(0).permutation(data.n_cells)[:100]
    got = cells.gather(torch.as_tensor(idx).cuda(), *cells.host_counts(idx)).to("cpu")
    want = data.get(idx)
    for m in want.x:
        assert torch.equal(got.x[m], want.x[m]) and torch.equal(got.lib[m], want.lib[m]), m
        assert torch.equal(got.mask[m], want.mask[m]) and got.count(m) == want.count(m), m
    for m in want.nz:
        assert torch.equal(got.nz[m], want.nz[m]), m
