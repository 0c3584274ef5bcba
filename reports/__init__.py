"""Turns result tables (conformance, benchmarks) into files people read: Parquet, Markdown, plots."""
