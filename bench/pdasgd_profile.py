#!/usr/bin/env python
"""Where pdasgd's threads spend their time: a py-spy raw profile (--threads --idle) aggregated by
category (bookkeeping, autograd engine, waiting, module forward, LayerSGD.update, ...).

    py-spy record -f raw --threads --idle --subprocesses -o prof.txt -- python -m asyncsgd train --progress none
    python bench/pdasgd_profile.py prof.txt

(--subprocesses: the default's worker processes; without it only one-process runs are seen).
The last lines count the samples of every thread the run named (pdasgd's, and the exchange's
sender, waiter and receiver threads of dasgd and layup), all of them and those outside a blocking
call: recorded without --idle, the second column says which threads use the CPU (docs/layup.md,
"Where a replica's time goes").

or of the engine alone: `... -- python bench/pipeline_ceiling.py "engine 1F:1B"`.
"""
import re, sys, collections
BOOK = ("Decoupled.version_of", "Decoupled.versions ", "Decoupled.bump", "Decoupled.book",
        "WorkerContext.record ", "WorkerContext.record_staleness", "WorkerContext.lr ",
        "WorkerContext.maybe_snapshot", "WorkerContext.global_samples", "LocalLaunch.global_samples",
        "_version_of", "_versions", "Counters.")
import os
SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "asyncsgd", "algorithms", "pdasgd", "threads.py")
WAIT_LINES = {f"threads.py:{n}" for n, l in enumerate(open(SRC), 1) if "q.get(timeout" in l or "slots.get(timeout" in l}
def cat(frames):
    if not frames:  # a sample py-spy took of the thread with no Python frame on it
        return "other"
    leaf = frames[-1]
    if leaf.startswith("Decoupled.") and any(w + ")" in leaf for w in WAIT_LINES): return "wait"
    for f in reversed(frames):
        fn = f.split(" (")[0] + " "
        if fn.startswith("LayerSGD.update"): return "LayerSGD.update"
        if fn.startswith("WorkerContext.snapshot") or fn.startswith("WorkerContext.copy_checkpoint"): return "snapshot/checkpoint"
        if any(fn.startswith(b.strip() + " ") or fn.startswith(b) for b in BOOK): return "bookkeeping"
        if fn.startswith(("ReadingReplica._enter", "ReadingReplica.__call__", "Decoupled._leaf_grad")): return "hooks"
        if "torch/nn/modules" in f or fn.startswith("Module._call_impl"): return "module forward"
        if fn.startswith("grad ") and "autograd" in f: return "autograd engine"
        if fn.startswith(("Condition.wait", "Semaphore.acquire", "Queue.get", "Queue.put", "Event.wait")): return "wait"
        if fn.startswith(("on_grad", "apply", "Decoupled.backward", "Decoupled._forward", "WorkerContext.fetch", "BatchPlan")): return "other pdasgd"
    return "other"
tot = collections.Counter(); funcs = collections.Counter(); roles = collections.defaultdict(collections.Counter)
# every asyncsgd and pdasgd thread's samples, ranks and peers as N: [all, working]. Working: the
# innermost frame is not a blocking call. py-spy without --idle still recorded threads blocked in
# one here (in a container it may not see a thread's state), so only the rest is work.
by_thread = collections.defaultdict(lambda: [0, 0])
BLOCKING = ("Condition.wait ", "Event.wait ", "Semaphore.acquire ", "Queue.get ", "recv ", "irecv ", "wait ")
if sys.argv[1:] in (["-h"], ["--help"]):
    print(__doc__)
    sys.exit(0)
if len(sys.argv) != 2 or not os.path.isfile(sys.argv[1]):
    print(f"pdasgd_profile.py: {' '.join(sys.argv[1:]) or 'no argument'!r} is not accepted; accepted: one file, "
          "a py-spy raw profile (py-spy record -f raw ...)", file=sys.stderr)
    sys.exit(2)
for line in open(sys.argv[1]):
    line = line.rstrip("\n")
    m = re.match(r"(.*) (\d+)$", line)
    if not m: continue
    stack, n = m.group(1), int(m.group(2))
    frames = stack.split(";")
    # with --subprocesses each stack starts with its processes' frames (whose command lines may hold
    # ';'): the thread's frame is the first "thread (" one
    start = next((i for i, f in enumerate(frames) if f.startswith("thread (")), 0)
    frames = frames[start:]
    stack = ";".join(frames)
    name = re.sub(r"^thread \(\d+\): ", "", frames[0])
    if name.startswith(("pdasgd-", "asyncsgd-")):
        counts = by_thread[re.sub(r"\d+", "N", name)]
        counts[0] += n
        blocked = frames[-1].split("(")[0].startswith(BLOCKING) or name == "asyncsgd-watch-launcher"  # its
        counts[1] += 0 if blocked else n  # time.sleep between two getppid() calls, a call py-spy shows no frame for
    if "pdasgd-" not in frames[0]: continue
    thread, frames = frames[0], frames[1:]
    c = cat(frames); tot[c] += n
    # the thread's name: pdasgd-w<rank>-forward-<i>, -backward-<i>, or -turns (both, on one thread)
    role = next((r for r in ("forward", "backward", "turns") if f"-{r}" in thread), "other")
    roles[role]["wait" if c == "wait" else "active"] += n
    for f in set(fr.split(" (")[0] for fr in frames): funcs[f] += n
T = sum(tot.values()); A = T - tot["wait"]
print(f"pdasgd thread samples: {T} (active, not waiting: {A})")
for c, n in tot.most_common():
    print(f"  {c:22s} {n:6d}  {100*n/T:5.1f}% of all  " + ("" if c == "wait" else f"{100*n/A:5.1f}% of active"))
for role, c in sorted(roles.items()):
    print(f"  {role} threads: {100 * c['wait'] / max(1, sum(c.values())):.1f}% of their samples waiting")
print("inclusive by function (top 25, % of all pdasgd samples):")
for f, n in funcs.most_common(25):
    print(f"  {100*n/T:5.1f}%  {f}")
print("samples by thread, all and working (not in a blocking call); record without --idle:")
working = sum(w for _, w in by_thread.values())
for name, (n, w) in sorted(by_thread.items(), key=lambda kv: -kv[1][1]):
    print(f"  {n:6d} {w:6d}  {100 * w / max(1, working):5.1f}% of the working samples  {name}")
