"""Messages between worker processes over torch.distributed point-to-point (gloo).

Used by dasgd (updates to peers), layup (one layer's update per message, to peers) and lpap
(parameters to average). Computation never waits on
the network: the training thread posts a message (isend or a queue append) and peers' messages
are handled by background threads (a sender thread and one receiver thread per peer).

Wire format: wire.py (the header layout, the message kinds, encode, decode + validation). A
message is one contiguous byte tensor, an int64 header then the payload, and one gloo send (tag 1)
carries one message or a frame of several due to the same destination (wire.encode_frame). One
send instead of a header send plus a payload send: each gloo send is a rendezvous with the
receiver, and on loopback one costs 0.09 ms against 0.28 ms for the pair (measured, 9,610 floats);
on busy cores the second rendezvous mostly adds thread wake-ups. Frames for the same reason: layup
sends a message per layer, and the layers of one round go to the same peers (its worker), so a
round is one send per peer instead of one per layer (batched()). The receiver posts a buffer of the
largest frame's size (gloo accepts a shorter one into it) and reads each `length` from its header.
Bytes counted per message = header bytes + payload bytes (board.bytes_sent / messages_sent).
The exchange has its own gloo group (dist.new_group(backend="gloo")), so it works beside an
NCCL default group on GPUs (payloads are staged through CPU memory: NCCL has no receive from
any source, no tags, and cannot time out a point-to-point without tearing down the communicator).

What gloo does and does not do (measured on torch 2.13; it is why the design is what it is):
- A send completes when the receiver has posted a matching receive (rendezvous), but isend
  moves the bytes in gloo's own I/O thread: the receiver has them before the sender calls wait().
- Work.is_completed() never turns true for gloo send/recv before wait(), so there is no polling;
  and a wait(timeout) that expires breaks the WHOLE gloo context (every pair gets the timeout
  error). So the threads use plain blocking waits; the group's own timeout (EXCHANGE_TIMEOUT_S)
  is only the last-resort bound, after which the exchange is "broken" and training goes on alone.
- A dead peer (SIGKILL) closes its sockets: sends to it and receives from it raise at once
  ("Connection reset/closed by peer") and the other pairs keep working. A receive from ANY
  source is not isolated that way: once a peer died in the middle of a transfer, every further
  any-source receive raised the same error (the broken pair stays a candidate). Hence one
  receiver thread per peer, each receiving from that peer only: a failure ends one thread.
  Self-sends are not supported (a blocked receiver cannot be woken from its own process).

Threads (owned by the Exchange; close() joins them with timeouts):
- post() (any thread) never blocks on the network: a message that is due (no --delay), has
  nothing queued before it and fewer than MAX_INFLIGHT unreceived sends ahead of it is posted
  at once with isend: one thread hand-off less per message, which on busy cores costs
  milliseconds of scheduler latency. Inside `with batched():` the calling thread's posts are
  queued instead, and at the block's end that thread sends each destination's due messages as
  one frame (layup: a backward pass's layer messages).
- sender thread: keeps one FIFO queue per destination for what could not be posted at once.
  A message is due at post time + the --delay model's delay for its size (delays.message_delay,
  per destination FIFO, no overtaking), so delays are paid here, off the training thread, and
  messages in flight overlap like on a real network. It posts due messages, those due at the
  head of a queue together as one frame (up to the frame capacity), keeping at most MAX_INFLIGHT
  unreceived sends per destination. Backlog: a new gradient for a destination
  whose queue tail is already due but not yet posted (the network or the receiver is slower than
  the producer) is summed into that tail (counted as coalesced) when it covers the same slice of
  the parameter vector (layup: the same layer): adaptive --send-every, bounded memory, and the
  receivers never fall further behind than MAX_INFLIGHT messages.
- waiter threads, one per destination: wait on that destination's posted messages in order
  (counting bytes and messages, noticing a gone peer). One per destination, not one for all:
  gloo does not always wake a wait on a dead peer's send (seen under torchrun), and a single
  waiter stuck there held every other destination at MAX_INFLIGHT, so their last messages were
  never posted and the survivors waited out --stall-timeout for each other (a CI hang).
- receiver threads, one per peer: blocking receive from that peer into a fresh buffer (filled
  first, wire.recv_buffer), validated by wire.decode; a valid message goes to the owner's handler
  (dasgd applies a peer's update at once) or to the inbox. A malformed one (wire.py lists the
  rules: sender, kind, length, negative fields, non-finite payload) is dropped whole and counted
  in board.malformed[rank] (summary.json: malformed_messages); the first per peer is logged. It
  is never applied, never in the inbox, never used to index the vector clock, and a malformed
  DONE/FINAL does not finish its peer. The thread then simply receives the next message: a
  message is one gloo send, framed by gloo, so a wrong header (its length field included) cannot
  shift the stream; the receiver never reads a payload on the header's word. If the dropped
  message was the peer's real (corrupted) last message, the owner's wait_peers ends at its
  deadline (--stall-timeout) and close() abandons that receiver: the run still finishes.
  A thread leaves after its peer's last message, when the peer is gone, or when broken.

Shutdown protocol (torchft-style: every party can tell when it may stop, nobody waits forever):
 1. A process that will send nothing more posts its LAST message to every live peer: DONE
    (dasgd; header only) or FINAL (lpap; its final parameters). FIFO per destination: the last
    message arrives after everything else that process sent.
 2. A peer is finished for us once its last message has arrived or it is gone. Gone = the
    launcher flagged it lost on the board (it saw the process die), or a send/recv to it raised.
    Under torchrun there is no launcher watching the processes: the exchange is what sees a peer
    die, so it sets board.lost itself (record_loss; this process's own board), and the job's loss
    watcher passes it on to the other ranks through the store (launch/job.py), whose boards then
    mark it lost too; dasgd then takes over the dead rank's batches and the runner's end-of-run
    agreement (job.TorchrunJob) leaves it out.
 3. The owner waits (wait_peers, with a deadline) until every peer is finished, then close():
    the sender thread leaves once its queues are empty (messages to gone peers are dropped),
    each waiter once its destination's posted messages were received (or the peer is gone),
    each receiver once its peer is finished; all are joined with timeouts. A thread still
    blocked after that waits on a peer that is alive but silent (a frozen process), or on one
    that is gone whose socket gloo did not wake (seen under torchrun when rank 0 dies): it is a
    daemon thread, abandoned, and dies with the process, which ends right after. Only the first
    case is logged: the second is already reported as the peer's loss.
Failures: a gone peer is dropped from every queue and topology; the survivors carry on. If the
group itself breaks (its timeout) the exchange is "broken": posts are dropped, every peer
counts as finished, and training continues locally to the end (logged once).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import re
import sys
import threading
import time

import torch
import torch.distributed as dist

from ..board import ExchangeCounter as X
from ..delays import message_delay
from . import wire
from .wire import DONE, FINAL, GRAD, HEADER_FIELDS, KIND_NAMES, PARAMS, Message  # noqa: F401 (re-exported)

TAG = 1
MAX_INFLIGHT = 2  # posted but not yet received messages per destination; more wait in the queue
EXCHANGE_TIMEOUT_S = 3600.0  # gloo's own bound on one blocking wait (last resort, see above)
GONE_JOIN_S = 1.0  # close(): how long a gone peer's waiter or receiver is waited for
SWITCH_INTERVAL_S = 0.0005


class Exchange:
    """Point-to-point messages with a sender and a receiver thread. Used from one owner thread
    (plus post() from any thread): start(), post(), get()/drain(), send_last(), wait_peers(), close()."""

    def __init__(self, ctx, numel: int, dtype=torch.float32, name: str = "exchange", handler=None,
                 slices: list | None = None):
        """handler(msg) -> bool, optional: called by the receiver thread on every arrival; True
        means handled (e.g. dasgd applies a peer's update at once), False: put it in the inbox.
        slices, optional: the (offset, length) slices of the numel-element vector a payload may
        cover, one per layer (layup); arrivals covering anything else are malformed, and the
        messages sent and coalesced are also counted per slice (board.layer_sent, layer_coalesced).
        Without it every payload is the whole vector."""
        self.ctx, self.rank, self.n = ctx, ctx.rank, ctx.world_size
        self.handler = handler
        self.error: BaseException | None = None  # a handler's exception, re-raised by close()
        self.board = ctx.board
        self.marks_lost = ctx.launch.marks_lost_peers  # no launcher watching (torchrun): we record lost peers
        self.numel, self.dtype, self.name = numel, dtype, name
        self.delay = ctx.delay
        import random
        self.rng = random.Random(ctx.cfg.seed * 15_485_863 + ctx.rank)  # delay jitter, sender thread only
        self.header_bytes = wire.header_bytes(self.n)
        self.itemsize = wire.itemsize(dtype)
        self.payload_bytes = numel * self.itemsize  # the largest payload (GRAD / PARAMS / FINAL)
        self.slices = None if slices is None else frozenset(slices)
        # the largest frame, the receive buffers' size (both ends compute it from the run)
        self.capacity = wire.frame_capacity(self.n, numel, dtype, len(slices or ()))
        self._slice_index = {offset: i for i, (offset, _) in enumerate(slices or ())}
        self.max_inflight = MAX_INFLIGHT
        self.peers = [p for p in range(self.n) if p != self.rank]
        self.inbox: collections.deque[Message] = collections.deque()
        # One lock guards the queues and flags; each kind of waiter has its own condition on it, so
        # that a post or an arrival wakes only the thread it concerns (a notify_all on one condition
        # woke every sender, waiter and receiver-side wait: with layup's 8 messages per backward
        # pass that was dozens of thread wake-ups per pass, each one a turn for the interpreter lock).
        # _cv: the owner's waits (get, wait_peers): an arrival for the inbox, a finished peer.
        # _send_cv: the sender thread: a message queued, a slot freed. _wait_cv[d]: d's waiter:
        # a message posted to d. Rare events (gone, broken, stopping, a last message) wake them all.
        lock = threading.RLock()
        self._cv = threading.Condition(lock)
        self._send_cv = threading.Condition(lock)
        self._wait_cv = {p: threading.Condition(lock) for p in self.peers}
        self._queues = {p: collections.deque() for p in self.peers}
        self._last_due = {p: 0.0 for p in self.peers}
        # per destination: (msg, buf, work) posted and not yet waited on (its waiter thread's)
        self._inflight = {p: collections.deque() for p in self.peers}
        self._gone: set[int] = set()
        self._finished: set[int] = set()  # peers whose last message arrived
        self._malformed_from: set[int] = set()  # peers a malformed message came from (logged once each)
        self._stopping = False
        self._last_posted = False
        self.broken = False
        self.group = None
        self._sender, self._waiters, self._receivers = None, [], []
        self._batching = threading.local()  # batched(): this thread's posts wait for the block's end

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Make the exchange's gloo group (collective: every rank calls it) and start the threads."""
        timeout = datetime.timedelta(seconds=max(EXCHANGE_TIMEOUT_S, 10 * self.ctx.cfg.stall_timeout))
        self.group = dist.new_group(backend="gloo", timeout=timeout)
        dist.barrier(group=self.group)
        # The communication threads need the GIL for a moment per message; with the default 5 ms
        # switch interval a busy training thread makes every hand-off wait up to 5 ms.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._sender = threading.Thread(target=self._guard, args=(self._send_loop,), daemon=True,
                                        name=f"asyncsgd-{self.name}-send-{self.rank}")
        self._waiters = [threading.Thread(target=self._guard, args=(self._wait_loop, p), daemon=True,
                                          name=f"asyncsgd-{self.name}-wait-{self.rank}-to-{p}")
                         for p in self.peers]
        self._receivers = [threading.Thread(target=self._guard, args=(self._recv_loop, p), daemon=True,
                                            name=f"asyncsgd-{self.name}-recv-{self.rank}-from-{p}")
                           for p in self.peers]
        for t in [self._sender, *self._waiters, *self._receivers]:
            t.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the threads (after the sender and waiters flushed what they still can) and join them."""
        with self._cv:
            self._stopping = True
            self._wake_all_locked()
        deadline = time.monotonic() + timeout
        # A waiter or receiver of a gone peer gets GONE_JOIN_S, not the deadline: gloo may never
        # wake its wait (below), and nothing it could still do matters (its peer counts as finished,
        # messages to it are dropped). Joined with the deadline, such a thread held a survivor's
        # close() for the whole 30 s (the killed-worker test took 43 s instead of 15 once in 9).
        for t, peer in [(self._sender, None), *zip(self._waiters, self.peers), *zip(self._receivers, self.peers)]:
            if t is not None:
                left = max(0.1, deadline - time.monotonic())
                t.join(timeout=left if peer is None or self.alive(peer) else min(left, GONE_JOIN_S))
        # A thread blocked on a peer that is gone is expected (gloo does not always wake a wait on
        # a dead peer's socket) and not worth a line; one blocked on a live peer means that peer
        # is frozen, which the user should hear about.
        blocked = [p for p, t in zip(self.peers, self._waiters) if t.is_alive() and self.alive(p)]
        if blocked:
            self.log(f"sender threads to worker(s) {blocked} still blocked in a send at close; abandoned "
                     "(daemon threads, they end with the process)")
        stuck = [p for p, t in zip(self.peers, self._receivers) if t.is_alive() and self.alive(p)]
        if stuck:
            self.log(f"receiver threads for worker(s) {stuck} still blocked at close; abandoned "
                      "(daemon threads, they end with the process)")
        if self.error is not None:
            raise self.error

    # -- the owner's side -----------------------------------------------------------------
    def alive(self, peer: int) -> bool:
        return peer not in self._gone and not int(self.board.lost[peer]) and not self.broken

    def live_peers(self) -> list[int]:
        return [p for p in self.peers if self.alive(p)]

    def post(self, dests, kind: int, payload: torch.Tensor | None = None, seq: int = 0, steps: int = 1,
             clock: torch.Tensor | None = None, coalesce: bool = False, offset: int = 0,
             decayed: float = 1.0) -> None:
        """Send one message to each of dests without blocking on the network: posted at once
        (isend) when it is due (no --delay) and nothing is queued before it, else queued for the
        sender thread. The payload must not be modified afterwards. offset: where the payload
        sits in the parameter vector (one of the slices given to __init__; 0 for the whole).
        decayed: optim.decay_fraction when the payload's first update was made (wire.py)."""
        if payload is not None:
            payload = payload.detach().to("cpu", self.dtype).reshape(-1)
        nbytes = self.header_bytes + (payload.numel() * self.itemsize if payload is not None else 0)
        now, posted_us = time.monotonic(), int(time.time() * 1e6)
        queued = False
        with self._cv:
            if self.broken or self._last_posted:
                return
            for d in dests:
                if not self.alive(d):
                    continue
                q = self._queues[d]
                due = max(now + message_delay(self.delay, nbytes, self.rng), self._last_due[d])
                self._last_due[d] = due
                tail = self._backlogged(q, kind, offset, payload.numel(), now) if coalesce else None
                if tail is not None:
                    # congestion (the queue is due but still queued): sum into its newest message of
                    # the same slice, adaptive --send-every; parameters (layup's --gossip average)
                    # replace the queued ones, which they contain, with their clock
                    if kind == PARAMS:
                        tail.payload, tail.owned, tail.clock = payload, False, clock
                    else:
                        if not tail.owned:
                            tail.payload, tail.owned = tail.payload.clone(), True
                        tail.payload += payload
                    tail.steps += steps
                    tail.due = max(tail.due, due)
                    tail.decayed = max(tail.decayed, decayed)  # the larger lr: damped as the earlier update
                    self.board.exchange[self.rank, X.COALESCED] += 1
                    if self.slices is not None:
                        self.board.layer_coalesced[self.rank, self._slice_index[offset]] += 1
                    continue
                m = Message(self.rank, kind, seq, steps, clock, payload, due, posted_us, offset=offset,
                            decayed=decayed)
                if due <= now and not q and len(self._inflight[d]) < self.max_inflight and not self._held():
                    self._isend_locked(d, [m])
                else:
                    q.append(m)
                    queued = True
            if kind in (FINAL, DONE):
                self._last_posted = True
                self._wake_all_locked()
            elif queued and not self._held():
                self._send_cv.notify()

    def _held(self) -> bool:
        return getattr(self._batching, "depth", 0) > 0

    @contextlib.contextmanager
    def batched(self):
        """Within the block, this thread's posts are queued; at its end this thread sends each
        destination's due messages as one frame (where a slot is free; else the sender thread
        does, as frames too). layup wraps a backward pass in it: its layers' messages of a round
        leave as one send per peer."""
        self._batching.depth = getattr(self._batching, "depth", 0) + 1
        try:
            yield
        finally:
            self._batching.depth -= 1
            if not self._batching.depth:
                with self._cv:
                    self._send_due_locked(time.monotonic())
                    if any(self._queues.values()):  # not due yet (--delay), or no slot: the sender's
                        self._send_cv.notify()

    def _send_due_locked(self, now: float) -> None:
        """(Caller holds self._cv.) Post the due messages at the head of every queue, as frames,
        while the destination has a free slot."""
        for p, q in self._queues.items():
            while q and q[0].due <= now and len(self._inflight[p]) < self.max_inflight and self.alive(p):
                self._isend_locked(p, self._take_frame(q, now))

    def _take_frame(self, q, now: float) -> list:
        """(Caller holds self._cv.) The due messages at the head of q that fit in one frame."""
        frame = [q.popleft()]
        size = self._nbytes(frame[0])
        while q and q[0].due <= now and size + self._nbytes(q[0]) <= self.capacity:
            size += self._nbytes(q[0])
            frame.append(q.popleft())
        return frame

    def _nbytes(self, m: Message) -> int:
        return self.header_bytes + (m.payload.numel() * self.itemsize if m.payload is not None else 0)

    @staticmethod
    def _backlogged(q, kind: int, offset: int, numel: int, now: float) -> Message | None:
        """(Caller holds self._cv.) The newest message of this kind (GRAD or PARAMS) queued for one
        destination that covers the same slice, if the queue's tail is already due (so is every
        message before it: a queue is in due order): a backlog, into which a new message of that
        slice is merged. None otherwise."""
        if kind not in (GRAD, PARAMS) or not q or q[-1].due > now:
            return None
        for m in reversed(q):
            if m.kind == kind and m.offset == offset and m.payload.numel() == numel:
                return m
        return None

    def send_last(self, kind: int = DONE, payload: torch.Tensor | None = None) -> None:
        """Post this process's last message (DONE or FINAL) to every live peer (protocol step 1)."""
        self.post(self.live_peers(), kind, payload)
        with self._cv:
            self._last_posted = True

    def get(self, timeout: float | None = None) -> Message | None:
        """The next arrived message, waiting up to timeout seconds (None: don't wait)."""
        with self._cv:
            if not self.inbox and timeout:
                self._cv.wait_for(lambda: self.inbox or self.broken, timeout=timeout)
            return self.inbox.popleft() if self.inbox else None

    def wait_peers(self, timeout: float, stop=lambda: False) -> float:
        """Block until every peer has finished (protocol step 2), timeout, or stop(); returns the
        seconds waited. Messages keep arriving (and being handled) meanwhile."""
        t = time.perf_counter()
        deadline = time.monotonic() + timeout
        with self._cv:
            while not self.peers_finished() and time.monotonic() < deadline and not stop():
                self._cv.wait(timeout=0.05)  # also wakes to see lost flags set by the launcher
        return time.perf_counter() - t

    def drain(self) -> list[Message]:
        with self._cv:
            out = list(self.inbox)
            self.inbox.clear()
        return out

    def _is_finished(self, p: int) -> bool:
        return p in self._finished or not self.alive(p)

    def peers_finished(self) -> bool:
        """Every peer has sent its last message or is gone (protocol step 2)."""
        return self.broken or all(self._is_finished(p) for p in self.peers)

    def unfinished(self) -> list[int]:
        return [p for p in self.peers if not self._is_finished(p)]

    # -- threads --------------------------------------------------------------------------
    def _guard(self, loop, *args) -> None:
        try:
            loop(*args)
        except _HandlerError as e:  # the owner's code failed: not a network problem; close() re-raises
            self.error = e.__cause__
            self._break(f"message handler failed: {type(e.__cause__).__name__}: {e.__cause__}")
        except BaseException as e:  # never let a communication error kill training
            self._break(f"{loop.__name__} failed: {type(e).__name__}: {e}")

    def _break(self, why: str) -> None:
        with self._cv:
            if not self.broken:
                self.broken = True
                self.log(f"exchange broken ({why}); training continues without communication")
            self._wake_all_locked()

    def _mark_gone(self, peer: int, why) -> None:
        with self._cv:
            self._gone_locked(peer, why)

    def _gone_locked(self, peer: int, why) -> None:
        if peer in self._gone:
            return
        self._gone.add(peer)
        self._queues[peer].clear()
        self._wake_all_locked()
        if not self.marks_lost:
            self.log(f"worker {peer} unreachable ({brief(why)}); not sending to it any more")
            return
        # torchrun: nobody else will notice (no launcher), so the loss goes on this process's board
        # for dasgd's batch takeover and the runner's end-of-run agreement (protocol step 2); the
        # job (launch/job.py) tells the other ranks through its store
        record_loss(self.board, self.rank, peer, why)

    def _wake_all_locked(self) -> None:
        """(Caller holds the lock.) Wake every waiting thread: something every wait checks changed."""
        for cv in (self._cv, self._send_cv, *self._wait_cv.values()):
            cv.notify_all()

    def log(self, text: str) -> None:
        print(f"asyncsgd: worker {self.rank}: {text}", file=sys.stderr, flush=True)

    def _isend_locked(self, d: int, frame: list) -> None:
        """Post one frame, one or more messages in order (caller holds self._cv, so posts to a
        destination stay in order)."""
        buf = wire.encode_frame(frame, self.n, self.dtype)
        try:
            work = dist.isend(buf, d, group=self.group, tag=TAG)
        except Exception as e:
            self._gone_locked(d, e)
            return
        self._inflight[d].append((frame, buf, work))
        self._wait_cv[d].notify()

    def _send_loop(self) -> None:
        """Post queued messages when due, at most MAX_INFLIGHT unreceived per destination."""
        with self._cv:
            while True:
                for p, q in self._queues.items():
                    if q and not self.alive(p):
                        q.clear()
                if self.broken:
                    return
                now = time.monotonic()
                self._send_due_locked(now)
                pending = [q[0].due for q in self._queues.values() if q]
                if self._stopping and not pending:
                    return
                # wake for the next due message to a destination with a free slot, a post, a freed
                # slot (_wait_loop notifies), or every 50 ms to see lost flags. A due message whose
                # destination has all its slots taken waits for that notify: counted here, it made
                # the timeout 0 and this loop spin under the GIL until the slot came back (a py-spy
                # --gil profile of layup x4: 2/3 of the exchange threads' GIL samples)
                sendable = [q[0].due for p, q in self._queues.items()
                            if q and len(self._inflight[p]) < self.max_inflight]
                self._send_cv.wait(timeout=min(0.05, max(0.0, min(sendable) - now)) if sendable else 0.05)

    def _wait_loop(self, d: int) -> None:
        """Wait on the messages posted to destination d, in order (a send completes when the
        receiver took it): count them, free their slots, and detect d gone. Leaves once d is
        gone, or when stopping with nothing of d's left queued or posted."""
        while True:
            with self._cv:
                while not self._inflight[d]:
                    if self.broken or not self.alive(d) or (self._stopping and not self._queues[d]):
                        return
                    self._wait_cv[d].wait(timeout=0.05)
                if not self.alive(d):
                    return  # its posted buffers stay referenced in _inflight: gloo may still hold them
                frame, buf, work = self._inflight[d][0]
            try:
                work.wait()
                ok = True
            except Exception as e:
                ok = False
                self._mark_gone(d, e)
            with self._cv:  # the counters have a writer per destination now: under the lock
                self._inflight[d].popleft()
                self._send_cv.notify()  # a slot to d is free
                if ok:
                    self.board.exchange[self.rank, X.SENDS] += 1
                for m in frame if ok else ():  # counted per message: bytes = messages x (header + payload)
                    self.ctx.count_message(self._nbytes(m), 1)
                    self.board.exchange[self.rank, X.DATA_SENT if m.payload is not None else X.CONTROL_SENT] += 1
                    if m.payload is not None and self.slices is not None:
                        self.board.layer_sent[self.rank, self._slice_index[m.offset]] += 1

    def _recv_loop(self, peer: int) -> None:
        """Receive peer's messages, in order, until its last one (DONE/FINAL), its failure, or a
        broken exchange."""
        while True:
            with self._cv:
                if self.broken or self._is_finished(peer):
                    return
            buf = wire.recv_buffer(self.n, self.numel, self.dtype, self.capacity)  # filled: a short frame shows
            try:
                dist.recv(buf, src=peer, group=self.group, tag=TAG)
            except Exception as e:
                if "imed out" in str(e):
                    raise  # gloo's group timeout: the whole context is gone
                self._mark_gone(peer, e)
                return
            messages, malformed = wire.decode_frame(buf, self.n, self.rank, self.numel, self.dtype, src=peer,
                                                    slices=self.slices)
            for msg in messages:
                self._arrived(peer, msg)
            if malformed is not None:
                # one recv is one whole frame (gloo delimits it), so dropping the rest of it keeps
                # us in step with the sender: the next recv is its next frame (wire.py, "Framing")
                self._malformed(peer, malformed.reason)

    def _arrived(self, peer: int, msg: Message) -> None:
        """A valid message from peer: counted, then handled (the owner's handler) or put in the inbox."""
        kind, posted_us = msg.kind, msg.posted_us
        latency_us = max(0, int(time.time() * 1e6) - posted_us)  # post -> here (one clock when local)
        with self._cv:
            x = self.board.exchange[self.rank]
            x[X.LATENCY_SUM_US] += latency_us
            x[X.RECEIVED] += 1
            if latency_us > x[X.LATENCY_MAX_US]:
                x[X.LATENCY_MAX_US] = latency_us
        if self.handler is not None:
            try:
                handled = self.handler(msg)
            except BaseException as e:
                raise _HandlerError() from e
        else:
            handled = False
        if not handled or kind in (FINAL, DONE):  # a handled update changes nothing anyone waits on
            with self._cv:
                if not handled:
                    self.inbox.append(msg)
                if kind in (FINAL, DONE):
                    self._finished.add(peer)
                self._cv.notify_all()

    def _malformed(self, peer: int, reason: str) -> None:
        """A malformed message from peer was dropped: count it (board.malformed, this worker's
        row; the receiver threads write it under self._cv), and log the first one per peer."""
        with self._cv:
            self.board.malformed[self.rank] += 1
            first = peer not in self._malformed_from
            self._malformed_from.add(peer)
        if first:
            self.log(f"dropped a malformed message from worker {peer} ({reason}); "
                      "further ones are counted in malformed_messages, not logged")


_LOSS_LOCK = threading.Lock()  # one process's exchanges and its job's loss watcher set board.lost


def record_loss(board, rank: int, peer: int, why) -> bool:
    """torchrun: worker `rank` learned that `peer` is gone, from its own exchange (a send or
    receive failed) or from the job's store (another rank's exchange saw it: launch/job.py). Sets
    board.lost[peer] and says so once per process, whoever learned it first; False when already known.
    Rank 0's loss is not logged here: the runner stops this rank and says so (one line, exit 1)."""
    with _LOSS_LOCK:
        if int(board.lost[peer]):
            return False
        board.lost[peer] = 1
    if peer != 0:
        print(f"asyncsgd: worker {rank}: worker {peer} is gone ({brief(why)}); continuing with the survivors",
              file=sys.stderr, flush=True)
    return True


class _HandlerError(Exception):
    pass


def brief(error) -> str:
    """The gist of a gloo error for a one-line log: its first sentence without the source location
    ("[.../gloo/transport/tcp/pair.cc:553] Connection closed by peer [10.0.0.2]:4012. This is
    typically caused by ..." -> "Connection closed by peer [10.0.0.2]:4012")."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"^\[[^\]]*\] ", "", text).split(". ")[0][:200]


def peer_gone(error: BaseException) -> bool:
    """Whether a torch.distributed error says the other end of a connection went away."""
    return isinstance(error, RuntimeError) and any(
        s in str(error) for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))
