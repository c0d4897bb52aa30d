"""Notebook-first medallion pipeline for sales operations."""

import os

# Arrow's allocator in every process of ours: jemalloc with one arena, not mimalloc (Arrow's
# default here). A kernel runs each step once, on fresh memory: silver's pass over 1M lines
# spent 1.4-1.9 s of system time on new pages with mimalloc, 0.7-1.1 s with jemalloc (wall
# 2.75-3.14 s -> 2.53-2.59 s). With one arena (JE_ARROW_MALLOC_CONF) the pass over 10M lines
# peaks at 744 MB instead of 895 MB with jemalloc's default arenas and 840 MB with mimalloc,
# at the same speed (issue 12). Arrow reads both when it loads: a process that loaded Arrow
# before it imported us keeps its default, and a user's own choice stays.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
os.environ.setdefault("JE_ARROW_MALLOC_CONF", "narenas:1")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
MALLOC_MMAP_THRESHOLD = 32 << 20
MALLOC_TRIM_THRESHOLD = 64 << 20


def _keep_freed_memory() -> None:
    """glibc's malloc (Python's large objects, numpy's and pandas' arrays) gives freed memory
    back to the system at once: a block above its sliding mmap threshold is unmapped when freed,
    the heap's top is trimmed past twice that, and the next chunk's arrays fault their pages in
    again, zeroed. Here blocks up to MALLOC_MMAP_THRESHOLD come from the heap and up to
    MALLOC_TRIM_THRESHOLD of its freed top is kept: silver's pass over 1M lines 600k page faults
    -> 450k, 3.31-3.55 s -> 3.13-3.22 s wall, the same peak RSS (issue 12). Not glibc: as is."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)


_keep_freed_memory()  # this process's and its kernels' (forked, or importing us)

from medallion import papermill_stores  # noqa: E402 - after the allocator's choice

papermill_stores.install()  # before anything of ours imports papermill
