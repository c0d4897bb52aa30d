"""Notebook-first medallion pipeline for sales operations."""

from medallion import papermill_stores

papermill_stores.install()  # before anything of ours imports papermill
