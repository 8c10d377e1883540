"""The exchange's wire format: what one message between worker processes looks like on the wire,
how it is encoded, and how an arrival is decoded and validated. No threads, no torch.distributed:
transport.py moves these buffers; this module says what is in them.

Layout (no pickles): a message is one contiguous byte tensor, and one gloo send (transport.TAG)
carries one message or a frame of several to the same peer, back to back (encode_frame: layup's
layers of one round; the receiver reads them in order, decode_frame):
  header   int64 x (HEADER_FIELDS + N): [sender, seq, kind, length, steps, posted_us, offset,
           decay_ppm, clock_0 .. clock_{N-1}]
           sender     the sending worker's rank (0 .. N-1)
           seq        the sender's round number (dasgd: its message count; lpap: the averaging round)
           kind       GRAD 1, PARAMS 2, FINAL 3, DONE 4 (KIND_NAMES)
           length     payload elements: the run's payload size for GRAD / PARAMS / FINAL (or, with
                      slices, one slice's size), 0 for DONE
           steps      local updates summed into the payload (dasgd's --send-every, coalescing)
           posted_us  the sender's wall clock (microseconds) when it posted the message: latency
           offset     where the payload sits in the flat parameter vector (element index): 0 for
                      a whole-vector payload (dasgd, lpap) and for DONE; layup sends one layer's
                      slice [offset, offset + length) per message
           decay_ppm  optim.decay_fraction (the schedule's lr over its peak, 1 in the warm-up) when the
                      sender made the payload's first update, in millionths (0 .. 1,000,000):
                      --staleness cap damps a peer's update by the lr it was made at, not by the
                      receiver's lr when it arrives (a late update made at the peak would otherwise
                      be released from its damping by a decayed lr); 1,000,000 for DONE
           clock      the sender's vector clock (policy.py; layup: the clock of the slice's layer)
  payload  `length` elements of the run's dtype (float32), absent for DONE (header only).
header_bytes(N) = (HEADER_FIELDS + N) * 8. The header and the payload are views of the buffer.

Validation (decode): a message is used only if
  - sender is in 0 .. N-1, is not the receiver itself, and is the peer it was received from;
  - kind is one of GRAD, PARAMS, FINAL, DONE;
  - length and offset are what the kind allows: for GRAD / PARAMS / FINAL offset >= 0 and
    offset + length <= the run's payload size, and the slice [offset, offset + length) is the
    whole vector (offset 0, length = payload size) or, when the receiver was given its slices
    (layup: the layer boundaries), exactly one of them; for DONE length 0 and offset 0;
  - seq, steps, posted_us and every clock entry are >= 0, and decay_ppm is within 0 .. 1,000,000;
  - the payload is finite (no NaN, no inf).
Anything else is malformed: decode returns Malformed(reason) instead of a Message. The transport
drops it whole (never applied, never in the inbox, never used to index the vector clock or to
finish a peer) and counts it in board.malformed[receiver].

Framing, and why a malformed header cannot desynchronise the stream: a frame is one gloo send,
and gloo delimits it itself (its own preamble carries the byte count), so the receiver never uses
a header's `length` to decide how much to read next: one recv is always exactly one frame. Within a
frame the next message starts where the previous one's payload ends (its `length`), and the frame
ends where the receive buffer's fill begins (a header whose sender is UNSET) or at the buffer's
end. A malformed message therefore costs the rest of its frame at most (the messages before it in
the frame were valid and are used); the next recv starts at the next frame, so the receiver drops
it and keeps receiving. (A protocol with a separate payload recv would have to trust `length` to
know whether to post that recv, and a wrong one would shift every later message by one; that is
one reason there is a single send.)

What the receiver cannot see: gloo does not report how many bytes a recv got. The receive buffer
has the largest frame's size (gloo accepts a shorter one into it), so recv_buffer() fills it with
bytes 0xFF before the recv: read as int64 that is -1 (UNSET: a missing sender, kind, length or
clock entry is invalid, and a header that begins with it ends the frame), read as a float it is
NaN (a payload shorter than its header's length is not finite). A frame LONGER than the buffer is
not something the receiver can drop: gloo's I/O thread aborts the receiving process ("Received
data size doesn't match expected size"); the transport packs a frame only up to the capacity both
ends compute from the run (frame_capacity: one header per slice plus one, and the whole vector).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GRAD, PARAMS, FINAL, DONE = 1, 2, 3, 4
KIND_NAMES = {GRAD: "grad", PARAMS: "params", FINAL: "final", DONE: "done"}
PAYLOAD_KINDS = frozenset((GRAD, PARAMS, FINAL))  # carry the full payload; DONE is a header only
HEADER_FIELDS = 8  # sender, seq, kind, length, steps, posted_us, offset, decay_ppm; then the clock (N entries)
SENDER, SEQ, KIND, LENGTH, STEPS, POSTED_US, OFFSET, DECAY_PPM = range(HEADER_FIELDS)  # positions in the header
PPM = 1_000_000  # decay_ppm's unit: millionths of the peak lr
UNSET = -1  # what recv_buffer() puts in the header: never a valid value of any field


@dataclass
class Message:
    sender: int
    kind: int
    seq: int
    steps: int
    clock: torch.Tensor | None
    payload: torch.Tensor | None
    due: float = 0.0
    posted_us: int = 0  # sender's wall clock (microseconds) at post(): latency measurement
    owned: bool = False  # payload belongs to this queue entry only (may be summed into)
    offset: int = 0  # the payload's first element in the flat parameter vector (layup: a layer's slice)
    decayed: float = 1.0  # the sender's decay_fraction at the payload's first update (--staleness cap)


@dataclass(frozen=True)
class Malformed:
    """Why an arrived buffer is not a valid message (decode's answer instead of a Message)."""
    reason: str


def header_bytes(n_workers: int) -> int:
    return (HEADER_FIELDS + n_workers) * 8


def itemsize(dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def encode(m: Message, n_workers: int, dtype=torch.float32) -> torch.Tensor:
    """The message as one byte tensor: the header, then the payload (if any)."""
    hb = header_bytes(n_workers)
    length = m.payload.numel() if m.payload is not None else 0
    buf = torch.empty(hb + length * itemsize(dtype), dtype=torch.uint8)
    header = buf[:hb].view(torch.int64)
    header[:HEADER_FIELDS] = torch.tensor([m.sender, m.seq, m.kind, length, m.steps, m.posted_us, m.offset,
                                           decay_ppm(m.decayed)], dtype=torch.int64)
    header[HEADER_FIELDS:] = m.clock if m.clock is not None else 0
    if length:
        buf[hb:].view(dtype).copy_(m.payload.reshape(-1))
    return buf


def encode_frame(messages: list, n_workers: int, dtype=torch.float32) -> torch.Tensor:
    """Several messages to one peer as one byte tensor: their encodings back to back."""
    if len(messages) == 1:
        return encode(messages[0], n_workers, dtype)
    return torch.cat([encode(m, n_workers, dtype) for m in messages])


def frame_capacity(n_workers: int, numel: int, dtype=torch.float32, n_slices: int = 0) -> int:
    """The largest frame of a run, in bytes: a message with the whole vector (no slices), or one
    message per slice plus a header-only DONE (layup's layers of a round, then its last message)."""
    return header_bytes(n_workers) * (n_slices + 1 if n_slices else 1) + numel * itemsize(dtype)


def decay_ppm(decayed: float) -> int:
    """A decay fraction (0 .. 1) as the header's integer millionths, rounded up: a rounded value
    never damps less than the exact one would."""
    return min(PPM, max(0, math.ceil(decayed * PPM)))


def recv_buffer(n_workers: int, numel: int, dtype=torch.float32, capacity: int | None = None) -> torch.Tensor:
    """A receive buffer for the largest frame (capacity bytes; default one whole-vector message),
    filled with bytes 0xFF so that whatever a short frame leaves unwritten is invalid: UNSET as a
    header entry, NaN as a payload element (see the module docstring)."""
    size = header_bytes(n_workers) + numel * itemsize(dtype) if capacity is None else capacity
    return torch.full((size,), 0xFF, dtype=torch.uint8)


def decode_frame(buf: torch.Tensor, n_workers: int, rank: int, numel: int, dtype=torch.float32,
                 src: int | None = None, slices: frozenset | None = None) -> tuple[list, Malformed | None]:
    """The messages of an arrived frame, in order, and the first malformed one's Malformed (None if
    none was): what follows a malformed message is not read (its length cannot be trusted)."""
    hb, size, out, pos = header_bytes(n_workers), itemsize(dtype), [], 0
    while pos + hb <= buf.numel():
        rest = buf[pos:] if pos % 8 == 0 else buf[pos:].clone()  # an int64 view needs 8-byte alignment
        if pos and int(rest[:8].view(torch.int64)) == UNSET:
            break  # the buffer's fill: the frame has ended
        msg = decode(rest, n_workers, rank, numel, dtype, src=src, slices=slices)
        if isinstance(msg, Malformed):
            return out, msg
        out.append(msg)
        pos += hb + (msg.payload.numel() * size if msg.payload is not None else 0)
    return out, None


def decode(buf: torch.Tensor, n_workers: int, rank: int, numel: int, dtype=torch.float32,
           src: int | None = None, slices: frozenset | None = None) -> Message | Malformed:
    """The Message in an arrived buffer (a view of it: header, clock and payload share its memory),
    or Malformed(reason) if it breaks a rule of the module docstring. rank: the receiver; numel:
    the run's payload size; src: the peer it was received from (its sender field must match);
    slices: the (offset, length) pairs a payload may cover (None: only the whole vector)."""
    hb = header_bytes(n_workers)
    size = itemsize(dtype)
    if buf.dtype != torch.uint8 or buf.dim() != 1 or buf.numel() < hb:
        return Malformed(f"not a message buffer ({buf.dtype}, {buf.numel()} bytes < header {hb})")
    header = buf[:hb].view(torch.int64)
    sender, seq, kind, length, steps, posted_us, offset, decayed = header[:HEADER_FIELDS].tolist()
    clock = header[HEADER_FIELDS:]
    if not 0 <= sender < n_workers:
        return Malformed(f"sender {sender} out of range 0..{n_workers - 1}")
    if sender == rank:
        return Malformed(f"sender {sender} is the receiver itself")
    if src is not None and sender != src:
        return Malformed(f"sender {sender} but received from worker {src}")
    if kind not in KIND_NAMES:
        return Malformed(f"unknown kind {kind}")
    if kind not in PAYLOAD_KINDS:
        if length != 0 or offset != 0:
            return Malformed(f"{KIND_NAMES[kind]} with length {length}, offset {offset} (must be 0, 0)")
    elif offset < 0 or length < 1 or offset + length > numel:
        return Malformed(f"{KIND_NAMES[kind]} with length {length} at offset {offset} "
                         f"(must lie within the {numel} elements)")
    elif slices is None and (offset, length) != (0, numel):
        return Malformed(f"{KIND_NAMES[kind]} with length {length} at offset {offset} (must be {numel} at 0)")
    elif slices is not None and (offset, length) not in slices:
        return Malformed(f"{KIND_NAMES[kind]} with length {length} at offset {offset} (not one layer's slice)")
    if seq < 0 or steps < 0 or posted_us < 0:
        return Malformed(f"negative seq / steps / posted_us ({seq}, {steps}, {posted_us})")
    if not 0 <= decayed <= PPM:
        return Malformed(f"decay_ppm {decayed} out of range 0..{PPM}")
    if bool((clock < 0).any()):
        return Malformed(f"negative vector clock entry ({clock.tolist()})")
    payload = None
    if length:
        if buf.numel() < hb + length * size:
            return Malformed(f"length {length} but only {(buf.numel() - hb) // size} payload elements")
        payload = buf[hb:hb + length * size].view(dtype)
        if payload.is_floating_point() and not bool(torch.isfinite(payload).all()):
            return Malformed("payload not finite (NaN or inf; or shorter than its length)")
    return Message(sender, kind, seq, steps, clock, payload, posted_us=posted_us, offset=offset,
                   decayed=decayed / PPM)
