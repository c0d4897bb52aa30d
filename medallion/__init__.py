"""Notebook-first medallion pipeline for sales operations."""
