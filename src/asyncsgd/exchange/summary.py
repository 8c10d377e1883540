"""summary.json fields of the algorithms that use the exchange (dasgd, lpap, layup, pdasgd --sharing average)."""

from __future__ import annotations

from ..board import ExchangeCounter as X
from .wire import header_bytes


def exchange_summary(record, out: dict, payload_numel: int, payload_itemsize: int = 4) -> None:
    b = record.board
    metrics = record.metrics
    final = metrics[-1] if metrics else {}
    out["consensus_distance"] = final.get("consensus_distance")
    out["final_avg_test_accuracy"] = final.get("avg_test_accuracy")
    out["final_avg_test_loss"] = final.get("avg_test_loss")
    header = header_bytes(b.workers)
    payload = payload_numel * payload_itemsize
    x = b.exchange
    total = lambda c: int(x[:, c].sum())
    out["exchange"] = {
        "transport": "torch.distributed point-to-point (gloo), header + payload, one send per message "
                     "or per frame of messages to one peer",
        "sends": total(X.SENDS),  # gloo sends: fewer than the messages where frames carried several
        "rounds": total(X.ROUNDS),
        "data_messages": total(X.DATA_SENT),  # header + payload
        "control_messages": total(X.CONTROL_SENT),  # header only (DONE)
        "coalesced": total(X.COALESCED),  # gradients summed into a queued message (backlog)
        "received": total(X.RECEIVED),
        "latency_ms_mean": round(total(X.LATENCY_SUM_US) / 1e3 / max(1, total(X.RECEIVED)), 3),  # post -> received
        "latency_ms_max": round(float(x[:, X.LATENCY_MAX_US].max()) / 1e3, 3),
        "header_bytes": header,
        "payload_bytes": payload,
        "per_worker": [{"worker": w, "rounds": int(x[w, X.ROUNDS]), "data_messages": int(x[w, X.DATA_SENT]),
                        "control_messages": int(x[w, X.CONTROL_SENT]), "sends": int(x[w, X.SENDS]),
                        "coalesced": int(x[w, X.COALESCED]),
                        "malformed": int(b.malformed[w])} for w in range(b.workers)],
    }
    # received and dropped (exchange/wire.py's rules): never applied, not in "received"
    out["malformed_messages"] = int(b.malformed.sum())
