"""The PNGs of a scenario (matplotlib, Agg): accuracy-<scenario>.png (test accuracy vs time and vs
samples), speed-<scenario>.png (time to target, throughput, MFU bars) and staleness-<scenario>.png
(histograms). matplotlib is imported only here and only when drawing.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from .load import Run
from .stats import has_repeats, median_run

RATIO_OF = {"time_to_target_s": "time_to_target_ratio_vs_sync", "samples_per_s": "throughput_ratio_vs_sync"}


def draw(out: Path, name: str, sc: dict, runs: list[Run], target) -> list[Path]:
    """The three plots of one scenario (runs: its finished runs), written into out."""
    labels = list(sc["algorithms"])
    colors = _colors(labels)
    slug = _slug(name)
    notes = repeat_notes(sc)
    return [
        _plot_accuracy(out / f"accuracy-{slug}.png", name, runs, labels, colors, target, notes.get("accuracy")),
        _plot_speed(out / f"speed-{slug}.png", name, sc, labels, colors, target, notes.get("speed")),
        _plot_staleness(out / f"staleness-{slug}.png", name, runs, labels, colors, pooled=bool(notes)),
    ]


def repeat_notes(sc: dict) -> dict:
    """What the plots' repeat markers mean, {plot: text}; none without repeats (nothing is marked then)."""
    if not has_repeats(sc):
        return {}
    return {"accuracy": "bold line = the median repeat (by time to target), faint lines = the other repeats",
            "speed": "bars = median over repeats, whiskers span min–max"}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "scenario"


def _colors(labels: list) -> dict:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _plot_accuracy(path: Path, name: str, runs: list[Run], labels: list, colors: dict, target,
                   note: str | None) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in labels:
        members = [r for r in runs if r.label == label and r.metrics]
        if not members:
            continue
        bold = median_run(members, target)
        for r in members:
            rows = [m for m in r.metrics if m.get("test_accuracy") is not None]
            if not rows:
                continue
            is_bold = r is bold
            kw = dict(color=colors[label], lw=2.2 if is_bold else 1.0, alpha=1.0 if is_bold else 0.35,
                      label=label if is_bold else None)
            axes[0].plot([m["wall_time_s"] for m in rows], [m["test_accuracy"] for m in rows], **kw)
            epoch = max(1, (r.summary.get("task_info") or {}).get("train_samples") or 1)
            axes[1].plot([m["samples"] / epoch for m in rows], [m["test_accuracy"] for m in rows], **kw)
    for ax, xl in zip(axes, ("training wall-clock time (s)", "epochs (samples processed / training set size)")):
        if target is not None:
            ax.axhline(target, color="gray", ls="--", lw=1)
        ax.set_xlabel(xl)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{name}: test accuracy vs time")
    axes[1].set_title(f"{name}: test accuracy vs samples")
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(loc="lower right", fontsize=8)
    if note:
        fig.text(0.5, 0.005, note, ha="center", fontsize=8, color="gray")
    fig.tight_layout(rect=(0, 0.03 if note else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_speed(path: Path, name: str, sc: dict, labels: list, colors: dict, target, note: str | None) -> Path:
    import matplotlib.pyplot as plt

    algos = sc["algorithms"]
    have_mfu = any(algos[l]["mfu"]["median"] is not None for l in labels)
    have_flops = any(algos[l]["achieved_flops"]["median"] is not None for l in labels)
    if have_mfu:
        third = ("mfu", 100.0, "MFU (% of peak)")
    elif have_flops:
        third = ("achieved_flops", 1e-9, "achieved GFLOP/s (no peak known for MFU)")
    else:
        third = None
    timed = [("time_to_target_s", 1.0, f"time to {target:g} test accuracy (s), lower is better")] \
        if target is not None else []
    panels = timed + [("samples_per_s", 1.0, "throughput (samples/s)")] + ([third] if third else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.45 * len(labels) + 1.8), squeeze=False)
    ys = list(range(len(labels)))[::-1]
    for ax, (key, scale, title) in zip(axes[0], panels):
        drawn = False
        for y, label in zip(ys, labels):
            st = algos[label][key]
            med = st["median"]
            if med is None:
                why = ("no run finished" if algos[label]["completed"] == 0 else
                       "not reached" if key == "time_to_target_s" else "n/a")
                ax.text(0, y, " " + why, va="center", fontsize=8)
                continue
            lo, hi = st["min"], st["max"]
            err = None
            if algos[label]["completed"] > 1 and lo is not None and hi is not None:
                err = [[(med - lo) * scale], [(hi - med) * scale]]
            ax.barh(y, med * scale, color=colors[label], xerr=err, capsize=3)
            drawn = True
            ratio = algos[label].get(RATIO_OF.get(key, ""))
            v = med * scale
            value = " " + (f"{v:,.0f}" if v >= 100 else f"{v:.3g}") + (f" ({ratio:.2f}x sync)" if ratio is not None
                                                                       else "")
            ax.text(med * scale, y, value, va="center", fontsize=8)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels)
        ax.set_ylim(-0.6, len(labels) - 0.4)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.3)
        if drawn:
            ax.set_xlim(left=0)
        else:
            ax.set_xlim(0, 1)
            ax.set_xticks([])
    fig.suptitle(f"{name}: {note}" if note else name, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_staleness(path: Path, name: str, runs: list[Run], labels: list, colors: dict, pooled: bool) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = max(1, len(labels))
    cols = min(3, n)
    rows = math.ceil(n / cols)

    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    hists: dict[str, dict[int, int]] = {}
    for label in labels:
        hist = hists.setdefault(label, {})
        for r in runs:
            if r.label == label:
                for k, v in (r.summary.get("staleness_histogram") or {}).items():
                    hist[int(k)] = hist.get(int(k), 0) + int(v)
    xmax = max([5] + [max(h) for h in hists.values() if h])  # one x range: the panels compare at a glance
    for ax, label in zip(axes.flat, labels):
        hist = hists[label]
        total = sum(hist.values())
        ax.set_xlim(-0.6, xmax + 0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if total:
            xs = sorted(hist)
            ax.bar(xs, [hist[x] / total for x in xs], color=colors[label], width=0.9)
            mean = sum(k * v for k, v in hist.items()) / total
            ax.set_title(f"{label}: mean {mean:.2f}, max {max(xs)}", fontsize=9)
        else:
            why = "no updates recorded" if any(r.label == label for r in runs) else "no finished run"
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
            ax.set_title(label, fontsize=9)
        ax.set_xlabel("staleness (updates by others between read and write)", fontsize=8)
        ax.set_ylabel("fraction of updates", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{name}: staleness histograms" + (" (all repeats)" if pooled else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
