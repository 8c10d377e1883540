"""The launcher: builds the run, starts and owns the worker processes, writes the run record.

Ownership (the concurrency contract):
- run() starts every worker process (torch.multiprocessing, spawn) and is the only one that
  joins or kills them. Workers that end normally are joined; on an error, a divergence, a
  stall (no progress for --stall-timeout seconds) or Ctrl-C, run() sets board.stop, gives the
  workers STOP_GRACE_S to leave their loops, then terminates and finally kills them.
- A one-process algorithm without torch.distributed runs in this process (no spawn cost; the
  Python API can then take unpicklable model factories); the monitor then runs in a thread
  that run() joins.
- The monitor reads the board (progress, checkpoints to write); it never steers training.
Wall-clock time counts training only: from the moment every worker is ready to the moment
the last one finishes. Process start-up, data generation and evaluation are outside it.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import queue
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp

from . import records
from .algorithms import get_algorithm
from .board import Board, ClaimLock
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig, default_out_dir, validate
from .engine import StateFlattener, WorkerContext, WorkerSpec, set_threads
from .errors import AsyncSGDError, ConfigError, DivergedError, WorkerError
from .exchange.transport import brief as _brief, peer_gone as _peer_gone

STOP_GRACE_S = 10.0
POLL_S = 0.05


def resolve_device(cfg: RunConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_main(rank: int, spec: WorkerSpec) -> None:
    """Entry point of every worker (process or in-process): runs the algorithm's schedule."""
    algo = get_algorithm(spec.algorithm).for_config(spec.config)  # pdasgd: shared model or replicas
    board = spec.board
    group = False
    job = None  # torchrun: this rank's handle on the job's store (end-of-run agreement)
    if spec.errors is not None and not isinstance(spec.errors, queue.Queue):
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle
    try:
        torchrun = spec.extra.get("launch") == "torchrun"
        set_threads(spec, spec.extra.get("local_world_size", spec.world_size))
        if spec.device.startswith("cuda"):
            local = spec.extra.get("local_rank", rank)
            torch.cuda.set_device(local % torch.cuda.device_count())
            spec.device = f"cuda:{local % torch.cuda.device_count()}"
        if algo.distributed:
            import datetime
            import torch.distributed as dist
            # nccl needs one GPU per rank; ranks sharing a GPU all-reduce CUDA tensors through gloo
            one_gpu_each = spec.device.startswith("cuda") and spec.world_size <= torch.cuda.device_count()
            backend = "nccl" if one_gpu_each else "gloo"
            timeout = datetime.timedelta(seconds=max(60.0, spec.config.stall_timeout))
            if torchrun:  # the same store env:// would make, kept: the end of the run is agreed on through it
                job = TorchrunJob(rank, spec.world_size, timeout)
                job.init_process_group(backend)
            else:
                dist.init_process_group(backend, init_method=spec.dist_init, rank=rank, world_size=spec.world_size,
                                        timeout=timeout)
            group = True
            if torchrun:
                dist.barrier()  # no shared board across machines: this is the start line
        module, fn = algo.worker.split(":")
        getattr(importlib.import_module(module), fn)(WorkerContext(spec, rank))
        if job is not None:
            job.finish(board, algo, spec.config)
    except DivergedError as e:
        _report(spec, rank, "diverged", str(e))
    except KeyboardInterrupt:
        board.stop[0] = 1
        raise
    except BaseException as e:  # report every failure to the launcher, then leave
        board.status[rank] = 4
        message = str(e) if isinstance(e, WorkerError) else f"{type(e).__name__}: {e}"  # ours: already says it all
        if torchrun and not algo.tolerates_failures and _peer_gone(e):  # no launcher to name the dead rank
            message = (f"worker {rank}: a peer is gone ({_brief(e)}); --algo {spec.algorithm} cannot continue "
                       "without every rank")
        _report(spec, rank, "error", message, traceback.format_exc())
        if spec.errors is None:
            raise
    finally:
        if job is not None:
            job.close()  # a rank that did not finish says so, so rank 0 need not wait for it
        if group:
            import torch.distributed as dist
            try:
                dist.destroy_process_group()
            except Exception:
                pass


# Board fields that are one value for the whole run (or a maximum), not rows with one writer:
# combined with MAX across ranks; every other field is a sum of exclusive rows.
_MAX_FIELDS = {"stale_max", "layer_stale_max", "grad_norm_max", "stop", "diverged_step", "status", "t0",
               "next_batch", "finish"}


def gather_board(board: Board, ranks: list[int] | None = None) -> None:
    """torchrun: each process has its own board with only its own rows filled; combine them
    (all_reduce) so rank 0 holds the whole run's counters, snapshots and timings. Finish times
    travel as durations since each rank's own start (clock skew between machines cancels).
    ranks: the ranks that take part (default: all), the survivors agreed on by TorchrunJob; a
    dead rank's rows are lost with it (they stay zero). The all-reduce runs in a gloo group of
    those ranks made with use_local_synchronization=True: only its members take part in making it
    (a plain new_group is a collective of the whole world, which a dead rank never joins)."""
    import torch.distributed as dist

    ranks = list(range(dist.get_world_size())) if ranks is None else ranks
    if len(ranks) < 2:
        return  # a lone survivor's board is the run's
    group = dist.new_group(ranks=ranks, backend="gloo", use_local_synchronization=True)  # CPU tensors
    t0 = float(board.t0[0])
    board.finish.copy_(torch.where(board.finish > 0, (board.finish - t0).clamp(min=1e-9), board.finish))
    for name, t in board.tensors().items():
        if name in ("t0", "lost"):  # t0: rank 0's own; lost: set from the agreement by the caller
            continue
        op = dist.ReduceOp.MAX if name in _MAX_FIELDS else dist.ReduceOp.SUM
        buf = t.to(torch.float64 if t.is_floating_point() else torch.int64).contiguous()
        dist.all_reduce(buf, op=op, group=group)
        t.copy_(buf.to(t.dtype))
    board.finish.copy_(torch.where(board.finish > 0, board.finish + t0, board.finish))


class TorchrunJob:
    """One rank's handle on its torchrun job's torch.distributed store: the store env:// init
    uses (rendezvous("env://"): under torchrun's static rendezvous the TCPStore of node 0's
    agent). The end of the run is agreed on through it, because a dead rank never joins a
    collective. Plain string keys (no pickles) under a prefix of this job and restart:

      node/<r>    the node (GROUP_RANK) of rank r, set at the start
      end/<r>     "done" when rank r's schedule returned, "failed" when it did not
      survivors   "0,1,3": rank 0's decision, the ranks whose boards make the run record

    Rank 0 decides once every rank ended or is known lost (its exchange saw it die and set
    board.lost), or after --stall-timeout; the survivors then combine their boards in a group of
    their own (gather_board). Rank 0 writes the record, so without it there is none: the other
    ranks stop (TorchrunLauncher watches board.lost[0]) and exit 1. Every wait here is bounded."""

    def __init__(self, rank: int, world: int, timeout):
        import torch.distributed as dist

        self.rank, self.world, self.timeout = rank, world, timeout
        self.store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
        env = os.environ  # keys of an earlier attempt (torchrun --max-restarts) stay in the store
        prefix = f"asyncsgd/{env.get('TORCHELASTIC_RUN_ID', 'job')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.kv = dist.PrefixStore(prefix, self.store)
        self.ended = False

    def init_process_group(self, backend: str) -> None:
        import torch.distributed as dist

        # the "default_pg" prefix is what init_process_group adds to a store it makes itself
        dist.init_process_group(backend, store=dist.PrefixStore("default_pg", self.store), rank=self.rank,
                                world_size=self.world, timeout=self.timeout)
        self.kv.set(f"node/{self.rank}", os.environ.get("GROUP_RANK", "0"))

    def close(self) -> None:
        """A rank that did not get to finish() says so, so rank 0 does not wait for it (best
        effort: the store may be gone with node 0)."""
        if not self.ended:
            self.ended = True
            try:
                self.kv.set(f"end/{self.rank}", "failed")
            except Exception:
                pass

    def finish(self, board: Board, algo, cfg: RunConfig) -> None:
        """After the schedule: agree on the survivors, let torchrun's agents go (rank 0), and
        combine the survivors' boards; board.lost then names the ranks left out."""
        if self.rank != 0 and int(board.lost[0]):
            raise WorkerError(RANK0_GONE.format(rank=self.rank))
        try:
            survivors = self._survivors(board, cfg.stall_timeout)
        except RuntimeError as e:  # DistStoreError / DistNetworkError: the store's host is gone
            raise WorkerError(f"worker {self.rank}: the torchrun store is unreachable ({_brief(e)}); "
                              "node 0 is probably gone, and with it rank 0, which writes the run record") from None
        lost = [r for r in range(self.world) if r not in survivors]
        if lost and not algo.tolerates_failures:
            raise WorkerError(f"worker(s) {lost} did not finish; --algo {cfg.algorithm} cannot continue without them")
        if lost and self.rank == 0:
            self._release_agents(lost)
        try:
            gather_board(board, survivors)
        except RuntimeError as e:
            raise WorkerError(f"worker {self.rank}: combining the boards of workers {survivors} failed "
                              f"({_brief(e)})") from None
        board.lost.zero_()  # the agreement is the record's truth (a rank's own view may differ)
        for r in lost:
            board.lost[r] = 1

    def _survivors(self, board: Board, stall_timeout: float) -> list[int]:
        self.kv.set(f"end/{self.rank}", "done")
        self.ended = True
        if self.rank == 0:
            ended: dict[int, bool] = {0: True}  # rank -> finished normally
            deadline = time.monotonic() + stall_timeout
            while True:
                for r in range(1, self.world):
                    if r not in ended and self.kv.check([f"end/{r}"]):
                        ended[r] = self.kv.get(f"end/{r}") == b"done"
                waiting = [r for r in range(self.world) if r not in ended and not int(board.lost[r])]
                if not waiting or time.monotonic() >= deadline:
                    break
                time.sleep(POLL_S)
            if waiting:  # not known dead (those were logged when the exchange saw them go): say why
                print(f"asyncsgd: worker(s) {waiting} did not finish within --stall-timeout ({stall_timeout:.0f} s); "
                      "the run record leaves them out", file=sys.stderr, flush=True)
            survivors = sorted(r for r, ok in ended.items() if ok)
            self.kv.set("survivors", ",".join(map(str, survivors)))
            return survivors
        # rank 0 may still be waiting up to --stall-timeout for a peer, after a wait of up to as
        # long at the end of its schedule: give it both, then give up
        deadline = time.monotonic() + 2 * stall_timeout + 30
        while not self.kv.check(["survivors"]):
            if int(board.lost[0]):
                raise WorkerError(RANK0_GONE.format(rank=self.rank))
            if time.monotonic() >= deadline:
                raise WorkerError(f"worker {self.rank}: rank 0 did not close the run within {2 * stall_timeout + 30:.0f} s "
                                  "(2 x --stall-timeout + 30 s); no run record")
            time.sleep(POLL_S)
        survivors = [int(r) for r in self.kv.get("survivors").decode().split(",")]
        if self.rank not in survivors:
            raise WorkerError(f"worker {self.rank} finished after rank 0 closed the run without it "
                              f"(--stall-timeout {stall_timeout:.0f} s); its work is not in the run record")
        return survivors

    def _release_agents(self, lost: list[int]) -> None:
        """torchrun's agents wait for each other in an exit barrier after their workers ended
        (300 s, not settable from the command line). The agent of a node whose worker died never
        comes (it fails instead), so the survivors' torchrun would hang on for 5 minutes after
        the run. Rank 0 checks in for each such node. This uses torchrun internals (the barrier's
        keys, in the agents' store, which the workers share by default): where they do not fit
        it says so, and the survivors' torchrun exits after its 300 s."""
        env = os.environ
        if "TORCHELASTIC_RUN_ID" not in env:
            return  # not started by torchrun: no agents, no exit barrier
        nodes = set()
        for r in lost:  # a node's agent fails if any of its workers does, so count nodes, not ranks
            if self.kv.check([f"node/{r}"]):
                nodes.add(self.kv.get(f"node/{r}").decode())
        try:
            import torch.distributed as dist
            from torch.distributed.elastic.agent.server.api import _TERMINAL_STATE_SYNC_ID
            from torch.distributed.elastic.utils.store import _barrier_nonblocking

            if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
                raise LookupError("the workers do not share the agents' store")
            # static rendezvous (--master-addr/--master-port): the agents' keys are under the run id,
            # where this node's agent registered its role. (c10d rendezvous: the workers get a store
            # server of their own, the agents' keys are out of reach.)
            agents = dist.PrefixStore(env["TORCHELASTIC_RUN_ID"], self.store)
            if not agents.check([f"torchelastic/role_info/{env['GROUP_RANK']}"]):
                raise LookupError("the agents' keys are not in the workers' store: not the static rendezvous")
            for _ in nodes:
                _barrier_nonblocking(agents, int(env["GROUP_WORLD_SIZE"]), _TERMINAL_STATE_SYNC_ID)
        except Exception as e:
            print(f"asyncsgd: could not release torchrun's exit barrier for node(s) {sorted(nodes)} ({e}); the "
                  "other nodes' torchrun may wait up to 300 s before exiting", file=sys.stderr, flush=True)


RANK0_GONE = ("worker 0 is gone; under torchrun rank 0 writes the run record, so this run has none "
              "(worker {rank} stopped)")


def _exit_reason(rank: int, code: int) -> str:
    if code < 0:
        import signal
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker {rank} was killed by {name} (exit code {code})"
    return f"worker {rank} exited with code {code}"


def _report(spec: WorkerSpec, rank: int, kind: str, message: str, tb: str = "") -> None:
    if spec.errors is not None:
        try:
            spec.errors.put((rank, kind, message, tb), timeout=5)
        except Exception:
            pass


class Launcher:
    """Owns one run: its processes (or in-process worker), monitor, checkpoints and record."""

    writes_record = True  # False on torchrun ranks other than 0

    def __init__(self, cfg: RunConfig, task=None):
        from .tasks import get_task

        self.cfg = cfg = validate(cfg)
        self.algo = get_algorithm(cfg.algorithm).for_config(cfg)  # properties decided by the settings
        self.resumed = None
        if cfg.resume:
            self.resumed = load_checkpoint(cfg.resume)
        t = time.perf_counter()
        self.task = task if task is not None else get_task(cfg.task, model=cfg.model, data_dir=cfg.data_dir,
                                                           seed=cfg.seed, num_samples=cfg.num_samples)
        self.setup_s = time.perf_counter() - t
        self.out = Path(cfg.out or cfg.resume or default_out_dir(cfg))
        if self.writes_record:
            self.out.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(cfg)
        self.n_proc = self.algo.processes(cfg)
        n_train = len(self.task.train_set)
        if n_train == 0:
            raise ConfigError(f"--task {cfg.task!r} has an empty training set; accepted: at least one sample")
        self.total = max(1, round(cfg.epochs * n_train))
        torch.manual_seed(cfg.seed)
        self.model = self.task.model_fn()
        self.flat = StateFlattener(self.model)
        if self.resumed is not None:
            try:
                self.model.load_state_dict(self.resumed["model"])
            except (RuntimeError, KeyError) as e:
                raise ConfigError(f"--resume {cfg.resume!r}: the checkpoint does not fit the model "
                                  f"({str(e).splitlines()[0][:120]}); accepted: a checkpoint of the same task and model") from None
        if self.device == "cuda" and self.algo.shared_model:
            self.model.to("cuda")
        if self.algo.shared_model:
            self.model.share_memory()
        self.snapshot_every = max(1, math.ceil(self.total / cfg.eval_points))
        replicas = self.n_proc if self.algo.snapshot_all_replicas else 1
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        ctx = mp.get_context("spawn")
        self.board = Board(self.n_proc, replicas, cfg.eval_points + 3, self.flat.numel, n_params,
                           layers=len([p for p in self.model.parameters() if p.requires_grad]), lock=ClaimLock())
        start_batch = samples_before = 0
        elapsed = 0.0
        momentum = None
        if self.resumed is not None:
            start_batch, samples_before = self.resumed["next_batch"], self.resumed["samples_done"]
            elapsed, momentum = self.resumed["elapsed_s"], self.resumed["momentum"]
            self.board.next_batch[0] = start_batch
        self.errors = ctx.Queue() if self.n_proc > 1 or self.algo.distributed else queue.Queue()
        self.spec = WorkerSpec(
            config=cfg, algorithm=cfg.algorithm, task=self.task, model=self.model, board=self.board,
            total_samples=self.total, start_batch=start_batch, samples_before=samples_before,
            elapsed_before=elapsed, momentum_init=momentum, snapshot_every=self.snapshot_every,
            checkpoint_every=max(1, round(cfg.checkpoint_every * n_train)), world_size=self.n_proc,
            device=self.device, dist_init=f"tcp://127.0.0.1:{free_port()}" if self.algo.distributed else None,
            errors=self.errors)
        self.ctx = ctx
        self.lost: list[int] = []
        self.failure: tuple | None = None
        self._ckpt_seen = 0

    # -- running --------------------------------------------------------------------------
    def run(self) -> dict:
        progress = records.Progress(self.cfg, self.total, self.board, self.spec.samples_before)
        in_process = self.n_proc == 1 and not self.algo.distributed
        try:
            if in_process:
                self._run_in_process(progress)
            else:
                self._run_processes(progress)
        except KeyboardInterrupt:
            self.board.stop[0] = 1
            progress.close()
            self._write_checkpoint()
            self._save_metrics_until_checkpoint()
            raise
        finally:
            progress.close()
        self._write_checkpoint()
        return self._finish()

    def _run_in_process(self, progress) -> None:
        self.spec.errors = self.errors
        done = threading.Event()
        monitor = threading.Thread(target=self._monitor_thread, args=(progress, done), name="asyncsgd-monitor")
        monitor.start()
        try:
            worker_main(0, self.spec)
        finally:
            done.set()
            monitor.join(timeout=30)
        self._drain_errors()
        self._raise_failure()

    def _monitor_thread(self, progress, done: threading.Event) -> None:
        while not done.wait(POLL_S):
            self._poll(progress)

    def _run_processes(self, progress) -> None:
        import pickle
        try:  # fail with a clear message before starting anything
            pickle.dumps(self.task.model_fn)
        except Exception as e:
            raise ConfigError(f"model_fn {self.task.model_fn!r} is not picklable ({type(e).__name__}); accepted for "
                              f"multi-process algorithms: a module-level function or class, or functools.partial of one") from None
        procs = []
        for rank in range(self.n_proc):
            p = self.ctx.Process(target=worker_main, args=(rank, self.spec), name=f"asyncsgd-worker-{rank}")
            p.start()
            procs.append(p)
        self.procs = procs
        self._write_workers_json("starting")
        try:
            self._watch(procs, progress)
        finally:
            self._stop_all(procs)

    def _write_workers_json(self, state: str) -> None:
        """workers.json in the run directory: the worker processes' pids (to watch or kill them)."""
        info = {"state": state, "launcher_pid": os.getpid(), "algorithm": self.cfg.algorithm,
                "workers": [{"worker": r, "pid": p.pid} for r, p in enumerate(self.procs)]}
        tmp = self.out / "workers.json.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, self.out / "workers.json")

    def _watch(self, procs, progress) -> None:
        last_samples, last_change = -1, time.time()
        started = False
        while any(p.is_alive() for p in procs):
            time.sleep(POLL_S)
            if not started and self.board.t0[0] > 0:
                started = True
                self._write_workers_json("training")
            for rank, p in enumerate(procs):  # exit codes first: a dead worker is the cause, not its peers' errors
                if p.exitcode not in (None, 0) and rank not in self.lost and self.board.status[rank] != 3:
                    self._worker_lost(rank, _exit_reason(rank, p.exitcode))
            self._drain_errors()
            if self.failure is not None:
                break
            self._poll(progress)
            samples = int(self.board.samples.sum())
            if samples != last_samples:
                last_samples, last_change = samples, time.time()
            elif time.time() - last_change > self.cfg.stall_timeout:
                self.failure = ("error", f"no progress for {self.cfg.stall_timeout:.0f} s (--stall-timeout); "
                                "workers stopped")
                break
        self._drain_errors()
        self._raise_failure()

    def _worker_lost(self, rank: int, why: str) -> None:
        if rank in self.lost:  # seen twice (its exit code and its error report): once is enough
            print(f"asyncsgd: {why}", file=sys.stderr, flush=True)
            return
        if self.algo.tolerates_failures and len(self.lost) + 1 < self.n_proc:
            self.lost.append(rank)
            self.board.lost[rank] = 1  # survivors' exchanges stop sending to it and stop waiting for it
            print(f"asyncsgd: {why}; continuing with the survivors", file=sys.stderr, flush=True)
            return
        if self.failure is None:
            self.failure = ("error", why + ("" if self.algo.tolerates_failures else
                                            f"; --algo {self.cfg.algorithm} cannot continue without it"))

    def _drain_errors(self) -> None:
        while True:
            try:
                rank, kind, message, tb = self.errors.get_nowait()
            except (queue.Empty, OSError, EOFError, ValueError):
                return
            if kind == "error" and self.algo.tolerates_failures and len(self.lost) + 1 < self.n_proc:
                self._worker_lost(rank, f"worker {rank} failed: {message}")
                continue
            if self.failure is None or (kind == "diverged" and self.failure[0] != "diverged"):
                self.failure = (kind, message, tb)

    def _raise_failure(self) -> None:
        if self.failure is None:
            return
        self.board.stop[0] = 1
        kind, message = self.failure[0], self.failure[1]
        if kind == "diverged":
            if self.writes_record:
                self._write_checkpoint()  # a copy the monitor had not saved yet is still a good one
            if (self.out / "checkpoint.pt").exists():
                raise DivergedError(message + f"; last good checkpoint kept in {self.out}")
            raise DivergedError(message + "; it diverged before the first checkpoint (see --checkpoint-every)")
        if len(self.failure) > 2 and self.failure[2] and self.writes_record:
            (self.out / "error.log").write_text(self.failure[2])
        raise WorkerError(message)

    def _stop_all(self, procs) -> None:
        if any(p.is_alive() for p in procs):
            self.board.stop[0] = 1
        deadline = time.time() + STOP_GRACE_S
        for p in procs:
            p.join(timeout=max(0.1, deadline - time.time()))
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)

    def _poll(self, progress) -> None:
        progress.update()
        # After a divergence the slot may still be saved: the lead copies the model into it only
        # after a step whose loss was finite, and never leaves a non-finite copy there.
        seq = int(self.board.ckpt_seq[0])
        if seq != self._ckpt_seen and seq % 2 == 0:
            self._write_checkpoint_slot(seq)

    def _write_checkpoint_slot(self, seq: int) -> None:
        b = self.board
        state, momentum = b.ckpt_state.clone(), b.ckpt_momentum.clone()
        progress = b.ckpt_progress.clone()
        if int(b.ckpt_seq[0]) != seq:
            return  # overwritten while copying; the next poll takes the newer one
        self._ckpt_seen = seq
        if not torch.isfinite(state).all():
            return  # the lead skipped a non-finite copy; keep the last good file
        save_checkpoint(self.out, self._state_dict(state), momentum if self.cfg.momentum > 0 else None,
                        int(progress[0]), int(progress[1]), float(progress[2]), self.cfg.to_dict())

    def _write_checkpoint(self) -> None:
        seq = int(self.board.ckpt_seq[0])
        if seq != self._ckpt_seen and seq % 2 == 0:
            self._write_checkpoint_slot(seq)

    def _save_metrics_until_checkpoint(self) -> None:
        """On an interrupt, keep the evaluation points the last checkpoint covers (a resume appends)."""
        if self._ckpt_seen == 0:
            return
        done = int(self.board.ckpt_progress[1])
        rows = records.evaluate_snapshots(self.task, self.board, self.device, False, exclude=self.lost)
        records.write_metrics(self.out / "metrics.jsonl", [r for r in rows if r["samples"] <= done])

    def _state_dict(self, flat: torch.Tensor) -> dict:
        model = self.task.model_fn()
        StateFlattener(model).load_flat(model, flat)
        return model.state_dict()

    # -- the record -----------------------------------------------------------------------
    def _finish(self) -> dict:
        b = self.board
        wall = float(b.finish.max() - b.t0[0]) if b.t0[0] > 0 else 0.0
        if self.algo.shared_model and b.snap_count[0] < b.snap.shape[1]:
            # The shared model after the last worker finished: the run's final state.
            i = int(b.snap_count[0])
            self.flat.to_flat(self.model, b.snap[0, i])
            b.snap_time[0, i], b.snap_samples[0, i] = wall, self.spec.samples_before + int(b.samples.sum())
            b.snap_count[0] = i + 1
        if 0 in self.lost and self.algo.snapshot_all_replicas:
            # Replica 0 died: the first survivor's replica stands in as "the" model (row 0 is what
            # the record evaluates); the replicas' average is still over the survivors only.
            alive = [r for r in range(b.snap.shape[0]) if r not in self.lost and int(b.snap_count[r]) > 0]
            if alive:
                for t_ in (b.snap, b.snap_time, b.snap_samples, b.snap_count):
                    t_[0] = t_[alive[0]]
        t = time.perf_counter()
        metrics = records.evaluate_snapshots(self.task, b, self.device, self.algo.snapshot_all_replicas,
                                             exclude=self.lost)
        eval_s = time.perf_counter() - t
        if self.resumed is not None:  # keep the evaluation points from before the interruption
            before = [r for r in records.read_metrics(self.out / "metrics.jsonl")
                      if r["samples"] <= self.spec.samples_before]
            metrics = before + [r for r in metrics if r["samples"] > self.spec.samples_before]
        records.write_metrics(self.out / "metrics.jsonl", metrics)
        final_state = self._state_dict(b.snap[0, int(b.snap_count[0]) - 1]) if b.snap_count[0] > 0 else \
            self.model.state_dict()
        self.metrics = metrics  # for the algorithms' summary_extra hooks (final consensus distance...)
        summary = records.summary(self, metrics, wall, eval_s)
        save_checkpoint(self.out, final_state, None, math.ceil(self.total / self.cfg.batch_size), self.total,
                        wall, self.cfg.to_dict())
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def torchrun_env() -> dict | None:
    """This process's place in a torchrun job (RANK, WORLD_SIZE, MASTER_ADDR/PORT set), or None."""
    env = os.environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return None
    try:
        return {"rank": int(env["RANK"]), "world_size": int(env["WORLD_SIZE"]),
                "local_rank": int(env.get("LOCAL_RANK", 0)), "local_world_size": int(env.get("LOCAL_WORLD_SIZE", 1))}
    except ValueError:
        return None


class TorchrunLauncher(Launcher):
    """This process IS worker RANK of a torchrun job (`torchrun ... -m asyncsgd train ...`).

    Every rank builds the task and the model with the same seed, keeps a local Board and runs
    worker_main inline (the env:// store, held by TorchrunJob; a barrier is the start line). The
    world size is the number of workers: --workers (sync, dasgd) or --groups (lpap) is set from
    WORLD_SIZE. Data:
    strided batches (no shared claim counter across machines). At the end the ranks agree on who
    finished through the job's store (TorchrunJob), the survivors' boards are summed
    (gather_board) and rank 0 evaluates and writes the run record (and writes the checkpoints
    during the run); the other ranks write nothing and return. Failures: a rank that fails
    raises (exit code 1). dasgd and lpap survivors of a dead rank other than 0 carry on (their
    exchange saw it die) and the record lists it in lost_workers; without rank 0 there is no
    record, so the other ranks stop and exit 1 (_watch_rank0)."""

    def __init__(self, cfg: RunConfig, env: dict, task=None):
        world = env["world_size"]
        algo = get_algorithm(cfg.algorithm).for_config(cfg.replace(workers=world))  # as it will run: WORLD_SIZE workers
        if not algo.distributed:
            from .algorithms import ALGORITHMS
            distributed = ", ".join(n if a.distributed is True else f"{n} {a.distributed_with}"
                                    for n, a in ALGORITHMS.items() if a.distributed)
            raise ConfigError(f"--algo {cfg.algorithm!r} does not run across processes under torchrun "
                              f"(WORLD_SIZE={world}); accepted: {distributed}")
        if algo.processes(cfg) != world:
            for field_ in ("workers", "groups"):
                if algo.processes(cfg.replace(**{field_: world})) == world:
                    cfg = cfg.replace(**{field_: world})
                    break
            else:
                raise ConfigError(f"torchrun started {world} processes but --algo {cfg.algorithm} runs "
                                  f"{algo.processes(cfg)}; accepted: a world size equal to its process count")
        self.dist_rank = env["rank"]
        self.writes_record = self.dist_rank == 0
        if not self.writes_record:
            cfg = cfg.replace(progress="none")
        super().__init__(cfg, task)
        self.errors = queue.Queue()
        self.spec.errors = self.errors
        self.spec.dist_init = "env://"
        self.spec.extra.update(launch="torchrun", local_rank=env["local_rank"],
                               local_world_size=env["local_world_size"])

    def run(self) -> dict:
        progress = records.Progress(self.cfg, self.total, self.board, self.spec.samples_before)
        done = threading.Event()
        if self.writes_record:  # progress and checkpoints: rank 0 only
            monitor = threading.Thread(target=self._monitor_thread, args=(progress, done), name="asyncsgd-monitor")
        else:
            monitor = threading.Thread(target=self._watch_rank0, args=(done,), name="asyncsgd-watch-rank0")
        monitor.start()
        try:
            worker_main(self.dist_rank, self.spec)
        finally:
            done.set()
            monitor.join(timeout=30)
            progress.close()
        self._drain_errors()
        self._raise_failure()
        self.lost = [r for r in range(self.n_proc) if int(self.board.lost[r])]  # agreed on in TorchrunJob.finish
        if not self.writes_record:
            return {"torchrun_rank": self.dist_rank, "record_written": False}
        self._write_checkpoint()
        return self._finish()

    def _watch_rank0(self, done: threading.Event) -> None:
        """Ranks other than 0: once this rank's exchange saw rank 0 die, stop training (board.stop)
        instead of finishing work that no record will hold; TorchrunJob.finish then fails the rank."""
        while not done.wait(POLL_S):
            if int(self.board.lost[0]):
                self.board.stop[0] = 1
                return

    def _drain_errors(self) -> None:
        """Every report on this queue is this process's own failure (a peer's death is seen by the
        exchange and settled by TorchrunJob), so never the base class's 'continue without it'."""
        while True:
            try:
                _, kind, message, tb = self.errors.get_nowait()
            except queue.Empty:
                return
            if self.failure is None or (kind == "diverged" and self.failure[0] != "diverged"):
                self.failure = (kind, message, tb)


def run(cfg: RunConfig, task=None) -> dict:
    """Train one run and write its record; returns the summary dict. Under torchrun (RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment) this process is one worker of the
    job; rank 0 returns the summary, the other ranks {"torchrun_rank": r, "record_written": False}."""
    if cfg.runtime == "sim":
        from .sim import run_sim  # the simulated cluster (discrete-event, one process)
        return run_sim(validate(cfg), task)
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume)
        saved = {k: v for k, v in ckpt["config"].items() if k in RunConfig.__dataclass_fields__}
        saved["lr_steps"] = tuple(saved.get("lr_steps", ()))
        cfg = RunConfig(**{**saved, "resume": cfg.resume, "out": cfg.resume,
                           "progress": cfg.progress})
    env = torchrun_env()
    if env is not None and env["world_size"] > 1:
        return TorchrunLauncher(cfg, env, task).run()
    return Launcher(cfg, task).run()
