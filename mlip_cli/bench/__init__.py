"""Benchmarks behind ``mlip bench``: library functions that measure and return JSON-ready rows.

``from mlip_cli.bench.tp import TPBenchConfig, run_tp_bench`` runs the tensor-product benchmark;
:mod:`mlip_cli.bench.plot` draws it. Submodules import torch; this package itself imports nothing heavy.
"""

#: ``mlip bench tp`` row names in the order they are measured (e3nn first: the others are compared with it).
#: Here, not in :mod:`.tp`, so the CLI can list them without importing torch.
TP_METHODS = ("e3nn", "cg", "gaunt", "cp", "cp-high", "rank-gaunt", "rank-cp")
