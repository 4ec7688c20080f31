"""Freed memory kept in the process for reuse (glibc's ``mallopt``): ``speed.keep_freed_memory``.

A CPU training step allocates some large tensors anew every step: the dense gradient of each word-embedding
call (30,522 x 384 floats, 47 MB, four per TMR step: text, phrases, captions, text windows) and the bf16 copies
autocast makes of the weights. glibc serves an allocation over its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and gives it back with ``munmap`` when freed, so every step pays the page faults of touching new memory
again, and it returns the top of its heap to the system past a trim threshold. With ``M_MMAP_MAX`` 0 and a
trim threshold of 1 GiB, freed memory stays in the heap and the next step reuses pages already mapped.

Only where memory comes from: what is computed is unchanged (a run-neutral key, like the number of loader
workers). The process keeps its peak heap until it exits. ``benchmarks/cpu_memory.py`` measures the step with
and without, side by side in one process (docs/speed.md, "Freed memory kept on the CPU").
"""

from __future__ import annotations

import ctypes
import sys

#: mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_MMAP_THRESHOLD = -3
#: what the switch sets: no mmap'd chunks; the heap's top returned to the system only past 1 GiB
KEEP = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30}
#: glibc's defaults (dynamic thresholds start there), for a benchmark's baseline rounds
GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_THRESHOLD: 128 * 1024}


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def set_malloc(params: dict[int, int]) -> bool:
    """``mallopt`` each parameter; True when glibc took every one, False elsewhere (nothing changed)."""
    libc = _glibc()
    if libc is None:
        return False
    return all(libc.mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in params.items())


def keep_freed_memory() -> bool:
    """Keep freed memory in this process for reuse (:data:`KEEP`); True when applied (Linux with glibc)."""
    return set_malloc(KEEP)


def release_freed_memory() -> bool:
    """glibc's defaults back (:data:`GLIBC_DEFAULTS`) and the free heap top returned (``malloc_trim``)."""
    libc = _glibc()
    if libc is None or not set_malloc(GLIBC_DEFAULTS):
        return False
    libc.malloc_trim(ctypes.c_size_t(0))
    return True
