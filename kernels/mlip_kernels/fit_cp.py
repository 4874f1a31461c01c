"""Fit and ship the CP factors; measure the rank table (``python -m mlip_kernels.fit_cp``).

Writes ``data/cp_even_L{L}_R{R}.npz`` (``--parity even``, the default: the tensor the ``"tdn"`` models
use) or ``data/cp_L{L}_R{R}.npz`` (``--parity all``), float64 ``A``, ``B``, ``C``, ``rel_error``, for the
default ranks (``DEFAULT_RANKS`` / ``EVEN_DEFAULT_RANKS`` in :mod:`mlip_kernels.cp`), and removes that
``(L, parity)``'s files of other ranks. A fit that is not exact (:func:`mlip_kernels.cp.is_exact`) is never
written. With ``--table`` it also measures relative and equivariance errors for a scan of ranks and updates
those rows of that parity's generated table in ``CP_RANKS.md`` next to this file (other rows and the prose
around the table stay). Deterministic for a given machine and BLAS: fixed seeds, a fixed number of starts.

Examples:
    python -m mlip_kernels.fit_cp                             # ship the even-path default ranks
    python -m mlip_kernels.fit_cp --table --parity even --L 1 2 3
    python -m mlip_kernels.fit_cp --table --parity all --L 4 --ranks 215
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from importlib import resources

import numpy as np
import torch

from .cg import shared_cg_tensor, tp_paths
from .cp import _data_name, _defaults, column_norms, equivariance_error, fit_cp, is_exact
from .tp import LowRankTP

#: ranks scanned for the table, per parity (7 L^2 is the TDN paper's default). Just below the exact ranks
#: of L >= 5 every start takes minutes; those runs are in CP_RANKS.md's exploratory notes.
SCAN = {
    "all": {
        1: [4, 6, 7, 8],
        2: [20, 28, 29, 30],
        3: [63, 80, 85, 88, 89, 90],
        4: [112, 150, 200, 210, 215, 220],
        5: [175, 450],
        6: [252, 850],
    },
    "even": {
        1: [4, 5, 6],
        2: [16, 17, 18],
        3: [45, 50, 51, 52],
        4: [118, 119],
        5: [245],
        6: [540],
    },
}


def _measure(L: int, rank: int, parity: str, restarts: int, iters: int) -> dict:
    t0 = time.perf_counter()
    M = shared_cg_tensor(L, L, L, parity)
    A, B, C, err = fit_cp(M, rank, restarts=restarts, iters=iters)
    seconds = time.perf_counter() - t0
    tp = LowRankTP(A, B, C, kind="cp", L_in1=L, L_in2=L, L_out=L, paths=tp_paths(L, L, L, parity), dtype=torch.float64)
    eq = equivariance_error(tp, L, L, L, n=256, seed=1)
    return dict(
        L=L,
        rank=rank,
        rel_error=err,
        equiv_error=eq,
        seconds=seconds,
        A=A,
        B=B,
        C=C,
        parity=parity,
        max_component=float(column_norms(A, B, C).max()),
        exact=is_exact(A, B, C, err),
    )


def _data_dir():
    return resources.files("mlip_kernels").joinpath("data")


def _save(row: dict) -> str:
    """Write the row's factors and remove this (L, parity)'s files of other ranks."""
    L, rank, parity = row["L"], row["rank"], row["parity"]
    target = _data_name(L, rank, parity)
    pattern = re.compile(re.escape(_data_name(L, 0, parity)).replace("R0", r"R\d+"))
    for old in _data_dir().iterdir():
        if pattern.fullmatch(old.name) and old.name != target:
            print("  removed", old, flush=True)
            old.unlink()  # type: ignore[attr-defined]  (a plain path in a source checkout)
    ref = _data_dir().joinpath(target)
    np.savez_compressed(str(ref), A=row["A"], B=row["B"], C=row["C"], rel_error=np.float64(row["rel_error"]))
    return str(ref)


def _markers(parity: str) -> tuple[str, str]:
    return f"<!-- BEGIN generated table: {parity} paths -->", f"<!-- END generated table: {parity} paths -->"


_HEADER = [
    "| L | rank | rank / L^2 | rel. error | equiv. error | max component | fit time (s) | default |",
    "|---|-----:|-----------:|-----------:|-------------:|--------------:|-------------:|:-------:|",
]


def _row_line(r: dict, defaults: dict[int, int]) -> str:
    default = "yes" if defaults.get(r["L"]) == r["rank"] else ""
    note = " (7 L^2)" if r["rank"] == 7 * r["L"] ** 2 else ""
    return (
        f"| {r['L']} | {r['rank']}{note} | {r['rank'] / r['L'] ** 2:.1f} | {r['rel_error']:.1e} | "
        f"{r['equiv_error']:.1e} | {r['max_component']:.2f} | {r['seconds']:.1f} | {default} |"
    )


def _old_rows(section: str) -> dict[tuple[int, int], str]:
    """Table lines of an existing generated section, by ``(L, rank)`` (older lines without the
    max-component column get "-" there)."""
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| (\d+) \| (\d+)\b", line)
        if m:
            cells = line.strip().strip("|").split("|")
            if len(cells) == len(_HEADER[0].strip().strip("|").split("|")) - 1:
                cells.insert(5, " - ")
            rows[int(m.group(1)), int(m.group(2))] = "|" + "|".join(cells) + "|"
    return rows


def _section(
    rows: list[dict], parity: str, old: dict[tuple[int, int], str], argv: str, restarts: int, iters: int
) -> str:
    """The generated part of CP_RANKS.md for one parity (between its markers): this run's rows, and the
    earlier rows of ``(L, rank)`` pairs it did not measure."""
    defaults = _defaults(parity)
    begin, end = _markers(parity)
    lines = {}
    for (L, rank), line in old.items():  # the default column follows the current defaults
        cells = line.strip("|").split("|")
        cells[-1] = " yes " if defaults.get(L) == rank else "  "
        lines[L, rank] = "|" + "|".join(cells) + "|"
    for r in rows:
        lines[r["L"], r["rank"]] = _row_line(r, defaults)
    return "\n".join(
        [
            begin,
            f"Latest rows by `python -m mlip_kernels.fit_cp {argv}` on {platform.machine()} ({platform.system()}),",
            f"numpy {np.__version__}, torch {torch.__version__}: {restarts} seeded starts per rank, each up to {iters} "
            "Levenberg-Marquardt steps.",
            *(
                [
                    'Rows this run did not measure are kept from earlier runs ("-": measured before the max-component',
                    "column existed, by the previous fitter: 3 ALS starts, LM on the best only).",
                ]
                if len(lines) > len(rows)
                else []
            ),
            "",
            *_HEADER,
            *(lines[key] for key in sorted(lines)),
            "",
            f"Default ranks (`{'DEFAULT_RANKS' if parity == 'all' else 'EVEN_DEFAULT_RANKS'}`, shipped as "
            f"`data/{_data_name(0, 0, parity).replace('L0', 'L{L}').replace('R0', 'R{R}')}`): "
            + ", ".join(f"L={L}: {R}" for L, R in sorted(defaults.items()))
            + ".",
            end,
        ]
    )


def _doc_path() -> str:
    return str(resources.files("mlip_kernels").joinpath("CP_RANKS.md"))


def _read_doc() -> str:
    try:
        with open(_doc_path()) as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def _current_section(doc: str, parity: str) -> str:
    begin, end = _markers(parity)
    return doc[doc.index(begin) : doc.index(end)] if begin in doc and end in doc else ""


def _write_section(text: str, parity: str) -> str:
    """Replace this parity's generated block of CP_RANKS.md (the prose around it is kept)."""
    doc = _read_doc()
    begin, end = _markers(parity)
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + text + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip("\n") + ("\n\n" if doc else "") + f"## {parity} paths\n\n" + text + "\n"
    with open(_doc_path(), "w") as fh:
        fh.write(doc)
    return _doc_path()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mlip_kernels.fit_cp", description=__doc__.splitlines()[0])
    ap.add_argument("--L", type=int, nargs="*", help="degrees (default: those with a default rank)")
    ap.add_argument(
        "--parity",
        choices=("all", "even"),
        default="even",
        help="which tensor: all paths or only the even ones (the tdn models' product; default)",
    )
    ap.add_argument("--table", action="store_true", help="measure a scan of ranks and update CP_RANKS.md")
    ap.add_argument("--ranks", type=int, nargs="*", help="with --table: these ranks instead of the scan")
    ap.add_argument("--no-ship", action="store_true", help="do not write the default-rank npz files")
    ap.add_argument("--restarts", type=int, default=16, help="seeded starts per rank (the first exact one wins)")
    ap.add_argument("--iters", type=int, default=600, help="Levenberg-Marquardt steps per start at most")
    args = ap.parse_args(argv)
    defaults = _defaults(args.parity)
    Ls = args.L or sorted(defaults)
    old = _old_rows(_current_section(_read_doc(), args.parity))
    rows, refused = [], []
    for L in Ls:
        if args.table:
            ranks = set(args.ranks) if args.ranks else set(SCAN[args.parity].get(L, [])) | {defaults.get(L)}
        else:
            ranks = {defaults.get(L)}
        for rank in sorted(ranks - {None}):
            row = _measure(L, rank, args.parity, args.restarts, args.iters)
            rows.append(row)
            print(
                f"L={L} rank={rank} ({args.parity}): rel {row['rel_error']:.2e} equiv {row['equiv_error']:.2e} "
                f"max component {row['max_component']:.2f} ({row['seconds']:.1f} s)",
                flush=True,
            )
            if defaults.get(L) == rank and not args.no_ship:
                if row["exact"]:
                    print("  wrote", _save(row), flush=True)
                else:
                    refused.append(f"L={L} rank={rank}")
    if args.table:
        argv_text = " ".join(sys.argv[1:] if argv is None else argv)
        print(
            "wrote", _write_section(_section(rows, args.parity, old, argv_text, args.restarts, args.iters), args.parity)
        )
    if refused:
        print(f"not shipped (no exact fit found; try more --restarts): {', '.join(refused)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
