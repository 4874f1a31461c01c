"""Benchmarks behind ``mlip bench``: library functions that measure and return JSON-ready rows.

``from mlip_cli.bench.tp import TPBenchConfig, run_tp_bench`` runs the tensor-product benchmark;
:mod:`mlip_cli.bench.plot` draws it. Submodules import torch; this package itself imports nothing heavy.
"""
