"""Background parameter averaging across processes over the Exchange: the averaging of LPAP-SGD
(algorithms/lpap) and of pdasgd's replica mode (--sharing average, algorithms/pdasgd).

Each process trains its own replica with its own threads; a BackgroundAverager keeps the replicas
together without ever stopping them:
- Rounds. Round r starts when this process has made `every` local steps since its last round
  (the training threads call step()), or when a peer's round-r parameters arrive, so a straggler
  never delays the others' averaging (LPP-SGD's reference code starts rounds on the largest step
  count of any group the same way). In a round the averaging thread copies the parameters
  (snapshot), sends the copy to every live peer (PARAMS, point-to-point), waits for every live
  peer's round-r parameters (or its FINAL: a peer that finished training answers further rounds
  with its final parameters) and adds (average - snapshot) to the live parameters: what the
  training threads did meanwhile is kept, training never waits for the network.
- The end (finish()). Every process sends FINAL (its final parameters), waits for every live
  peer's FINAL and takes their average: every replica ends with the same parameters (unless a
  peer was lost or timed out, which is logged).
- Lost peers (the launcher set board.lost, or a send/receive to them failed) drop out of every
  round and of the final average: the survivors carry on (exchange/transport.py).
Only the given flat vector is averaged (the parameters, made views of it by
tensors.flatten_params); float buffers such as BatchNorm statistics stay per process.
Rounds are counted in board.exchange[rank, ExchangeCounter.ROUNDS]; bytes and messages by the Exchange.

Threads: one averaging thread (start(); joined with a timeout by finish(), or by close() on an
error path) besides the Exchange's own sender and receiver threads (joined by close()).
"""

from __future__ import annotations

import threading
import time

import torch

from ..board import ExchangeCounter as X
from .transport import Exchange
from .wire import DONE, FINAL, PARAMS

JOIN_MARGIN_S = 30.0  # finish() waits --stall-timeout (the final average's own bound) plus this
ERROR_CLOSE_S = 3.0  # error paths: how long close() lets the sender hand over this process's DONE


class BackgroundAverager:
    """Use from the owner thread: open() (collective: every process of the group calls it),
    start(), step() from the training threads after each local step, then finish() at the end of
    training and close() always (in a finally)."""

    def __init__(self, ctx, flat: torch.Tensor, every: int, name: str, label: str | None = None,
                 stopping=lambda: False, on_error=None):
        """flat: the parameters (the model's parameters are views of it); every: local steps
        between rounds; stopping(): True once rounds should end early (a training thread failed);
        on_error(exc): called from the averaging thread if it raises."""
        self.ctx, self.flat, self.every = ctx, flat, every
        self.board, self.rank = ctx.board, ctx.rank
        self.label = label or f"{name} worker {ctx.rank}"
        self.timeout = ctx.cfg.stall_timeout
        self.stopping, self.on_error = stopping, on_error
        self.ex = Exchange(ctx, flat.numel(), dtype=flat.dtype, name=name)
        self.rounds = 0
        self.error: BaseException | None = None  # the averaging thread's, also given to on_error
        self._lock = threading.Lock()  # the local step count (training threads and the averaging thread)
        self._steps = 0
        self._trigger = threading.Event()  # `every` local steps since the last round
        self._done = threading.Event()  # training is over: run the final average and leave
        self._abort = threading.Event()  # an error path: stop waiting for peers at once
        self._got: dict[tuple[int, int], torch.Tensor] = {}  # (peer, round) -> its parameters
        self._finals: dict[int, torch.Tensor] = {}  # peer -> its final parameters
        self._thread: threading.Thread | None = None
        self._opened = False  # open() made the exchange's group
        self._finished_ok = False  # finish() saw the final average done: close() has nothing to cut short
        self._name = name

    # -- the owner's side -----------------------------------------------------------------
    def open(self) -> None:
        """Make the exchange's gloo group and start its threads (collective)."""
        self.ex.start()
        self._opened = True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._guarded, daemon=True,
                                        name=f"asyncsgd-{self._name}-avg-{self.rank}")
        self._thread.start()

    def step(self, n: int = 1) -> None:
        """n local steps were made (any thread): a round starts after `every` of them."""
        with self._lock:
            self._steps += n
            if self._steps >= self.every:
                self._trigger.set()

    def finish(self) -> float:
        """Training is over: the averaging thread runs the final average and ends. Returns the
        seconds waited for it (added to board.idle_s: the process's idle time); TimeoutError if
        the thread did not end within --stall-timeout + JOIN_MARGIN_S."""
        self._done.set()
        limit = self.timeout + JOIN_MARGIN_S
        t = time.perf_counter()
        if self._thread is not None:
            self._thread.join(timeout=limit)
        waited = time.perf_counter() - t
        self.board.idle_s[self.rank] += waited
        if self._thread is not None and self._thread.is_alive():
            raise TimeoutError(f"{self.label}: the averaging thread did not finish within {limit:.0f} s")
        self._finished_ok = self.error is None
        return waited

    def close(self, timeout: float = 30.0) -> None:
        """Always, last: join the averaging thread and close the exchange. On an error path (no
        finish(), or the averaging thread failed) the thread stops at once and this process
        leaves: DONE instead of FINAL, so no peer averages with this replica's parameters as they
        were when it failed (a peer would use a FINAL in every later round), and no waiting for
        the peers' FINAL. A peer in a round waits for this process until it is gone (its
        sockets close, the launcher flags it lost), at most --stall-timeout."""
        clean = self._finished_ok
        self._done.set()
        self._abort.set()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            if self._thread.is_alive():  # blocked in torch: a daemon thread, it ends with the process
                self.ex.log(f"{self.label}: averaging thread still busy at close; abandoned")
        if not clean and self._opened:
            # The thread may have died before its last message: post DONE here (a no-op if one was
            # sent). The receiver threads wait for peers that are still training: give the sender
            # the moment it needs to hand DONE over, then leave them (daemon threads).
            self.ex.send_last(DONE)
            timeout = min(timeout, ERROR_CLOSE_S)
        self.ex.close(timeout=max(0.5, min(timeout, deadline - time.monotonic())))

    # -- the averaging thread -------------------------------------------------------------
    def _guarded(self) -> None:
        try:
            if self.flat.is_cuda:
                torch.cuda.set_device(self.flat.device)
            with torch.no_grad():
                self._rounds()
                self._final()
        except BaseException as e:
            self.error = e
            if self.on_error is not None:
                self.on_error(e)

    def _file(self, msg) -> None:
        if msg.kind == PARAMS:
            self._got[(msg.sender, msg.seq)] = msg.payload.to(self.flat.device)
        elif msg.kind == FINAL:
            self._finals[msg.sender] = msg.payload.to(self.flat.device)

    def _collect(self, ready, deadline: float) -> None:
        """File arriving messages until ready(), the deadline, a broken exchange, a stop or an abort."""
        ex = self.ex
        while (not ready() and time.monotonic() < deadline and not ex.broken and not self.board.stop[0]
               and not self._abort.is_set()):
            msg = ex.get(timeout=0.01)
            if msg is not None:
                self._file(msg)
        for msg in ex.drain():
            self._file(msg)

    def _rounds(self) -> None:
        ex, flat, got, finals = self.ex, self.flat, self._got, self._finals
        while True:
            for msg in ex.drain():
                self._file(msg)
            if self._done.is_set() or self.stopping():
                return
            rnd = self.rounds
            peer_started = any((p, rnd) in got for p in ex.live_peers())
            if not (self._trigger.is_set() or peer_started):
                self._trigger.wait(timeout=0.01)
                msg = ex.get(timeout=0.001)
                if msg is not None:
                    self._file(msg)
                continue
            with self._lock:
                self._steps = 0
                self._trigger.clear()
            snap = flat.clone()
            ex.post(ex.live_peers(), PARAMS, snap, seq=rnd)
            self._collect(lambda: all((p, rnd) in got or p in finals for p in ex.live_peers()),
                          time.monotonic() + self.timeout)
            members = [snap] + [got.pop((p, rnd)) if (p, rnd) in got else finals[p]
                                for p in ex.live_peers() if (p, rnd) in got or p in finals]
            flat.add_(torch.stack(members).mean(0).sub_(snap))  # keep what the threads did meanwhile
            self.rounds = rnd + 1
            self.board.exchange[self.rank, X.ROUNDS] = self.rounds

    def _final(self) -> None:
        """Every process's final parameters, averaged: all replicas end with the same model."""
        ex, flat, finals = self.ex, self.flat, self._finals
        if self._abort.is_set():  # an error path (close() without finish()): leave, see close()
            ex.send_last(DONE)
            return
        final = flat.clone()
        ex.send_last(FINAL, final)
        self._collect(lambda: all(p in finals for p in ex.live_peers()), time.monotonic() + self.timeout)
        members = [final] + [finals[p] for p in ex.live_peers() if p in finals]
        flat.copy_(torch.stack(members).mean(0))
        missing = [p for p in ex.live_peers() if p not in finals]
        if missing:
            why = "the run was stopped" if self.board.stop[0] else "no FINAL within --stall-timeout"
            ex.log(f"final average without worker(s) {missing}: {why}")
