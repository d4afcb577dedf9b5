# python experiments/im2col_matmul.py [--quick] [--force] [--out DIR]
"""Direct convolution against im2col + a distributed matrix multiply, bytes of the busiest rank.

For every ResNet-50 and VGG-16 layer at batch 32 and every power of two P up to 65536 (predicted,
no MPI): parconv's direct grid and its bound max(B_MI, B_MD), next to the matrix multiply
Y (m x n) = A (m x k) B (k x n) with m = N H W, k = C R S, n = K, where A is the im2col matrix
(see experiments/_matmul.py for the exact data layout): the busiest rank's bytes on the best 3-D
grid p1 x p2 x p3 (and the best 2-D grid, one factor 1), computed exactly here for every rank,
and the matmul's tight memory-independent bound (Al Daas, Ballard, Grigori, Kumar, Rouse, SPAA
2022, weighted by bytes per element).  Two cross-checks are recorded in manifest.json: the best
3-D grid's bytes equal parconv's prediction for the same grid of the matmul written as a 1 x 1
convolution, and the closed-form bound equals parconv's B_MI of that 1 x 1 convolution.

Also writes sequential.csv: the one-processor bounds of theory.md section 3 for the direct
convolution (parconv.bounds.sequential_bound) and for the im2col route (parconv.bounds.im2col_bound)
at fast memories of 64 KiB, 256 KiB and 1 MiB.

Writes into experiments/results/im2col_matmul/ (refuses to replace a recorded result unless
--force): im2col.{csv,json}, sequential.{csv,json}, im2col_matmul.png, im2col_factor.png and
manifest.json.  --quick: 3 layers, P in {1, 4, 64, 1024}.  Predicted only (--no-measure is
accepted and changes nothing).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
import _peers as PE  # noqa: E402
import _plots as PL  # noqa: E402
import _report as R  # noqa: E402
import _matmul as MM  # noqa: E402
from parconv.bounds import im2col_bound, parallel_bounds, sequential_bound  # noqa: E402
from parconv.errors import ParconvError  # noqa: E402
from parconv.layers import get_layer, layer_names  # noqa: E402
from parconv.plan import make_plan  # noqa: E402

STUDY = "im2col_matmul"
QUICK = {"layers": ["resnet50.conv1", "resnet50.layer1.0.conv2", "resnet50.layer4.0.conv2"],
         "ranks": [1, 4, 64, 1024]}
#: a memory per rank no grid exceeds (the memory-independent setting)
UNLIMITED = 1 << 50
SEQUENTIAL_MEMORY = {"64KiB": 64 << 10, "256KiB": 256 << 10, "1MiB": 1 << 20}


def row_for(spec, P: int) -> tuple[dict, dict]:
    """One row and its cross-check results.  The direct plan uses the planner's default memory
    per rank; where no grid fits it (the 224 x 224 VGG-16 layers at batch 32 on one rank need
    1.7-1.9 GB) it is planned without a memory limit, like the matmul, and the row says so in
    ``direct_memory``."""
    try:
        plan = make_plan(spec, P)
    except ParconvError as exc:
        if "memory too small" not in str(exc):
            raise
        plan = make_plan(spec, P, memory=UNLIMITED)
    m, n, k = MM.im2col_dims(spec)
    p = MM.element_bytes(spec)
    moved, final = MM.volume_bytes(spec)
    grid3, vol3 = MM.best_grid(m, n, k, P, moved, p_final=final)
    grid2, vol2 = MM.best_grid(m, n, k, P, moved, two_d=True, p_final=final) or (None, None)
    bound = MM.tight_bound(m, n, k, P, p)
    gemm = MM.gemm_spec(spec)
    # memory-independent: the matmul's blocks may exceed the planner's default 1 GiB per rank
    parconv_vol = make_plan(gemm, P, memory=UNLIMITED, grid=(*grid3, 1, 1)).max_volume
    parconv_bound = parallel_bounds(gemm, P).B_MI
    row = {"layer": spec.name, "batch": spec.batch, "P": P,
           "kernel": "x".join(map(str, spec.kernel_size)), "m": m, "n": n, "k": k,
           "direct_memory": plan.memory if plan.memory < UNLIMITED else "unlimited",
           "direct_grid": C.grid_text(plan.dims.as_tuple()), "direct_volume": plan.max_volume,
           "direct_bound": plan.bound.value,
           "matmul_grid": "x".join(map(str, grid3)), "matmul_volume": vol3,
           "matmul_2d_grid": None if grid2 is None else "x".join(map(str, grid2)),
           "matmul_2d_volume": vol2, "matmul_bound": bound,
           "matmul_over_direct": vol3 / plan.max_volume if plan.max_volume else None,
           "matmul_bound_over_direct_bound": (bound / plan.bound.value
                                              if plan.bound.value > 0 else None)}
    checks = {"grid_equal": parconv_vol == vol3,
              "bound_close": abs(parconv_bound - bound) <= 1e-6 * max(1.0, bound),
              "bound_le_volume": bound <= vol3 * (1 + 1e-9) + 1e-6}
    return row, checks


def sequential_rows(layers, batch) -> list[dict]:
    rows = []
    for name in C.progress(layers, "sequential"):
        spec = get_layer(name, batch=batch)
        row = {"layer": name, "batch": batch}
        for label, M in SEQUENTIAL_MEMORY.items():
            direct = sequential_bound(spec, M).value
            row[f"direct_{label}"] = direct
            row[f"im2col_{label}"] = im2col_bound(spec, M)
            row[f"im2col_over_direct_{label}"] = row[f"im2col_{label}"] / direct
        rows.append(row)
    return rows


def plot(out: str, rows: list[dict], layers: list[str]) -> list[str]:
    plt = PL.pyplot()
    shown = [n for n in C.REPRESENTATIVE if n in layers] or layers[:8]
    cols = min(4, len(shown))
    nrows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, squeeze=False, figsize=(3.6 * cols, 3.1 * nrows + 0.8))
    ranks = sorted({r["P"] for r in rows})
    lines = (("direct_volume", dict(PL.STYLE["parconv"], label="direct conv, parconv grid")),
             ("direct_bound", dict(PL.STYLE["bound"], label="direct conv bound max(B_MI, B_MD)")),
             ("matmul_volume", dict(color="tab:orange", lw=1.8, marker="s", ms=3,
                                    label="im2col + matmul, best 3-D grid")),
             ("matmul_2d_volume", dict(color="tab:green", lw=1.0, ls="-.",
                                       label="im2col + matmul, best 2-D grid")),
             ("matmul_bound", dict(color="tab:orange", lw=1.0, ls=":",
                                   label="matmul tight bound (Al Daas et al.)")))
    for ax, name in zip(axes.flat, shown):
        mine = [r for r in rows if r["layer"] == name]
        for key, style in lines:
            pts = [(r["P"], r[key]) for r in mine if r.get(key)]
            if pts:
                ax.plot(*zip(*pts), **style)
        PL.log2_axis(ax, ranks)
        ax.set(title=name, xlabel="P (ranks)", ylabel="busiest rank's bytes")
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    PL.figure_legend(fig, axes.flat)
    fig.suptitle(f"Direct convolution against im2col + distributed matmul, batch "
                 f"{rows[0]['batch']}")
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    files = [PL.save(fig, os.path.join(out, "im2col_matmul.png"))]
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in layers:
        pts = [(r["P"], r["matmul_over_direct"]) for r in rows
               if r["layer"] == name and r["matmul_over_direct"]]
        if pts:
            ax.plot(*zip(*pts), color="tab:blue" if name.startswith("resnet") else "tab:red",
                    lw=0.8, alpha=0.6)
    ax.plot([], [], color="tab:blue", label="ResNet-50 layer")
    ax.plot([], [], color="tab:red", label="VGG-16 layer")
    ax.axhline(1, color="black", lw=0.8)
    PL.log2_axis(ax, ranks)
    PL.factor_axis(ax)
    ax.set(xlabel="P (ranks)", ylabel="im2col matmul bytes / direct conv bytes",
           title="Busiest rank: best im2col matmul grid against parconv's direct grid")
    ax.legend()
    fig.tight_layout()
    files.append(PL.save(fig, os.path.join(out, "im2col_factor.png")))
    plt.close(fig)
    return files


def readme_text(rows: list[dict], meta: dict, ranks=(64, 512, 4096)) -> str:
    """The README's generated section: ratios over every layer and the representative rows."""
    text = R.provenance_line(meta) + "\n\n"
    text += ("| P | kernel | layers | im2col matmul bytes / direct: min / median / max | "
             "matmul bound / direct bound: min / median / max |\n|---|---|---|---|---|\n")
    for P in ranks:
        for kind, test in (("1x1", lambda r: r["kernel"] == "1x1"),
                           ("3x3, 7x7", lambda r: r["kernel"] != "1x1")):
            at = [r for r in rows if r["P"] == P and test(r)]
            volume = [r["matmul_over_direct"] for r in at if r["matmul_over_direct"]]
            bound = [r["matmul_bound_over_direct_bound"] for r in at
                     if r["matmul_bound_over_direct_bound"]]
            text += f"| {P} | {kind} | {len(at)} | {R.stats(volume)} | {R.stats(bound)} |\n"
    text += ("\n| layer | P | direct grid | direct bytes | matmul grid (m x n x k) | matmul "
             "bytes | matmul / direct |\n|---|---|---|---|---|---|---|\n")
    for r in rows:
        if r["layer"] in C.REPRESENTATIVE and r["P"] in ranks:
            text += (f"| {r['layer']} | {r['P']} | {r['direct_grid']} | {r['direct_volume']} | "
                     f"{r['matmul_grid']} | {r['matmul_volume']} | "
                     f"{r['matmul_over_direct']:.2f} |\n")
    return text


def main(argv=None) -> int:
    p = C.parser(__doc__, STUDY)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--layers", help="comma-separated (default: every ResNet-50 and VGG-16 layer)")
    p.add_argument("--ranks", help="comma-separated P (default 1,2,4,..,65536)")
    args = p.parse_args(argv)
    q = QUICK if args.quick else {}
    layers = args.layers.split(",") if args.layers else q.get(
        "layers", layer_names("resnet50") + layer_names("vgg16"))
    ranks = [int(v) for v in args.ranks.split(",")] if args.ranks else q.get(
        "ranks", C.PREDICTED_RANKS)
    try:
        out = C.result_folder(args, STUDY)
        meta = C.provenance([os.path.relpath(__file__, C.REPO), *(argv or sys.argv[1:])],
                            args.mpirun)
        rows, checks = [], {"grid_equal": 0, "bound_close": 0, "bound_le_volume": 0}
        for name, P in C.progress([(n, P) for n in layers for P in ranks], "im2col"):
            row, check = row_for(get_layer(name, batch=args.batch), P)
            rows.append(row)
            for key, ok in check.items():
                if not ok:
                    raise C.StudyError(f"{name} P={P}: check {key} failed ({row})")
                checks[key] += 1
        checks["direct_bound_le_volume_rows"] = PE.check_bound(
            [{**r, "bound": r["direct_bound"], "max_volume": r["direct_volume"]} for r in rows])
        files = C.write_table(out, "im2col", rows)
        files += C.write_table(out, "sequential", sequential_rows(layers, args.batch))
        files += plot(out, rows, layers)
        C.write_manifest(out, meta, [], checks, files)
        R.update_readme(args, "im2col-headline", readme_text(rows, meta))
    except C.StudyError as exc:
        print(f"{STUDY}: {exc}", file=sys.stderr)
        return 2
    at = [r for r in rows if r["P"] in (64, 512, 4096) and r["matmul_over_direct"]]
    for P in sorted({r["P"] for r in at}):
        f = sorted(r["matmul_over_direct"] for r in at if r["P"] == P)
        print(f"P={P}: im2col matmul / direct over {len(f)} layers: min {f[0]:.2f}, median "
              f"{f[len(f) // 2]:.2f}, max {f[-1]:.2f}")
    print(f"{STUDY}: {len(rows)} rows, checks {checks}, results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
