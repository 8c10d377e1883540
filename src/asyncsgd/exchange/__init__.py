"""The exchange layer: how worker processes share what they learn, over torch.distributed.

transport.py  Exchange: messages (one byte tensor: an int64 header, then the payload) over
              gloo point-to-point, a sender thread and a receiver thread per peer, delays paid
              in the sender thread, the shutdown protocol and failure handling (its docstring).
summary.py    the summary.json fields of the algorithms that use it.
averaging.py  BackgroundAverager: parameters averaged across processes in a background thread
              (rounds, final average, lost peers dropped); lpap and pdasgd --sharing average.
policy.py     Topology (all / ring / random:M) and StalenessPolicy (none / scale / drop / adaptive),
              vector-clock staleness.
"""

from .policy import StalenessPolicy, Topology, staleness
from .transport import DONE, FINAL, GRAD, PARAMS, Exchange, Message

__all__ = ["Exchange", "Message", "GRAD", "PARAMS", "FINAL", "DONE", "Topology", "StalenessPolicy", "staleness"]
