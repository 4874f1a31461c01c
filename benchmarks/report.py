"""What every benchmark JSON records about its run, shared by the drivers in ``benchmarks/``.

The standard (issue 11): machine, threads, dtype, sizes, load average, torch version and the git commit of
the code measured. :func:`provenance` gathers them into one ``"provenance"`` entry; :func:`write_report`
writes the JSON (and prints a table). Scripts in sub-folders put this folder on ``sys.path`` to import it.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from mlip_cli.bench.peers import code_version  # the measured code's commit and hash, shared with `mlip bench tp`


def provenance(
    *,
    threads: int | None,
    dtype: str | None,
    sizes: dict | None,
    device: str = "cpu",
    load_before: tuple[float, ...] | None = None,
) -> dict:
    """Machine (:func:`mlip_cli.bench.peers.machine_info`), torch threads, dtype, workload sizes, load average
    (``load_before``: taken when the jobs started; the current one is recorded as ``load_after``), versions
    and the code version.

    Args:
        threads: torch threads per process, or None for torch's choice.
    """
    import torch

    from mlip_cli.bench.peers import machine_info

    machine = machine_info(device)
    load_now = machine.pop("load_average")
    info = {
        "machine": machine,
        "threads": threads,
        "dtype": dtype,
        "sizes": sizes,
        "load_average": [round(x, 2) for x in load_before] if load_before is not None else load_now,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "code": code_version(),
    }
    if load_before is not None:
        info["load_after"] = load_now
    return info


def write_report(path: Path, report: dict, text: str | None = None) -> None:
    """Write the JSON report (creating its folder) and print ``text`` (a Markdown table) if given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if text:
        print(text)
    print(f"\nwrote {path}")


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (zeros where the platform has none)."""
    return os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
