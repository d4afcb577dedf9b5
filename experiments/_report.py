"""The headline tables (best peer over parconv at P = 64, 512, 4096) and the generated sections
of experiments/README.md."""

from __future__ import annotations

import os

from _common import HERE, write_text


def headline(rows: list[dict], ranks=(64, 512, 4096)) -> list[dict]:
    """Per layer and P in `ranks`: best peer volume / parconv's, on all P ranks and with idle
    ranks allowed (the peer on as many ranks as it can use)."""
    out = {}
    for r in rows:
        if r["P"] not in ranks:
            continue
        line = out.setdefault(r["layer"], {"layer": r["layer"]})
        line[f"P{r['P']}_peer"] = r["best_peer"]
        line[f"P{r['P']}_factor"] = r["best_peer_over_parconv"]
        line[f"P{r['P']}_idle_peer"] = (f"{r['best_idle_peer']}@{r['best_idle_peer_ranks']}"
                                        if r["best_idle_peer"] else None)
        line[f"P{r['P']}_idle_factor"] = r["best_idle_peer_over_parconv"]
    return list(out.values())


def headline_markdown(lines: list[dict], ranks=(64, 512, 4096)) -> str:
    """The headline table: 'factor (peer)' per P, and the idle-allowed factor after a slash."""
    head = ("| layer | " + " | ".join(f"P = {P}" for P in ranks) + " |\n|---|"
            + "---|" * len(ranks) + "\n")
    body = ""
    for line in lines:
        cells = []
        for P in ranks:
            f, peer = line.get(f"P{P}_factor"), line.get(f"P{P}_peer")
            fi, idle = line.get(f"P{P}_idle_factor"), line.get(f"P{P}_idle_peer")
            same = f"{f:.2f} ({peer})" if f is not None else "none on all P"
            # the idle-allowed peer only when it moves visibly fewer bytes than the same-P one
            other = f" / {fi:.2f} ({idle})" if fi is not None and idle and not idle.endswith(
                f"@{P}") and (f is None or fi < f - 0.005) else ""
            cells.append(same + other)
        body += f"| {line['layer']} | " + " | ".join(cells) + " |\n"
    return head + body


README = os.path.join(HERE, "README.md")


def stats(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return f"{values[0]:.2f} / {values[len(values) // 2]:.2f} / {values[-1]:.2f}"


def headline_summary(lines: list[dict], ranks=(64, 512, 4096)) -> str:
    """Min / median / max over all layers of both headline factors, per P."""
    text = ("| P | layers | best peer on all P ranks: min / median / max (layers where one "
            "exists) | best peer, idle ranks allowed: min / median / max |\n|---|---|---|---|\n")
    for P in ranks:
        same = [l[f"P{P}_factor"] for l in lines if l.get(f"P{P}_factor") is not None]
        idle = [l[f"P{P}_idle_factor"] for l in lines if l.get(f"P{P}_idle_factor") is not None]
        text += f"| {P} | {len(lines)} | {stats(same)} ({len(same)}) | {stats(idle)} |\n"
    return text


def human_bytes(v) -> str:
    if v is None:
        return "-"
    v = float(v)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TiB"  # pragma: no cover


def provenance_line(meta: dict) -> str:
    return (f"Recorded at git revision `{(meta['git_revision'] or '?')[:12]}` on "
            f"`{meta['hostname']}` ({meta['cores']} cores, {meta['mpi_library']}), "
            f"{meta['started_utc']}.")


def update_readme(args, section: str, text: str) -> bool:
    """Replace the text between ``<!-- begin SECTION -->`` and ``<!-- end SECTION -->`` in
    experiments/README.md, only for a full run into the default folder (so the README always
    shows the recorded results).  Returns whether it did."""
    if args.quick or args.out or not os.path.exists(README):
        return False
    with open(README, encoding="utf-8") as fh:
        readme = fh.read()
    begin, end = f"<!-- begin {section} -->", f"<!-- end {section} -->"
    if begin not in readme or end not in readme:
        return False
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    write_text(README, f"{head}{begin}\n{text.rstrip()}\n{end}{tail}")
    return True
