"""Plot styling shared by the scaling studies: matplotlib with the Agg backend, log axes over P,
parconv / bound / peers / measured drawn the same way in every figure."""

from __future__ import annotations

import os

from _common import PEERS


STYLE = {"parconv": dict(color="tab:blue", lw=2.2, marker="o", ms=3, label="parconv grid",
                        zorder=3),
         "bound": dict(color="black", lw=1.2, ls="--", label="max(B_MI, B_MD)"),
         "batch": dict(color="tab:orange", lw=1.2, ls="-", marker="v", ms=3),
         "spatial": dict(color="tab:green", lw=1.2, ls="-", marker="s", ms=3),
         "input-channel": dict(color="tab:purple", lw=1.2, ls="-", marker="^", ms=3),
         "output-channel": dict(color="tab:red", lw=1.2, ls="-", marker="D", ms=3),
         "measured": dict(color="tab:blue", marker="o", ms=9, mfc="none", mew=1.5, ls="none",
                          label="measured (mpirun)", zorder=4)}


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "legend.fontsize": 8})
    return plt


def log2_axis(ax, ranks) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = [P for P in ranks if P in (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)]
    ax.set_xticks(ticks, [f"{P}" if P < 1024 else f"{P // 1024}K" for P in ticks])
    ax.grid(True, which="major", alpha=0.3)


def factor_axis(ax) -> None:
    """Plain-number labels (0.5, 1, 2, 5, 10, ...) on a log y axis of ratios."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def draw_volumes(ax, rows: list[dict], measured: list[dict] = ()) -> None:
    """parconv, the bound and every peer against P; a peer that cannot use all P ranks is
    continued as a dotted line (it runs on fewer ranks, the rest idle).  Zero volumes (P = 1)
    are not drawn on log axes."""
    for key, style in (("max_volume", STYLE["parconv"]), ("bound", STYLE["bound"])):
        xs = [(r["P"], r[key]) for r in rows if r.get(key)]
        if xs:
            ax.plot(*zip(*xs), **style)
    for family, label in PEERS.items():
        full = [(r["P"], r[f"{family}_volume"]) for r in rows
                if r.get(f"{family}_volume") and r[f"{family}_ranks"] == r["P"]]
        idle = [(r["P"], r[f"{family}_volume"]) for r in rows
                if r.get(f"{family}_volume") and r[f"{family}_ranks"] < r["P"]]
        style = dict(STYLE[family])
        if full:
            ax.plot(*zip(*full), label=label, **style)
        if idle:
            start = [full[-1]] if full and full[-1][0] < idle[0][0] else []
            style.update(ls=":", marker=None, alpha=0.8)
            ax.plot(*zip(*(start + idle)), label=None if full else label, **style)
    xs = [(m["P"], m["measured_volume"]) for m in measured if m["measured_volume"] > 0]
    if xs:
        ax.plot(*zip(*xs), **STYLE["measured"])


def figure_legend(fig, axes) -> None:
    """One legend for all panels, below them, with every label once."""
    handles, labels = {}, []
    for ax in axes:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in handles:
                handles[l] = h
                labels.append(l)
    fig.legend([handles[l] for l in labels], labels, loc="lower center",
               ncol=min(4, len(labels)), frameon=False)


def save(fig, path: str) -> str:
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return os.path.basename(path)
