"""summary.json fields of the algorithms that use the exchange (dasgd, lpap)."""

from __future__ import annotations

from .wire import header_bytes


def exchange_summary(launcher, out: dict, payload_numel: int, payload_itemsize: int = 4) -> None:
    b, cfg = launcher.board, launcher.cfg
    metrics = getattr(launcher, "metrics", None) or []
    final = metrics[-1] if metrics else {}
    out["consensus_distance"] = final.get("consensus_distance")
    out["final_avg_test_accuracy"] = final.get("avg_test_accuracy")
    out["final_avg_test_loss"] = final.get("avg_test_loss")
    header = header_bytes(b.workers)
    payload = payload_numel * payload_itemsize
    x = b.exchange
    out["exchange"] = {
        "transport": "torch.distributed point-to-point (gloo), header + payload tensors",
        "rounds": int(x[:, 0].sum()),
        "data_messages": int(x[:, 1].sum()),  # header + payload
        "control_messages": int(x[:, 2].sum()),  # header only (DONE)
        "coalesced": int(x[:, 3].sum()),  # gradients summed into a queued message (backlog)
        "received": int(x[:, 5].sum()),
        "latency_ms_mean": round(float(x[:, 4].sum()) / 1e3 / max(1, int(x[:, 5].sum())), 3),  # post -> received
        "latency_ms_max": round(float(x[:, 6].max()) / 1e3, 3),
        "header_bytes": header,
        "payload_bytes": payload,
        "per_worker": [{"worker": w, "rounds": int(x[w, 0]), "data_messages": int(x[w, 1]),
                        "control_messages": int(x[w, 2]), "coalesced": int(x[w, 3])} for w in range(b.workers)],
    }
