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

from medallion import papermill_stores  # noqa: E402 - after the allocator's choice

papermill_stores.install()  # before anything of ours imports papermill
