"""`asyncsgd report DIR [DIR...]`: tables and plots that compare runs, from their run records.

A DIR is a run directory (summary.json + metrics.jsonl, written by `asyncsgd train` or by a
bench), a bench output directory (results.json + runs/), or a folder holding run directories
somewhere below it. The report is what `asyncsgd bench` writes too (bench calls this package):

- results.json: per scenario and algorithm, median and min/max over repeats of time to the
  target accuracy, final test accuracy, samples/s, achieved FLOP/s and MFU, staleness mean and
  max, bytes sent; ratios against sync and hogwild (>1: this algorithm is better); run dirs.
- report.md: a table per scenario at the top (who wins, by how much), then the plots.
- accuracy-<scenario>.png (test accuracy vs wall-clock time and vs samples), speed-<scenario>.png
  (time to target, throughput, MFU), staleness-<scenario>.png (histograms).

Runs given as plain directories are grouped into scenarios by task (and model); runs of one
algorithm whose settings differ (workers=2 vs 4, ...) get labels naming the difference, runs with
equal settings are repeats of one another.

Modules: load (run records -> Run), stats (numbers, results.json), markdown (report.md, render),
plots (PNGs), command (the CLI: add_arguments, main).
"""

from .command import add_arguments, main
from .load import Run, collect, load_bench, load_run
from .markdown import render
from .stats import METRICS, REFERENCES, SCHEMA, build_results, label_order, run_metrics, ttt_stats

__all__ = ["METRICS", "REFERENCES", "SCHEMA", "Run", "add_arguments", "build_results", "collect", "label_order",
           "load_bench", "load_run", "main", "render", "run_metrics", "ttt_stats"]
