"""What a simulation worker sets up for itself before it runs devices.

Apart from the pool's protocol: signals, its parent's death, threads, malloc
and priority are properties of the process, set once, whatever it then runs.
A Ray actor (:mod:`~stamen.simulations.ray_workers`) sets up the same training
process; its signals and lifetime are Ray's.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameters (``malloc.h``)."""
PR_SET_PDEATHSIG = 1
"""Linux's ``prctl`` option: the signal this process gets when its parent dies."""


def become_worker() -> None:
    """Set up this freshly forked process as a simulation worker."""
    # Ctrl-C and SIGTERM are the parent's to handle: it stops the pool and writes the
    # results. A worker ends with its parent, however the parent ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()
    set_up_training()


def set_up_training() -> None:
    """What any process that trains devices sets up, forked worker or Ray actor."""
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    keep_freed_memory()
    # The server is the critical path (it starts the run and aggregates between rounds,
    # while workers wait): on a busy core it should win.
    with contextlib.suppress(OSError):
        os.nice(5)
    # A process's first optimizer imports torch's compiler stack (about 1 s): pay it now,
    # while the server evaluates the initial model, rather than in the first round.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def _libc() -> ctypes.CDLL | None:
    """The C library, or ``None`` where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def keep_freed_memory(keep_bytes: int = 256 << 20, mmap_above_bytes: int = 32 << 20) -> None:
    """Have glibc's malloc keep freed memory for reuse rather than give it back to the kernel.

    A training step frees and allocates activations of a few MB. By default glibc maps such
    blocks afresh and unmaps them when freed, and the kernel zero-fills every page on first
    touch: about 2,000 page faults per training group of 8 devices, 15% of a worker's
    training time. Fixing both thresholds keeps those blocks in the heap. Without glibc
    (macOS, musl) this does nothing.
    """
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return
    mallopt(M_MMAP_THRESHOLD, mmap_above_bytes)
    mallopt(M_TRIM_THRESHOLD, keep_bytes)


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies, even by SIGKILL.

    Otherwise a worker whose parent was killed keeps training until it next reads
    from its pipe. Without Linux's ``prctl`` this does nothing; the pipe still ends it.
    """
    parent = os.getppid()
    prctl = getattr(_libc(), "prctl", None)
    if prctl is None:
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
