"""``mlip bench tp`` through typer's CliRunner (tiny sizes), and the measurements it relies on."""

import json
import math
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from mlip_cli.bench import convs, measure
from mlip_cli.bench.peers import e3nn_version
from mlip_cli.cli import app

runner = CliRunner()
# One thread: on a loaded 2-core machine every OpenMP barrier can wait a scheduler tick, which made
# the two-thread run of these tiny sizes 10x slower.
TINY = [
    "--l-min",
    "1",
    "--l-max",
    "2",
    "--channels",
    "8",
    "--edges",
    "64",
    "--nodes",
    "16",
    "--quick",
    "--threads",
    "1",
]
HAS_E3NN = e3nn_version() is not None


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = runner.invoke(app, ["bench", "tp", *TINY, "--out", str(out / "tp.json"), "--plot", str(out / "tp.png")])
    assert result.exit_code == 0, result.output
    return result, json.loads((out / "tp.json").read_text()), out


def test_json_has_every_row_and_column(bench):
    _, data, _ = bench
    rows = {(r["L"], r["method"]): r for r in data["rows"]}
    methods = ["e3nn", "cg", "gaunt", "cp", "cp-high", "rank-gaunt", "rank-cp"]
    assert set(rows) == {(L, m) for L in (1, 2) for m in methods}
    for (L, m), r in rows.items():
        if m == "e3nn" and not HAS_E3NN:
            assert r["status"] == "skipped" and "not installed" in r["note"]
            continue
        assert r["status"] == "ok", r
        for col in (
            "fwd_ms",
            "fwd_bwd_ms",
            "peak_mem_mb",
            "equiv_err",
            "rel_err_vs_cg",
            "n_paths",
            "parity_odd_paths",
            "paths",
            "speedup_vs_e3nn",
        ):
            assert col in r, (L, m, col)
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["peak_mem_mb"] > 0
        assert (r["speedup_vs_e3nn"] is not None) == HAS_E3NN
    meta = data["meta"]
    for key in ("machine", "sizes", "dtype", "peers", "peak_mem_method", "error_method", "caption", "load_average_end"):
        assert key in meta
    assert meta["machine"]["torch_threads"] == 1  # --threads 1 took effect while measuring
    load = meta["machine"]["load_average"]
    assert len(load) == 3 and all(isinstance(x, float) and x >= 0 for x in load)
    assert meta["sizes"] == {"nodes": 16, "edges": 64, "channels": 8}


def test_errors_are_at_rounding_level_for_exact_products(bench):
    _, data, _ = bench
    for r in data["rows"]:
        if r["status"] != "ok":
            continue
        assert r["equiv_err"] < 1e-6, r  # float64 measurement; CP at L <= 2 is fitted to ~1e-13
        exact = r["method"] in ("e3nn", "cg", "gaunt", "rank-gaunt")
        assert r["rel_err_vs_cg"] < (1e-12 if exact else 1e-6), r


def test_cp_rows_report_their_decomposition_error(bench):
    from mlip_kernels.cg import shared_cg_tensor
    from mlip_kernels.cp import DEFAULT_RANKS, EXACT_TOL, cp_factors, cp_relative_error

    result, data, _ = bench
    for r in data["rows"]:
        if r["method"] in ("cp", "cp-high", "rank-cp"):
            L = r["L"]
            A, B, C, _ = cp_factors(L, r["rank"])  # the factors the row timed, checked independently
            assert r["cp_fit_rel_error"] == pytest.approx(cp_relative_error(shared_cg_tensor(L, L, L), A, B, C))
            assert r["cp_fit_rel_error"] <= EXACT_TOL
        else:
            assert r.get("cp_fit_rel_error") is None
    rows = {(r["L"], r["method"]): r for r in data["rows"]}
    assert rows[(2, "cp")]["rank"] == rows[(2, "rank-cp")]["rank"] == DEFAULT_RANKS[2]
    assert rows[(2, "cp-high")]["rank"] == DEFAULT_RANKS[2] + math.ceil(0.25 * DEFAULT_RANKS[2])
    assert "CP fit err" in result.stdout
    cells = [[c.strip() for c in line.split("│")] for line in result.stdout.splitlines()]
    cp_high = next(c for c in cells if c[1:3] == ["1", "cp-high"])
    assert cp_high[10] == f"{rows[(1, 'cp-high')]['cp_fit_rel_error']:.0e}"  # the "CP fit err" column


def test_rank_rows_name_the_backend_that_ran(bench):
    _, data, _ = bench
    for r in data["rows"]:
        if r["method"].startswith("rank-"):
            assert r["message_backend"] == "torch" and "'torch'" in r["impl"]  # "auto" on the CPU


def test_paths_and_parity_are_reported(bench):
    _, data, _ = bench
    rows = {(r["L"], r["method"]): r for r in data["rows"]}
    assert rows[(1, "cg")]["n_paths"] == 5 and rows[(1, "cg")]["cross_product_path"]
    assert rows[(2, "cp")]["parity_odd_paths"] and rows[(2, "rank-cp")]["parity_odd_paths"]
    for m in ("gaunt", "rank-gaunt") + (("e3nn",) if HAS_E3NN else ()):
        assert not rows[(2, m)]["parity_odd_paths"] and rows[(2, m)]["n_paths"] == 11
    assert rows[(2, "cp-high")]["rank"] > rows[(2, "cp")]["rank"]


def test_table_and_png(bench):
    result, _, out = bench
    assert "rank-gaunt" in result.stdout and "f+b ms" in result.stdout
    png = (out / "tp.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_no_e3nn_leaves_the_speedup_empty(tmp_path):
    result = runner.invoke(
        app,
        [
            "bench",
            "tp",
            "--l-min",
            "1",
            "--l-max",
            "1",
            "--channels",
            "4",
            "--edges",
            "16",
            "--nodes",
            "8",
            "--quick",
            "--threads",
            "1",
            "--no-e3nn",
            "--methods",
            "e3nn,rank-gaunt",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]  # --json: the JSON on stdout, nothing else
    assert [r["status"] for r in rows] == ["skipped", "ok"]
    assert rows[1]["speedup_vs_e3nn"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--l-min", "3", "--l-max", "2"], "--l-min"),
        (["--methods", "cg,fft"], "--methods"),
        (["--plot", "out.jpg"], "--plot"),
        (["--dtype", "float16"], "--dtype"),
        (["--backend", "cuda"], "--backend"),
        (["--device", "gpu0"], "--device"),
        (["--device", "cuda:99"], "--device cuda:99"),
    ],
)
def test_bad_options_are_one_line_usage_errors(args, message):
    result = runner.invoke(app, ["bench", "tp", *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_without_cuda_is_one_line():
    result = runner.invoke(app, ["bench", "tp", *TINY, "--device", "cuda"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--device cuda: CUDA is not available" in result.output


def test_equivariance_error_detects_a_broken_convolution():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 9, dtype=torch.float64, generator=gen)
    vec = torch.randn(10, 3, dtype=torch.float64, generator=gen)
    w = torch.randn(10, 2, dtype=torch.float64, generator=gen)
    g = convs.Graph(torch.randint(0, 6, (10,), generator=gen), torch.randint(0, 6, (10,), generator=gen), 6)
    good = convs.DenseCGConv(2, torch.float64, "cpu").ours(g)
    assert measure.equivariance_error(good, x, vec, w, 2, 2, gen) < 1e-12

    def broken(x, Y, w):  # mixes one l = 2 component into the invariant l = 0 one
        Y2 = Y.clone()
        Y2[:, 0] += Y[:, 4]
        return good(x, Y2, w)

    assert measure.equivariance_error(broken, x, vec, w, 2, 2, gen) > 1e-3


def test_peak_tensor_bytes_sees_autograd_intermediates():
    a = torch.randn(256, 256, requires_grad=True)
    with measure.PeakTensorBytes() as tracker:
        b = (a @ a).tanh()  # keeps a 256 KiB result alive for backward
        torch.autograd.grad(b.sum(), a)
    assert tracker.peak >= 2 * 256 * 256 * 4


def test_gaunt_path_weights_reproduce_the_gaunt_product():
    from mlip_kernels.tp import make_tp

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 16, dtype=torch.float64, generator=gen)
    Y = torch.randn(5, 16, dtype=torch.float64, generator=gen)
    w = torch.ones(5, 3, dtype=torch.float64)
    idx = torch.arange(5)
    ref = measure.reference_conv(x, Y, w, idx, idx, 5, 3, "gaunt")
    gaunt = make_tp("gaunt", 3, dtype=torch.float64)(x, Y[:, None, :])
    assert measure.relative_error(gaunt, ref) < 1e-12
    assert measure.relative_error(gaunt, measure.reference_conv(x, Y, w, idx, idx, 5, 3, "even")) > 0.1


def test_cli_import_does_not_load_torch():
    code = "import sys, mlip_cli.cli, mlip_cli.commands.bench; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
