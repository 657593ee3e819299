"""Sweeps over many features: spec, SQLite store, worker, Ray backend, run and summary."""
