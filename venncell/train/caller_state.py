"""The process-wide settings a training changes, put back after it. Lightning's ``seed_everything`` seeds the global
random generators and sets ``PL_*`` variables, and ``Trainer(deterministic=...)`` switches torch's deterministic
algorithms (and cuDNN's benchmark mode) for the whole process: a notebook's later random draws, its other models and
its own torch code would otherwise run under VennCell's seed and settings."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

# what Lightning sets: the seed for data-loader workers, and cuBLAS's workspace for deterministic matmuls
ENV_KEYS = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG")


@contextlib.contextmanager
def caller_state():
    """Run the block, then restore Python's, numpy's and torch's global random generators, torch's
    deterministic-algorithm and cuDNN settings and ``ENV_KEYS`` as they were, whether the block ends or raises."""
    # numpy's legacy global generator is the one a caller's np.random.seed sets, and seed_everything reseeds
    generators = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())  # noqa: NPY002
    # reading the CUDA generators would start CUDA; unstarted, they hold the seed torch.manual_seed queued for
    # them, which is the CPU generator's initial seed
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    queued = torch.initial_seed()
    deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    env = {key: os.environ.get(key) for key in ENV_KEYS}
    try:
        yield
    finally:
        random.setstate(generators[0])
        np.random.set_state(generators[1])  # noqa: NPY002
        torch.random.set_rng_state(generators[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        elif torch.cuda.is_available():  # queued again if CUDA is still unstarted, else seeded
            torch.cuda.manual_seed_all(queued)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
