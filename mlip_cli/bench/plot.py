"""PNG figure for ``mlip bench tp``: forward+backward time and speed-up over e3nn vs L."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["plot_tp"]


def plot_tp(result: dict, path: Path) -> None:
    """Write the figure to ``path`` (PNG), atomically: a partial file never appears under that name."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; set before pyplot is imported
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["status"] == "ok"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4.8))
    for m in methods:
        pts = sorted((r["L"], r["fwd_bwd_ms"], r.get("speedup_vs_e3nn")) for r in rows if r["method"] == m)
        style = dict(
            marker="o",
            lw=2.5 if m.startswith("rank-") else 1.5,
            ls="--" if m == "e3nn" else "-",
            color="k" if m == "e3nn" else None,
        )
        (line,) = ax_t.plot([p[0] for p in pts], [p[1] for p in pts], label=m, **style)
        sp = [(p[0], p[2]) for p in pts if p[2]]
        if m != "e3nn" and sp:
            ax_s.plot(
                [p[0] for p in sp],
                [p[1] for p in sp],
                label=m,
                color=line.get_color(),
                **{k: v for k, v in style.items() if k != "color"},
            )
    ax_t.set(yscale="log", xlabel="L", ylabel="forward+backward (ms)", title="time per convolution")
    ax_s.set(yscale="log", xlabel="L", ylabel="e3nn time / method time", title="speed-up over e3nn (same run)")
    if any(r["method"] == "e3nn" for r in rows):
        ax_s.axhline(1.0, color="k", lw=0.8, ls="--")
    for ax in (ax_t, ax_s):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(result["meta"]["caption"], fontsize=9)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=120)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
