"""Notebook-first medallion pipeline for sales operations."""

import os

# Arrow's allocator in every process of ours: jemalloc, not mimalloc (Arrow's default here).
# A kernel runs each step once, on fresh memory: silver's pass over 1M lines spent 1.1-1.9 s
# of system time on new pages with mimalloc, 0.7-0.9 s with jemalloc (wall 2.6-3.1 s ->
# 2.4-2.6 s, four runs each; issue 12). Arrow reads it when it loads: a process that loaded
# Arrow before it imported us keeps its default, and a user's own choice stays.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

from medallion import papermill_stores  # noqa: E402 - after the allocator's choice

papermill_stores.install()  # before anything of ours imports papermill
