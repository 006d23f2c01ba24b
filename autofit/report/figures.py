"""The report's three figures (matplotlib, imported when drawn): the OOM map, throughput against
micro-batch, and peak memory against speed."""

from __future__ import annotations

import io

from autofit.report.cells import Cell, cells, describe_strategy
from autofit.report.load import OUTCOMES, Run, Wall
from autofit.rundir.best import Winner

PNG_NAMES = ("oom_map.png", "throughput.png", "memory_vs_speed.png")
WINNER_COLOUR = "#d4a017"
BUDGET_COLOUR = "#c62828"
LIMIT_COLOUR = "#ef6c00"


def _colours(run: Run) -> dict[str, str]:
    palette = ["#1f77b4", "#9467bd", "#2ca02c", "#d62728", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#ff7f0e"]
    return {k: palette[i % len(palette)] for i, k in enumerate(run.strategies())}


def _mb_axis(values: set[int]) -> list[int]:
    """Every micro-batch seen plus the powers of two between, so each column is one doubling."""
    lo, hi = min(values), max(values)
    pow2 = {2**i for i in range(0, hi.bit_length() + 1) if lo <= 2**i <= hi}
    return sorted(values | pow2)


def budget_text(run: Run) -> str:
    if run.budget_gib is None:
        return "memory budget not recorded"
    emu = " (emulated cap)" if run.emulated else ""
    return (f"memory budget {run.budget_gib:.1f} GiB{emu}, {run.headroom:.0%} headroom kept free "
            f"\u2192 a config must peak under {run.limit_gib:.2f} GiB")


def fig_oom_map(run: Run):
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    search, grid = cells(run.probes), cells(run.grid)
    walls = {(w.strategy, w.max_token, w.micro_batch): w for w in run.walls}
    allkeys = set(search) | set(grid) | set(walls)
    mbs = _mb_axis({mb for _, _, mb in allkeys})
    tokens = sorted({t for _, t, _ in allkeys})
    strategies = run.strategies()
    fig = Figure(figsize=(11, 1.5 + len(strategies) * (0.62 * len(tokens) + 0.75)), layout="constrained", dpi=110)
    axes = fig.subplots(len(strategies), 1, sharex=True, squeeze=False)[:, 0]
    for ax, k in zip(axes, strategies):
        _draw_map_row(ax, run, k, search, grid, walls, mbs, tokens)
    axes[-1].set_xlabel("micro-batch per GPU (each column doubles it)")
    fig.suptitle(f"OOM map: where each strategy runs out of memory \u2014 {run.gpu}\n{budget_text(run)}",
                 fontsize=11.5, fontweight="bold")
    seen = {c.outcome for c in [*search.values(), *grid.values()]}
    handles = [Patch(facecolor=c, edgecolor="black", label=label)
               for o, (label, _, c) in reversed(OUTCOMES.items()) if o in seen]
    if walls:
        handles.append(Patch(facecolor="white", edgecolor=BUDGET_COLOUR, hatch="///", label="predicted wall (not run)"))
    handles.append(Patch(facecolor="white", edgecolor="#cccccc", label="not probed"))
    if run.grid:
        handles += [Patch(facecolor="#dddddd", edgecolor="black", linewidth=2, label="probed by the search"),
                    Patch(facecolor="#dddddd", edgecolor="none", label="from the exhaustive grid (--grid) only")]
    if run.winner:
        handles.append(Patch(facecolor="white", edgecolor=WINNER_COLOUR, linewidth=3, label="\u2605 winner"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=9, frameon=False)
    return fig


def _draw_map_row(ax, run, k, search, grid, walls, mbs, tokens) -> None:
    from matplotlib.patches import Rectangle

    w = run.winner
    for yi, t in enumerate(tokens):
        for xi, mb in enumerate(mbs):
            key = (k, t, mb)
            c, from_search = search.get(key) or grid.get(key), key in search
            wall = walls.get(key)
            box = dict(xy=(xi - 0.46, yi - 0.42), width=0.92, height=0.84)
            if c is None and wall is None:
                ax.add_patch(Rectangle(**box, facecolor="white", edgecolor="#dddddd", linewidth=0.8))
                if _beyond_wall(k, t, mb, search, grid, walls):
                    ax.text(xi, yi, "beyond the wall", ha="center", va="center", fontsize=8, color="#999999")
                continue
            if c is not None:
                ax.add_patch(Rectangle(**box, facecolor=OUTCOMES[c.outcome][2],
                                       edgecolor="black" if from_search or not run.grid else "none",
                                       linewidth=1.6 if from_search and run.grid else 0.8))
                text = _cell_text(c)
            else:
                text = "not run:\npredicted\n" + (f"{wall.predicted_gib:.1f} GiB" if wall.predicted_gib else "over limit")
            if wall is not None:
                ax.add_patch(Rectangle(**box, facecolor="none", edgecolor=BUDGET_COLOUR, hatch="///", linewidth=1.2))
                if c is not None:
                    text += "\n(as predicted)"
            if w and (w.key, w.max_token, w.micro_batch) == key:
                ax.add_patch(Rectangle(**box, facecolor="none", edgecolor=WINNER_COLOUR, linewidth=3.5))
                text = "\u2605 winner\n" + text
            ax.text(xi, yi, text, ha="center", va="center", fontsize=9, linespacing=1.1,
                    bbox=dict(boxstyle="round,pad=0.15", facecolor="white", alpha=0.8, linewidth=0) if wall else None)
    ax.set_xlim(-0.5, len(mbs) - 0.5)
    ax.set_ylim(-0.5, len(tokens) - 0.5)
    ax.set_xticks(range(len(mbs)), [str(m) for m in mbs])
    ax.set_yticks(range(len(tokens)), [str(t) for t in tokens])
    ax.tick_params(length=0, labelbottom=True)
    ax.set_ylabel("max_token")
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(k, loc="left", fontsize=10, fontweight="bold", pad=21)
    ax.annotate(describe_strategy(k), (0, 1), xycoords="axes fraction", xytext=(0, 4), textcoords="offset points",
                fontsize=9, color="#444444", va="bottom")


def _beyond_wall(k: str, t: int, mb: int, search: dict, grid: dict, walls: dict) -> bool:
    """A shape nobody ran, right of a smaller micro-batch that already failed: it would fail too."""
    failed = [m for (kk, tt, m), c in {**grid, **search}.items() if (kk, tt) == (k, t) and c.outcome != "fits"]
    failed += [m for (kk, tt, m) in walls if (kk, tt) == (k, t)]
    return any(m < mb for m in failed)


def _cell_text(c: Cell) -> str:
    if c.outcome in ("fits", "over"):
        peak = "ran" if c.peak_gib is None else f"{c.peak_gib:.1f} GiB"
        return peak if c.outcome == "fits" else f"{peak}\nover limit"
    return "OOM" if c.outcome == "oom" else c.status


def fig_throughput(run: Run):
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    fig = Figure(figsize=(11, 6), layout="constrained", dpi=110)
    ax = fig.add_subplot()
    colours, t = _colours(run), run.max_token
    search, grid = cells(run.probes), cells(run.grid)
    walls = {w.strategy: w for w in run.walls if w.max_token == t}
    xs_seen: set[int] = set()
    marks: set[str] = set()  # which marker kinds were drawn, so the legend explains only those
    handles = []
    for k in run.strategies():
        col = colours[k]
        if run.grid:
            xs_seen |= _grid_curve(ax, grid, k, t, col)
        mine = sorted((mb, c) for (kk, tt, mb), c in search.items() if kk == k and tt == t)
        if not mine and k not in walls:
            continue
        handles.append(Line2D([], [], color=col, marker="o", label=k))
        xs, wall_kind = _search_curve(ax, mine, walls.get(k), col)
        xs_seen |= xs
        marks |= {c.outcome for _, c in mine} | {wall_kind}
    if run.winner and run.winner.max_token == t:
        w = run.winner
        ax.scatter([w.micro_batch], [w.tokens_per_s], marker="*", s=420, color=WINNER_COLOUR, edgecolor="black", zorder=6)
        ax.annotate(f"winner: {w.tokens_per_s:,.0f} tokens/s", (w.micro_batch, w.tokens_per_s), xytext=(0, 14),
                    textcoords="offset points", ha="center", fontsize=9, fontweight="bold")
    if not xs_seen:
        ax.text(0.5, 0.5, f"no probes at max_token {t}", transform=ax.transAxes, ha="center")
        return fig
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(xs_seen)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(x) for x in sorted(xs_seen)])
    ax.set_xlim(min(xs_seen) / 1.35, max(xs_seen) * 1.35)
    ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.1)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("micro-batch per GPU (log\u2082 scale)")
    ax.set_ylabel("training throughput (tokens / second, higher is better)")
    gb = f", global batch {run.global_batch}" if run.global_batch else ""
    ax.set_title(f"Throughput per strategy at max_token {t}{gb}", fontsize=12, fontweight="bold")
    keys = {"fits": Line2D([], [], ls="none", marker="o", color="grey", label="fits under the limit"),
            "over": Line2D([], [], ls="none", marker="o", markerfacecolor="white", color="grey",
                           label="ran, but over the headroom limit"),
            "measured": Line2D([], [], ls=":", marker="X", color="grey", markersize=9,
                               label="first failure (OOM/error), measured"),
            "predicted": Line2D([], [], ls=":", marker="X", markerfacecolor="white", color="grey", markersize=9,
                                label="wall predicted by the memory model (not run)")}
    handles += [h for kind, h in keys.items() if kind in marks]
    if run.grid:
        handles.append(Line2D([], [], ls="--", color="grey", alpha=0.6, label="exhaustive grid (--grid)"))
    if run.winner:
        handles.append(Line2D([], [], ls="none", marker="*", markersize=14, color=WINNER_COLOUR, markeredgecolor="black",
                              label="winner"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    return fig


def _search_curve(ax, mine: list[tuple[int, Cell]], wall: Wall | None, col: str) -> tuple[set[int], str | None]:
    """One strategy's line, ended by its wall (measured, else predicted) drawn level with the last point."""
    ran = [(mb, c) for mb, c in mine if c.tokens_per_s is not None and c.outcome in ("fits", "over")]
    if ran:
        ax.plot([mb for mb, _ in ran], [c.tokens_per_s for _, c in ran], color=col, lw=2, zorder=3)
        for mb, c in ran:
            ax.scatter([mb], [c.tokens_per_s], s=55, zorder=4, edgecolor=col, linewidth=1.8,
                       facecolor=col if c.outcome == "fits" else "white")
    fails = [(mb, c) for mb, c in mine if c.outcome in ("oom", "error") and (not ran or mb > ran[-1][0])]
    y = ran[-1][1].tokens_per_s if ran else 0.0
    x0 = ran[-1][0] if ran else None
    if fails:
        mb, c = fails[0]
        label, hollow = ("OOM" if c.outcome == "oom" else c.status), False
    elif wall is not None:
        mb, label, hollow = wall.micro_batch, "predicted\nwall", True
    else:
        return {mb for mb, _ in mine}, None
    if x0 is not None:
        ax.plot([x0, mb], [y, y], ls=":", color=col, lw=1.5, zorder=2)
    ax.scatter([mb], [y], marker="X", s=130, zorder=5, edgecolor=col, linewidth=1.8, facecolor="white" if hollow else col,
               clip_on=False)
    if ran:
        ax.annotate(label, (mb, y), xytext=(0, -11), textcoords="offset points", ha="center", va="top", fontsize=8,
                    color=col)
    else:  # nothing ran: the wall is at the first micro-batch, drawn on the axis
        ax.annotate(f"{label} already at micro-batch {mb}", (mb, y), xytext=(10, 4), textcoords="offset points",
                    ha="left", va="bottom", fontsize=8, color=col)
    return {m for m, _ in mine} | {mb}, "predicted" if hollow else "measured"


def _grid_curve(ax, grid: dict, k: str, t: int, col: str) -> set[int]:
    mine = sorted((mb, c) for (kk, tt, mb), c in grid.items() if kk == k and tt == t)
    ran = [(mb, c.tokens_per_s) for mb, c in mine if c.tokens_per_s is not None]
    if ran:
        ax.plot(*zip(*ran), ls="--", color=col, alpha=0.55, lw=1.2, marker=".", zorder=1)
    oom = [mb for mb, c in mine if c.outcome in ("oom", "error")]
    if oom and ran:
        ax.scatter([min(oom)], [ran[-1][1]], marker="x", color=col, alpha=0.55, s=40, zorder=1)
    return {mb for mb, _ in mine}


def fig_memory_speed(run: Run):
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(11, 6.2), layout="constrained", dpi=110)
    ax = fig.add_subplot()
    colours = _colours(run)
    ok = [p for p in run.probes if p.status == "ok" and p.peak_gib is not None and p.tokens_per_s is not None]
    if not ok:
        ax.text(0.5, 0.5, "no probe ran to completion", transform=ax.transAxes, ha="center")
        return fig
    grid_ok = [p for p in run.grid if p.status == "ok" and p.max_token == run.max_token
               and p.peak_gib is not None and p.tokens_per_s is not None]
    for p in grid_ok:
        ax.scatter([p.peak_gib], [p.tokens_per_s], s=14, color=colours[p.strategy], alpha=0.35, zorder=1)
    for p in ok:
        ax.scatter([p.peak_gib], [p.tokens_per_s], s=60, zorder=3, edgecolor=colours[p.strategy], linewidth=1.8,
                   facecolor=colours[p.strategy] if p.outcome == "fits" else "white")
    w = run.winner
    labelled: set[tuple] = {(w.key, w.micro_batch, w.max_token)} if w else set()
    for p in ok:  # one label per cell: repeats of a shape sit on top of each other
        key = (p.strategy, p.micro_batch, p.max_token)
        if key not in labelled:
            labelled.add(key)
            tag = f"mb {p.micro_batch}" + (f", T {p.max_token}" if p.max_token != run.max_token else "")
            ax.annotate(tag, (p.peak_gib, p.tokens_per_s), xytext=(7, -3), textcoords="offset points", fontsize=8,
                        color="#333333", va="top")
    xmax = max([p.peak_gib for p in ok + grid_ok] + [run.budget_gib or 0]) * 1.08
    handles = [Line2D([], [], ls="none", marker="o", color=colours[k], label=k)
               for k in run.strategies() if any(p.strategy == k for p in ok)]
    if any(p.outcome == "over" for p in ok):
        handles += [Line2D([], [], ls="none", marker="o", color="grey", label="fits under the limit"),
                    Line2D([], [], ls="none", marker="o", markerfacecolor="white", color="grey",
                           label="ran, but over the headroom limit")]
    handles += _budget_lines(ax, run, xmax)
    if grid_ok:
        handles.append(Line2D([], [], ls="none", marker="o", markersize=4, color="grey", alpha=0.4,
                              label=f"exhaustive grid probes at max_token {run.max_token}"))
    ymax = max(p.tokens_per_s for p in ok + grid_ok) * 1.15
    if w:
        _mark_winner(ax, w)
        handles.append(Line2D([], [], ls="none", marker="*", markersize=14, color=WINNER_COLOUR, markeredgecolor="black",
                              label=f"winner: {w.key}, micro-batch {w.micro_batch}\n"
                                    f"{w.tokens_per_s:,.0f} tokens/s at {w.peak_gib:.2f} GiB"))
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("peak memory per GPU (GiB; device-level peak, what the budget is compared with)")
    ax.set_ylabel("training throughput (tokens / second)")
    ax.set_title(f"Every probe that ran: peak memory against speed ({run.gpu})", fontsize=12, fontweight="bold")
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    return fig


def _budget_lines(ax, run: Run, xmax: float) -> list:
    """The limit (dashed) and the budget (solid) as vertical lines, the zones past them shaded."""
    from matplotlib.lines import Line2D

    if run.budget_gib is None:
        return []
    ax.axvline(run.budget_gib, color=BUDGET_COLOUR, lw=2)
    ax.axvline(run.limit_gib, color=LIMIT_COLOUR, lw=2, ls="--")
    ax.axvspan(run.limit_gib, run.budget_gib, color=LIMIT_COLOUR, alpha=0.12, lw=0)
    ax.axvspan(run.budget_gib, xmax, color=BUDGET_COLOUR, alpha=0.08, lw=0)
    return [Line2D([], [], color=BUDGET_COLOUR, lw=2, label=f"memory budget {run.budget_gib:.1f} GiB (OOM beyond)"),
            Line2D([], [], color=LIMIT_COLOUR, lw=2, ls="--",
                   label=f"headroom limit {run.limit_gib:.2f} GiB ({run.headroom:.0%} kept free)")]


def _mark_winner(ax, w: Winner) -> None:
    # Above the star is free: a faster point there would have fit and won instead (details in the legend).
    ax.scatter([w.peak_gib], [w.tokens_per_s], marker="*", s=480, color=WINNER_COLOUR, edgecolor="black", zorder=6)
    ax.annotate("winner", (w.peak_gib, w.tokens_per_s), xytext=(0, 13), textcoords="offset points", ha="center",
                va="bottom", fontsize=9, fontweight="bold", zorder=7)


def render_figures(run: Run) -> dict[str, bytes]:
    """PNG bytes by file name."""
    out = {}
    for name, make in zip(PNG_NAMES, (fig_oom_map, fig_throughput, fig_memory_speed)):
        buf = io.BytesIO()
        make(run).savefig(buf, format="png")
        out[name] = buf.getvalue()
    return out


