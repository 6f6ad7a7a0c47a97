"""Turn `pytest benchmarks/ --benchmark-only --benchmark-json=BENCH.json` into
a speed-up table and bar chart: torch's median over cnnkern's, per benchmark
group, so more than 1 means cnnkern is faster.

pytest-benchmark's own report lists times; the question the benchmarks answer
is the ratio per pair, and whether it holds up across shapes (the geometric
mean per pass).

    python scripts/bench_table.py BENCH.json [--png out.png] [--md out.md]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict

PASS_ORDER = ("forward", "forward+backward", "train step", "overhead forward", "overhead forward+backward")


def load_pairs(path: str):
    """{pass: {group: {impl: median seconds}}}, keeping only groups with torch and at least one cnnkern impl."""
    with open(path) as f:
        data = json.load(f)
    passes: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "impl" not in info or "pass" not in info:
            continue
        passes[info["pass"]].setdefault(bench["group"], {})[info["impl"]] = bench["stats"]["median"]
    pairs = {}
    for pass_, groups in passes.items():
        kept = {g: t for g, t in groups.items() if "torch" in t and any(i.startswith("cnnkern-") for i in t)}
        if kept:
            pairs[pass_] = kept
    order = {p: i for i, p in enumerate(PASS_ORDER)}
    return dict(sorted(pairs.items(), key=lambda kv: order.get(kv[0], len(order))))


def fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def geomean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def rows(pairs, backends):
    """(pass, label, torch time, {backend: (time, ratio)}) per group, then a geometric-mean row per pass:
    (pass, label, None, {backend: (number of pairs, mean ratio)})."""
    for pass_, groups in pairs.items():
        ratios = defaultdict(list)
        for group, times in groups.items():
            cells = {}
            for b in backends:
                t = times.get(f"cnnkern-{b}")
                if t is not None:
                    cells[b] = (t, times["torch"] / t)
                    ratios[b].append(times["torch"] / t)
            yield pass_, group, times["torch"], cells
        yield pass_, f"geometric mean, {pass_}", None, {b: (len(r), geomean(r)) for b, r in ratios.items()}


def markdown(pairs, backends) -> str:
    head = ["pass", "group", "torch median"]
    for b in backends:
        head += [f"cnnkern-{b} median", f"ratio {b}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for pass_, label, torch_time, cells in rows(pairs, backends):
        geo = torch_time is None
        cols = [pass_, f"**{label}**" if geo else label.replace("|", "\\|"), "" if geo else fmt_time(torch_time)]
        for b in backends:
            t, r = cells.get(b, (None, None))
            if r is None:
                cols += ["", ""]
            elif geo:
                cols += [f"n={t}", f"**{r:.2f}**"]
            else:
                cols += [fmt_time(t), f"{r:.2f}"]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n\nratio = torch time / cnnkern time (median of rounds); > 1: cnnkern is faster.\n"


def chart(pairs, backends, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    table = list(rows(pairs, backends))
    labels = [label for _, label, _, _ in table]
    height = 0.8 / len(backends)
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.3 * len(table) * len(backends) ** 0.5))
    for k, b in enumerate(backends):
        ys, xs = [], []
        for i, (_, _, _, cells) in enumerate(table):
            if b in cells:
                ys.append(i + (k - (len(backends) - 1) / 2) * height)
                xs.append(cells[b][1])
        # From 1.0, so on the log axis a speed-up and a slow-down of the same factor look alike.
        bars = ax.barh(ys, [x - 1 for x in xs], height=height, left=1, label=f"cnnkern-{b}")
        ax.bar_label(bars, labels=[f"{x:.2f}" for x in xs], fontsize=6, padding=2)
    ax.set_yticks(range(len(table)))
    ax.set_yticklabels(labels, fontsize=7)
    for tick, (_, _, torch_time, _) in zip(ax.get_yticklabels(), table):
        if torch_time is None:
            tick.set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.15)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("torch time / cnnkern time (log scale; > 1: cnnkern faster)")
    ax.set_title("cnnkern against torch.nn, median per benchmark group")
    if len(backends) > 1:
        ax.legend()
    # "tight" grows the picture to the long group names instead of cutting them off.
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="pytest-benchmark JSON (--benchmark-json) of `pytest benchmarks/`")
    parser.add_argument("--png", help="write a bar chart of the ratios here")
    parser.add_argument("--md", help="write the markdown table here as well")
    args = parser.parse_args(argv)
    pairs = load_pairs(args.json)
    if not pairs:
        sys.exit(f"bench_table: no torch/cnnkern pairs in {args.json}: expected the JSON of "
                 "`pytest benchmarks/ --benchmark-only --benchmark-json=FILE`, with a torch and a cnnkern "
                 "result (extra_info impl and pass) in the same group")
    backends = sorted({i.removeprefix("cnnkern-") for groups in pairs.values() for times in groups.values()
                       for i in times if i.startswith("cnnkern-")})
    table = markdown(pairs, backends)
    print(table, end="")
    if args.md:
        with open(args.md, "w") as f:
            f.write(table)
    if args.png:
        chart(pairs, backends, args.png)
        print(f"chart: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
