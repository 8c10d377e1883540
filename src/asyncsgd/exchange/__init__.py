"""The exchange layer: how worker processes share what they learn, over torch.distributed.

wire.py       the wire format: message header layout, kinds (GRAD, PARAMS, FINAL, DONE), encode,
              decode + validation (a malformed message is dropped and counted), header_bytes(N).
transport.py  Exchange: messages (one byte tensor: an int64 header, then the payload) over
              gloo point-to-point, a sender thread, a waiter and a receiver thread per peer, delays paid
              in the sender thread, the shutdown protocol and failure handling (its docstring).
summary.py    the summary.json fields of the algorithms that use it.
averaging.py  BackgroundAverager: parameters averaged across processes in a background thread
              (rounds, final average, lost peers dropped); lpap and pdasgd --sharing average.
policy.py     Topology (all / ring / random:M) and StalenessPolicy (none / scale / drop / adaptive),
              vector-clock staleness.
"""

from .policy import StalenessPolicy, Topology, staleness
from .transport import Exchange
from .wire import DONE, FINAL, GRAD, PARAMS, Malformed, Message, header_bytes

__all__ = ["Exchange", "Message", "Malformed", "GRAD", "PARAMS", "FINAL", "DONE", "header_bytes", "Topology",
           "StalenessPolicy", "staleness"]
