"""The end of a torchrun run, agreed on through the job's store, and the survivors' boards combined.

- TorchrunJob: one rank's handle on the job's torch.distributed store (who finished, who is lost).
- gather_board: the survivors' boards combined with all_reduce in a group of their own.
Imports nothing of the launch package, so the launch modes can use it.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import torch

from ..board import Board
from ..config import RunConfig
from ..errors import DivergedError, WorkerError
from ..exchange.transport import brief as _brief
from ..exchange.transport import record_loss

POLL_S = 0.05


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
        if name in ("t0", "lost", "inflight", "requeue"):  # t0: rank 0's own; lost: set from the agreement by
            # the caller; inflight, requeue: the local claims' (torchrun ranks take strided batches)
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
      lost/<r>    "q": rank q's exchange saw rank r die (a send or receive to it failed)
      lost_count  how many lost/<r> keys were set (read every poll: one round trip, not one per rank)

A rank's exchange sees a dead peer only when it next sends to it or its receive from it fails,
and a send to a SIGKILLed gloo peer is not always failed at once: a survivor could learn of the
loss after its own batches were done and take none of the dead rank's over (a CI flake; docs/
distributed.md). So the job's loss watcher (one thread per rank, watch_losses .. close) publishes
every loss this rank's exchange records and copies the others' onto this rank's board (record_loss:
logged once per process, whoever learned it first): every survivor knows within POLL_S of the first.
It runs until finish() has the survivors (rank 0's wait for them uses it too), and stops before
finish() writes the agreement onto board.lost, which no late store key may change.

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
        self._watcher: threading.Thread | None = None
        self._stop_watching = threading.Event()

    def watch_losses(self, board: Board) -> None:
        """Start the loss watcher (module docstring); stop_watching() ends it (finish() and close())."""
        self._watcher = threading.Thread(target=self._watch_losses, args=(board,), daemon=True,
                                         name=f"asyncsgd-job-losses-{self.rank}")
        self._watcher.start()

    def stop_watching(self) -> None:
        """Stop and join the loss watcher (idempotent). A store call in flight ends within the
        store's timeout; past 5 s the thread is a daemon and ends with the process."""
        self._stop_watching.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    def _watch_losses(self, board: Board) -> None:
        published: set[int] = set()  # losses this rank put in the store, or read from it
        seen = 0
        try:
            while not self._stop_watching.wait(POLL_S):
                for r in range(self.world):
                    if r not in published and int(board.lost[r]):
                        published.add(r)
                        self.kv.set(f"lost/{r}", str(self.rank))
                        self.kv.add("lost_count", 1)  # after the key: a reader who sees the count sees the key
                count = self.kv.add("lost_count", 0)
                if count == seen:
                    continue
                seen = count
                for r in range(self.world):
                    if r != self.rank and r not in published and self.kv.check([f"lost/{r}"]):
                        published.add(r)
                        by = self.kv.get(f"lost/{r}").decode()
                        if self._stop_watching.is_set():  # a store call outlived stop_watching's join:
                            return  # the survivors are agreed, and board.lost holds the agreement
                        record_loss(board, self.rank, r, f"worker {by} lost its connection to it")
        except RuntimeError:
            return  # the store is gone with node 0: finish() / the rank-0 watch say what that means

    def init_process_group(self, backend: str) -> None:
        import torch.distributed as dist

        # the "default_pg" prefix is what init_process_group adds to a store it makes itself
        dist.init_process_group(backend, store=dist.PrefixStore("default_pg", self.store), rank=self.rank,
                                world_size=self.world, timeout=self.timeout)
        self.kv.set(f"node/{self.rank}", os.environ.get("GROUP_RANK", "0"))
        self.kv.set(f"host/{self.rank}", socket.gethostname())

    def ranks_on_this_host(self) -> int:
        """How many ranks of the job run on this machine (after every rank joined the group). torchrun's
        LOCAL_WORLD_SIZE counts one node's processes, but several nodes may share a machine (a test
        on loopback, a fat host): their cores are shared all the same."""
        me = socket.gethostname()
        self.kv.wait([f"host/{r}" for r in range(self.world)], self.timeout)
        return sum(self.kv.get(f"host/{r}").decode() == me for r in range(self.world))

    def close(self, diverged: str | None = None) -> None:
        """A rank that did not get to finish() says so, so rank 0 does not wait for it (best
        effort: the store may be gone with node 0). diverged: this rank's divergence message, which
        the others then end with (rank 0's: its record says diverged, not "no record"). Stops the
        loss watcher."""
        self.stop_watching()
        if not self.ended:
            self.ended = True
            try:
                if diverged is not None:
                    self.kv.set(f"diverged/{self.rank}", diverged)  # before end/<rank>: a reader of one sees both
                self.kv.set(f"end/{self.rank}", "failed")
            except Exception:
                pass

    def _rank0_gone(self) -> Exception:
        """What a rank ends with once rank 0 is gone: rank 0's divergence, if it diverged (its
        record says so; exit 3 as there), else WorkerError(RANK0_GONE)."""
        try:
            if self.kv.check(["diverged/0"]):
                return DivergedError(self.kv.get("diverged/0").decode())
        except Exception:  # the store may be gone with node 0
            pass
        return WorkerError(RANK0_GONE.format(rank=self.rank))

    def finish(self, board: Board, algo, cfg: RunConfig) -> None:
        """After the schedule: agree on the survivors, let torchrun's agents go (rank 0), and
        combine the survivors' boards; board.lost then names the ranks left out."""
        if self.rank != 0 and int(board.lost[0]):
            raise self._rank0_gone()
        try:
            survivors = self._survivors(board, cfg.stall_timeout)
        except RuntimeError as e:  # DistStoreError / DistNetworkError: the store's host is gone
            raise WorkerError(f"worker {self.rank}: the torchrun store is unreachable ({_brief(e)}); "
                              "node 0 is probably gone, and with it rank 0, which writes the run record") from None
        self.stop_watching()  # the survivors are agreed: board.lost gets the agreement below, nothing later
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
                raise self._rank0_gone()
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
