"""How many CPU threads a training process uses.

torch's default (one intra-op thread per core) oversubscribes a machine whose cores other jobs already use:
the threads then wait on each other, and a small model's steps slow down by an order of magnitude. The
default here takes only the cores nobody else is using, shared among this job's processes.
"""

from __future__ import annotations

import contextlib
import os

import torch

# VennCell's matrices (a batch of 128 cells x a few hundred hidden units) stop gaining from threads beyond a few
MAX_AUTO_THREADS = 4


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def busy_cores() -> float:
    """Cores other processes keep busy: the larger of the 1-minute load average (which lags a minute behind)
    and the processes runnable right now, this one excluded (Linux); 0 where the platform tells neither."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):
        running = 0
    return max(load, float(running))


def auto_threads(processes_per_machine: int = 1, on_accelerator: bool = False) -> int:
    """Intra-op threads for one training process.

    Parameters
    ----------
    processes_per_machine
        This job's training processes on the machine (DDP ranks on CPU); they share the free cores.
    on_accelerator
        True when the model trains on a GPU: the host then only assembles batches and launches kernels, for which
        one thread is enough.
    """
    return auto_threads_why(processes_per_machine, on_accelerator)[0]


def auto_threads_why(
    processes_per_machine: int = 1, on_accelerator: bool = False
) -> tuple[int, str]:
    """``auto_threads`` and what it read to choose them (for the run's log), from one reading of the load."""
    if on_accelerator:
        return 1, "automatic: the host only feeds the accelerator"
    cores, busy = available_cores(), busy_cores()
    ranks = max(1, processes_per_machine)
    n = max(1, min(MAX_AUTO_THREADS, int((cores - busy) // ranks)))
    return n, f"automatic: {cores} cores, {busy:.1f} busy, {ranks} process(es)"


@contextlib.contextmanager
def cpu_threads(n: int):
    """Run the block with ``n`` intra-op threads, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
