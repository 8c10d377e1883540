#!/usr/bin/env python
"""CPU and wall time of one gloo point-to-point message between two local processes: rank 0 posts
`--messages` isends of `--floats` float32s (plus the exchange's header) to rank 1, at most 2 in
flight as the exchange allows (exchange/transport.MAX_INFLIGHT), and rank 1 receives them. Each
rank prints microseconds per message, wall and CPU (its own process: gloo's I/O thread included).
The floor under what one layup layer message costs (docs/layup.md, "Gossip averaging").

    python bench/gloo_p2p.py [--floats 3000] [--messages 4000]
"""
import argparse
import resource
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rank_main(rank: int, port: int, floats: int, messages: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    buf = torch.zeros(floats * 4 + 96, dtype=torch.uint8)  # payload + a 4-worker header
    dist.barrier()
    t0, c0 = time.perf_counter(), cpu_s()
    if rank == 0:
        inflight = []
        for _ in range(messages):
            inflight.append(dist.isend(buf, 1, tag=7))
            if len(inflight) >= 2:
                inflight.pop(0).wait()
        for work in inflight:
            work.wait()
    else:
        for _ in range(messages):
            dist.recv(buf, 0, tag=7)
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    print(f"rank {rank} ({'sender' if rank == 0 else 'receiver'}): {1e6 * wall / messages:.1f} us wall, "
          f"{1e6 * cpu / messages:.1f} us CPU per message of {floats} floats", flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.error = lambda message: p.exit(2, f"gloo_p2p.py: {message}; accepted: see --help\n")  # one line, not argparse's usage block
    p.add_argument("--floats", type=int, default=3000, help="payload floats (cnn1d's largest layer: 3,200)")
    p.add_argument("--messages", type=int, default=4000)
    a = p.parse_args()
    for name in ("floats", "messages"):  # one line and exit 2, not a traceback from the ranks
        if getattr(a, name) < 1:
            p.exit(2, f"gloo_p2p.py: --{name} {getattr(a, name)} is not accepted; accepted: an integer >= 1\n")
    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(rank_main, args=(port, a.floats, a.messages), nprocs=2, start_method="spawn")


if __name__ == "__main__":
    main()
