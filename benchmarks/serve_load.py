"""``camim serve`` under load: batching off vs on, overload, soak; against the model's in-process ceiling.

    python benchmarks/serve_load.py MODEL_DIR [--device cpu|cuda] [--threads N] [--json out.json]

MODEL_DIR is a training output (``camim demo`` writes ``camim-demo/runs/offline-tmr-cam-mi``). Posts: the
test split of the data folder beside a demo run (``MODEL_DIR/../../data``, with its MiniCPM captions) or
``--data-dir``; otherwise built-in synthetic posts with captions. Every request is a token list with two
token spans and a caption (no image).

Measured side by side in one run:

1. the ceiling: ``Predictor.predict_batch`` at batch 16 in this process with the server's torch threads,
   no HTTP (and one post at a time, for reference), before the first concurrency level and after each (a
   level is compared with the mean of the two around it), called from a worker thread as the server's
   model thread calls it (the main thread's figure is shown too);
2. two ``camim serve`` processes on 127.0.0.1, batching off (``--max-batch-size 1``: one post per forward,
   the old behaviour) and on (``--max-batch-size 16``), loaded in turn at each concurrency (1, 4, 16, 64) by
   closed-loop clients on keep-alive connections: requests/s, p50/p95/p99 latency, errors, mean posts per
   forward (from the server's ``/metrics``);
3. overload: concurrency 256 against ``--max-queue 64``: counts of 200, 503 and anything else, and whether
   the server still answers ``/healthz``;
4. soak: 10,000 requests at concurrency 16; the server's resident memory before and after.

Every phase sends a bounded number of requests, each with a timeout; servers are stopped with SIGTERM by PID
(their exit status is reported). Targets (issue 28, the demo model on the 2-core CPU machine): at
concurrency 16 with batching on, >= 80% of the ceiling and >= 2x batching off (one post per forward), p99
<= 250 ms, no errors; overload answers only 200 and 503 and the server stays up; RSS grows <= 50 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1, 4, 16, 64)
CEILING_BATCH = 16
TARGET_CEILING_SHARE, TARGET_SPEEDUP, TARGET_P99_MS, TARGET_RSS_MB = 0.80, 2.0, 250.0, 50.0


# ---------------------------------------------------------------------------- posts
def load_posts(model_dir: Path, data_dir: Path | None, n: int = 256) -> tuple[list[dict], str]:
    """Request bodies: the demo world's test posts with their captions when found, else synthetic ones."""
    data_dir = data_dir or model_dir.resolve().parent.parent / "data"
    if (data_dir / "ours_rel2id.json").exists():
        sys.path.insert(0, str(ROOT / "src"))
        from camim.data import MNREDataset

        ds = MNREDataset(data_dir, split="test", caption_source="minicpm", modalities=("caption",))
        posts = [_body(ds[i].tokens, ds[i].head, ds[i].tail, ds[i].caption) for i in range(min(n, len(ds)))]
        return posts, f"{data_dir} (test split, {len(posts)} posts)"
    rng = random.Random(0)
    words = "rt the new team player plays for city festival held in london with his dog at park today".split()
    posts = []
    for _ in range(n):
        tokens = [rng.choice(words) for _ in range(rng.randint(6, 20))]
        h, t = sorted(rng.sample(range(len(tokens)), 2))
        caption = " ".join(rng.choice(words) for _ in range(rng.randint(8, 24)))
        posts.append(
            {"token": tokens, "head": {"pos": [h, h + 1]}, "tail": {"pos": [t, t + 1]}, "caption": caption}
        )
    return posts, f"synthetic ({n} posts)"


def _body(tokens, head, tail, caption) -> dict:
    return {
        "token": tokens,
        "head": {"pos": [head.start, head.end]},
        "tail": {"pos": [tail.start, tail.end]},
        "caption": caption,
    }


# ---------------------------------------------------------------------------- ceiling
class Ceiling:
    """Posts/s of ``Predictor.predict_batch`` at batch 16 (and of one post at a time) in this process, with
    the server's torch threads; measured before and after the servers' load phases (background load drifts)."""

    def __init__(self, model_dir: Path, posts: list[dict], threads: int | None, device: str, rounds: int):
        import torch

        sys.path.insert(0, str(ROOT / "src"))
        from camim.inference import Predictor

        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.predictor = Predictor.from_pretrained(model_dir, device=device)
        items = [{**p, "head": tuple(p["head"]["pos"]), "tail": tuple(p["tail"]["pos"])} for p in posts]
        self.batch = (items * (1 + CEILING_BATCH * rounds // len(items)))[: CEILING_BATCH * rounds]
        self.singles = self.batch[: max(32, rounds * 2)]
        self.runs: list[dict] = []
        self.measure()  # warm-up: every sequence length once (first shapes are slow on CPU), not kept
        self.runs.clear()

    def measure(self) -> dict:
        """One timing of each, run in a worker thread as the server's model thread runs forwards (on this
        2-core machine under background load, 2-thread forwards called from the main thread ran several
        times slower than from any other thread), and batch 16 from the main thread for comparison."""
        out: dict[str, float] = {}
        worker = threading.Thread(target=lambda: out.update(self._timed()), name="ceiling")
        worker.start()
        worker.join()
        start = time.perf_counter()
        self.predictor.predict_batch(self.batch, batch_size=CEILING_BATCH)
        out["batch16_main_thread_posts_per_s"] = len(self.batch) / (time.perf_counter() - start)
        self.runs.append(out)
        return out

    def _timed(self) -> dict[str, float]:
        start = time.perf_counter()
        self.predictor.predict_batch(self.batch, batch_size=CEILING_BATCH)
        batched = len(self.batch) / (time.perf_counter() - start)
        start = time.perf_counter()
        for item in self.singles:
            self.predictor.predict_batch([item], batch_size=1)
        single = len(self.singles) / (time.perf_counter() - start)
        return {"batch16_posts_per_s": batched, "single_posts_per_s": single}

    def summary(self) -> dict:
        """The mean of the runs (the figure the targets use), and each run."""
        mean = {k: sum(r[k] for r in self.runs) / len(self.runs) for k in self.runs[0]}
        return {**mean, "threads": self.threads, "runs": self.runs}


# ---------------------------------------------------------------------------- server process
@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    log: Path

    def rss_mb(self, field: str = "VmRSS") -> float:
        """Resident memory now (``VmHWM``: its peak since the start or :meth:`reset_peak`), from /proc."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) / 1024

    def reset_peak(self) -> None:
        """Set the peak resident memory (``VmHWM``) to the current one (Linux' clear_refs)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def metrics(self) -> dict[str, float]:
        status, body = _get(self.port, "/metrics")
        if status != 200:
            raise RuntimeError(f"{self.name}: /metrics answered {status}")
        out = {}
        for line in body.decode().splitlines():
            if line.startswith("camim_batch_size_sum") or line.startswith("camim_batch_size_count"):
                name, value = line.split()
                out[name] = float(value)
        return out

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM by PID; the exit status (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            return None


def start_server(
    name: str, model_dir: Path, logs: Path, flags: list[str], timeout: float = 180, root: Path | None = None
) -> Server:
    """``camim serve`` from the source tree ``root`` (default: this checkout) on a free 127.0.0.1 port,
    returned once ``/readyz`` answers 200."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = logs / f"{name}.log"
    src = (root or ROOT) / "src"
    env = {**os.environ, "PYTHONPATH": str(src) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "camim", "serve", "--model", str(model_dir), "--port", str(port), *flags]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(name, proc, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name}: camim serve exited with {proc.returncode}:\n{log.read_text()[-2000:]}"
            )
        try:
            if _get(port, "/readyz")[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{name}: not ready within {timeout} s:\n{log.read_text()[-2000:]}")


def _get(port: int, path: str) -> tuple[int, bytes]:
    """One GET over a fresh connection (probes and metrics)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# ---------------------------------------------------------------------------- load client
class Connection:
    """One keep-alive HTTP/1.1 connection posting JSON (a minimal client, so that the load generator's
    own CPU use stays small next to the server's on a 2-core machine)."""

    def __init__(self, port: int, headers: str = ""):
        self.port = port
        self.headers = headers  # extra header lines, each ending in \r\n
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{self.headers}\r\n"
        self.writer.write(head.encode() + body)
        headers = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        status = int(headers.split(None, 2)[1])
        length = int(re.search(r"content-length: *(\d+)", headers).group(1))
        await self.reader.readexactly(length)
        if "connection: close" in headers:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list, repr=False)  # of the 200s
    statuses: Counter = field(default_factory=Counter)  # status code (or "timeout" / "error") -> count

    def summary(self) -> dict:
        lat = sorted(self.latencies_ms)

        def pct(q: float) -> float | None:
            return lat[min(len(lat) - 1, round(q / 100 * (len(lat) - 1)))] if lat else None

        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "req_per_s": self.requests / self.seconds,
            "ok_per_s": len(lat) / self.seconds,
            "p50_ms": pct(50),
            "p95_ms": pct(95),
            "p99_ms": pct(99),
            "errors": self.requests - len(lat),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=str)},
        }


async def _load(port: int, bodies: list[bytes], concurrency: int, total: int, timeout: float) -> LoadResult:
    """``total`` requests from ``concurrency`` closed-loop clients, each request bounded by ``timeout``."""
    result = LoadResult(concurrency, total, 0.0)
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        conn = Connection(port)
        while next_index < total:
            body = bodies[next_index % len(bodies)]
            next_index += 1
            start = time.perf_counter()
            try:
                status = await asyncio.wait_for(conn.post("/api/predict", body), timeout)
            except asyncio.TimeoutError:
                result.statuses["timeout"] += 1
                conn.close()
                continue
            except (OSError, asyncio.IncompleteReadError, ValueError, AttributeError):
                result.statuses["error"] += 1
                conn.close()
                continue
            result.statuses[status] += 1
            if status == 200:
                result.latencies_ms.append(1000 * (time.perf_counter() - start))
        conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - start
    return result


def load(server: Server, bodies: list[bytes], concurrency: int, total: int, timeout: float) -> dict:
    """One load phase, with the mean posts per forward the server reports for it."""
    asyncio.run(_load(server.port, bodies, concurrency, min(total, 2 * concurrency), timeout))  # warm-up
    before = server.metrics()
    out = asyncio.run(_load(server.port, bodies, concurrency, total, timeout)).summary()
    after = server.metrics()
    forwards = after["camim_batch_size_count"] - before["camim_batch_size_count"]
    posts = after["camim_batch_size_sum"] - before["camim_batch_size_sum"]
    out["mean_batch"] = posts / forwards if forwards else None
    return out


# ---------------------------------------------------------------------------- phases
def compare(
    servers: dict[str, Server], bodies: list[bytes], args: argparse.Namespace, ceiling: Ceiling
) -> dict[str, list[dict]]:
    """Batching off and on at each concurrency, in turn, with the ceiling measured before and after each
    level (so that drifting background load hits all three alike)."""
    for server in servers.values():  # warm-up: every post alone and in batches (first shapes are slow)
        for c in (1, 16):
            asyncio.run(_load(server.port, bodies, c, len(bodies), args.timeout))
    rows: dict[str, list[dict]] = {name: [] for name in servers}
    before = ceiling.measure()["batch16_posts_per_s"]
    for c in args.levels:
        total = max(args.requests, 4 * c)
        for name, server in servers.items():
            rows[name].append(load(server, bodies, c, total, args.timeout))
        after = ceiling.measure()["batch16_posts_per_s"]
        rows["on"][-1]["ceiling"] = (before + after) / 2
        print(f"  ceiling around c={c}: {before:.1f} / {after:.1f} posts/s", flush=True)
        before = after
        for name in servers:
            r = rows[name][-1]
            print(f"  {name:3s} c={c:<3d} {r['req_per_s']:7.1f} req/s  p50 {_ms(r['p50_ms'])}  p99 {_ms(r['p99_ms'])}"
                  f"  errors {r['errors']}  batch {_num(r['mean_batch'])}", flush=True)  # fmt: skip
    return rows


def overload(server: Server, bodies: list[bytes], args: argparse.Namespace) -> dict:
    """Far more clients than the queue admits: only 200s and 503s, and the server still answers."""
    res = asyncio.run(
        _load(server.port, bodies, args.overload_concurrency, args.overload_requests, args.timeout)
    )
    out = res.summary()
    out["healthz_after"] = _get(server.port, "/healthz")[0]
    out["alive_after"] = server.proc.poll() is None
    return out


def soak(server: Server, bodies: list[bytes], args: argparse.Namespace) -> dict:
    """``--soak`` requests at concurrency 16; resident memory of the server before and after."""
    before = server.rss_mb()
    res = asyncio.run(_load(server.port, bodies, 16, args.soak, args.timeout)).summary()
    return {**res, "rss_before_mb": before, "rss_after_mb": server.rss_mb()}


# ---------------------------------------------------------------------------- report
def _ms(v: float | None) -> str:
    return f"{v:6.1f} ms" if v is not None else "     - ms"


def _num(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else "-"


def report(res: dict) -> list[str]:
    """The tables and the targets, as markdown (what the run prints)."""
    c = res["ceiling"]
    runs = " / ".join(f"{r['batch16_posts_per_s']:.0f}" for r in c["runs"])
    lines = [
        f"ceiling (Predictor.predict_batch, batch {CEILING_BATCH}, {c['threads']} torch thread(s), no HTTP, "
        f"from a worker thread), measured before the first level and after each: {runs} posts/s (mean "
        f"{c['batch16_posts_per_s']:.0f}); one post at a time: {c['single_posts_per_s']:.0f} posts/s; batch "
        f"{CEILING_BATCH} called from the main thread instead: {c['batch16_main_thread_posts_per_s']:.0f} posts/s",
        "",
        "| concurrency | off req/s | on req/s | on/off | on p50 / p95 / p99 ms | off p50 / p95 / p99 ms "
        "| errors off / on | mean batch on | ceiling around the level | on / ceiling |",
        "|---:|---:|---:|---:|---|---|---|---:|---:|---:|",
    ]
    for off, on in zip(res["off"], res["on"]):
        lines.append(
            f"| {on['concurrency']} | {off['req_per_s']:.1f} | {on['req_per_s']:.1f} | "
            f"{on['req_per_s'] / off['req_per_s']:.2f}x | {_pcts(on)} | {_pcts(off)} | "
            f"{off['errors']} / {on['errors']} | {_num(on['mean_batch'])} | {on['ceiling']:.0f} | "
            f"{on['req_per_s'] / on['ceiling']:.0%} |"
        )
    ov, sk = res["overload"], res["soak"]
    lines += [
        "",
        f"overload: concurrency {ov['concurrency']} against --max-queue {res['settings']['max_queue']}, "
        f"{ov['requests']} requests: {ov['statuses']}; /healthz after: {ov['healthz_after']}, "
        f"alive: {ov['alive_after']}",
        f"soak: {sk['requests']} requests at concurrency 16: {sk['req_per_s']:.1f} req/s, errors {sk['errors']}, "
        f"p99 {_ms(sk['p99_ms']).strip()}; server RSS {sk['rss_before_mb']:.1f} MB -> {sk['rss_after_mb']:.1f} MB "
        f"({sk['rss_after_mb'] - sk['rss_before_mb']:+.1f} MB)",
        f"servers stopped by SIGTERM, exit status: {res['exit_status']}",
        "",
        *targets(res),
    ]
    return lines


def _pcts(r: dict) -> str:
    return " / ".join(f"{r[k]:.0f}" if r[k] is not None else "-" for k in ("p50_ms", "p95_ms", "p99_ms"))


def targets(res: dict) -> list[str]:
    at16 = {name: next((r for r in res[name] if r["concurrency"] == 16), None) for name in ("off", "on")}
    out = []
    if at16["on"] is not None:
        on, off = at16["on"], at16["off"]
        ceil = on["ceiling"]  # measured just before and after this level
        one_at_a_time = res["off"][0]["req_per_s"] if res["off"][0]["concurrency"] == 1 else None
        base = max(
            off["req_per_s"], one_at_a_time or 0
        )  # the stricter of the two one-post-per-forward figures
        checks = [
            (f"on@16 / ceiling around it ({ceil:.0f}) = {on['req_per_s'] / ceil:.0%} >= {TARGET_CEILING_SHARE:.0%}",
             on["req_per_s"] >= TARGET_CEILING_SHARE * ceil),
            (f"on@16 / off (one post per forward: off@16 {off['req_per_s']:.1f}, off@1 "
             f"{_num(one_at_a_time)} req/s) = {on['req_per_s'] / base:.2f}x >= {TARGET_SPEEDUP:.0f}x",
             on["req_per_s"] >= TARGET_SPEEDUP * base),
            (f"on@16 p99 {on['p99_ms']:.0f} ms <= {TARGET_P99_MS:.0f} ms", on["p99_ms"] <= TARGET_P99_MS),
            (f"on@16 errors {on['errors']} == 0", on["errors"] == 0),
        ]  # fmt: skip
        out += [f"target: {text}: {'met' if ok else 'NOT met'}" for text, ok in checks]
    ov, sk = res["overload"], res["soak"]
    only = set(ov["statuses"]) <= {"200", "503"} and ov["alive_after"] and ov["healthz_after"] == 200
    out.append(
        f"target: overload answers only 200/503 and the server stays up: {'met' if only else 'NOT met'}"
    )
    grown = sk["rss_after_mb"] - sk["rss_before_mb"]
    out.append(f"target: soak RSS growth {grown:+.1f} MB <= {TARGET_RSS_MB:.0f} MB: "
               f"{'met' if grown <= TARGET_RSS_MB else 'NOT met'}")  # fmt: skip
    return out


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", type=Path, help="a training output folder (or its model/)")
    ap.add_argument("--data-dir", type=Path, help="MNRE-layout folder whose test posts are sent")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads", type=int, help="torch threads of the server and the ceiling (default: the server's)"
    )
    ap.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=list(LEVELS))
    ap.add_argument(
        "--requests", type=int, default=2000, help="requests per concurrency level (at least 4 x c)"
    )
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--overload-concurrency", type=int, default=256)
    ap.add_argument("--overload-requests", type=int, default=2560)
    ap.add_argument("--soak", type=int, default=10_000, help="requests of the soak phase")
    ap.add_argument("--ceiling-rounds", type=int, default=40, help="batches of 16 timed for the ceiling")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    ap.add_argument("--json", type=Path, help="write the figures here")
    return ap.parse_args(argv)


def run_servers(
    args: argparse.Namespace, threads: int | None, bodies: list[bytes], ceiling: Ceiling, res: dict
) -> None:
    """The server phases: off and on side by side, then overload and soak on the batching one."""
    common = ["--device", args.device, "--max-queue", str(args.max_queue), "--max-wait-ms", str(args.max_wait_ms),
              "--request-timeout", str(args.timeout), *(["--threads", str(threads)] if threads else [])]  # fmt: skip
    servers: dict[str, Server] = {}
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        try:
            servers["off"] = start_server(
                "off", args.model_dir, Path(tmp), [*common, "--max-batch-size", "1"]
            )
            flags = [*common, "--max-batch-size", str(args.max_batch_size)]
            servers["on"] = start_server("on", args.model_dir, Path(tmp), flags)
            res.update(compare(servers, bodies, args, ceiling))
            res["ceiling"] = ceiling.summary()
            servers["off"].stop()
            res["overload"] = overload(servers["on"], bodies, args)
            print(f"overload: {res['overload']['statuses']}", flush=True)
            res["soak"] = soak(servers["on"], bodies, args)
        finally:
            res["exit_status"] = {name: s.stop() for name, s in servers.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    sys.path.insert(0, str(ROOT / "src"))
    from camim.inference.cli import serving_threads

    threads = args.threads or (serving_threads() if args.device == "cpu" else None)
    posts, source = load_posts(args.model_dir, args.data_dir)
    bodies = [json.dumps(p).encode() for p in posts]
    print(
        f"posts: {source}; device {args.device}; {threads} torch thread(s); load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    res: dict = {"settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                              "threads": threads, "posts": source, "loadavg_start": os.getloadavg()}}  # fmt: skip
    ceiling = Ceiling(args.model_dir, posts, threads, args.device, args.ceiling_rounds)
    run_servers(args, threads, bodies, ceiling, res)
    res["settings"]["loadavg_end"] = os.getloadavg()
    lines = report(res)
    print("\n" + "\n".join(lines))
    print(
        f"\nload average at start {res['settings']['loadavg_start']}, at end {res['settings']['loadavg_end']}"
    )
    if args.json:
        args.json.write_text(json.dumps({**res, "report": lines}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
