"""Batched serving throughput of two source trees side by side: ``camim serve`` from a baseline tree (e.g. an
older commit, ``git archive REV | tar -x -C /tmp/base``) and from this checkout, same model, same flags, same
posts, load rounds alternating between them (ABBA order) in one process; prints each round, the median req/s of
each and their ratio.

    python benchmarks/serve_ab.py RUN_OR_MODEL_DIR --baseline /tmp/base [--rounds 6] [--clients 16]

The claim "throughput unchanged" is the median ratio; the spread of the per-round ratios says how far one
round on a shared machine can be trusted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

from serve_load import ROOT, _load, load_posts, start_server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a training run folder or its model/")
    p.add_argument("--baseline", type=Path, required=True, help="the source tree to compare with (has src/)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=1500, help="per round and server")
    p.add_argument("--flags", default="--max-queue 64 --threads 1 --max-batch-size 16")
    args = p.parse_args(argv)
    posts, _ = load_posts(args.model, None)
    bodies = [json.dumps(post).encode() for post in posts]
    rates: dict[str, list[float]] = {"baseline": [], "this": []}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {}
        try:
            for name, root in (("baseline", args.baseline), ("this", ROOT)):
                servers[name] = start_server(name, args.model, Path(tmp), args.flags.split(), root=root)
            for s in servers.values():
                asyncio.run(_load(s.port, bodies, args.clients, 500, 30))  # warm-up
            for r in range(args.rounds):
                order = list(servers.items()) if r % 2 == 0 else list(reversed(servers.items()))
                for name, s in order:
                    res = asyncio.run(_load(s.port, bodies, args.clients, args.requests, 30)).summary()
                    rates[name].append(res["req_per_s"])
                    print(f"round {r} {name:<8} {res['req_per_s']:7.1f} req/s  p99 {res['p99_ms']:.0f} ms  "
                          f"errors {res['errors']}", flush=True)  # fmt: skip
        finally:
            for s in servers.values():
                s.stop()
    base, this = (statistics.median(rates[k]) for k in ("baseline", "this"))
    print(f"median req/s: baseline {base:.1f}, this {this:.1f}, this/baseline {this / base:.3f}")
    print("per-round ratios:", " ".join(f"{b / a:.3f}" for a, b in zip(rates["baseline"], rates["this"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
