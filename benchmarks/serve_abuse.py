"""``camim serve`` against hostile clients (issue 36): its peak memory and a normal client's latency under each.

    python benchmarks/serve_abuse.py [--trickle 64] [--trickle-bytes 1000000] [--trickle-seconds 20] [--big-posts 32]
                                     [--server-flags "..."] [--only abcd] [--json out.json]

Builds a tiny text-caption TMR (random weights: the model's speed is not what is measured), starts
``camim serve`` on 127.0.0.1 with an API key and ``--max-queue 64`` (``serve_load.py``'s server helpers), and
runs, one after the other, while a normal client (with the key) posts one prediction every 100 ms:

a. the pixel bomb: one ``/api/predict_batch`` of 32 posts, each with a one-bit 6320 x 6320 PNG (~5 KB) that a
   text-caption model never reads;
b. slow clients: ``--trickle`` connections announce a prediction body of ``--trickle-bytes`` (1 MB; with the
   key), then send one byte every ``--trickle-interval`` seconds, for ``--trickle-seconds``;
c. big bodies: 16 MiB (the default ``--max-request-mb``) posted at once to ``/healthz``, ``/``, ``/docs``, an
   unknown path and ``/api/predict``, each without and with the key;
d. many big bodies: ``--big-posts`` valid predictions padded to just under 16 MiB, posted at once with the
   key (each body is one the server must read; together they are what ``--max-reading-mb`` bounds).

For each: the server's peak resident memory over its resident memory before (``VmHWM``, reset between
phases), the normal client's p50/p99 and status codes, and the attackers' status codes. Every request and
phase is bounded in time; the server is stopped with SIGTERM by PID. Targets: peak growth under 300 MB for
any attack (each request is at most the body limit); the normal client's p99 under 1 s while the slow
clients trickle.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import ROOT, Connection, Server, start_server  # noqa: E402

KEY_ENV, KEY = "CAMIM_ABUSE_KEY", "abuse-bench-key"
AUTH = f"authorization: Bearer {KEY}\r\n"
NORMAL = json.dumps({"token": ["jack", "plays", "for", "the", "team"], "head": {"pos": [0, 1]},
                     "tail": {"pos": [4, 5]}, "caption": "a player on a field"}).encode()  # fmt: skip
TARGET_RSS_MB, TARGET_P99_MS = 300.0, 1000.0


# ---------------------------------------------------------------------------- set-up
def build_model(folder: Path) -> Path:
    """A tiny TMR in text-caption mode (reads the text and a caption, never an image), saved as a run."""
    sys.path[:0] = [str(ROOT), str(ROOT / "src")]
    from tests.factories import TINY_BERT, bert_folder

    from camim.models import build_model as build

    words = (
        "rt the new team player plays for city festival held in london with his dog at park today a".split()
    )
    text = bert_folder(folder / "bert", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words], **TINY_BERT)
    config = {"name": "tmr", "text_encoder": str(text), "text_encoder_pretrained": False,
              "visual_mode": "text-caption", "max_length": 32, "caption_max_length": 12, "text_window": 12}  # fmt: skip
    build(config, labels=["None", "/per/org/member_of"]).save_pretrained(folder / "run" / "model")
    return folder / "run"


def pixel_bomb(posts: int = 32, side: int = 6320) -> bytes:
    """A ``/api/predict_batch`` body: ``posts`` posts, each with a one-bit ``side`` x ``side`` PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG", optimize=True)
    image = base64.b64encode(buf.getvalue()).decode()
    item = {"text": "jack plays for the team", "head": "jack", "tail": "team", "image": image}
    return json.dumps({"items": [item] * posts}).encode()


# ---------------------------------------------------------------------------- clients
async def send(
    port: int, method: str, path: str, body: bytes, headers: str = "", timeout: float = 120
) -> str:
    """One request on a fresh connection: the status code, or what happened instead (``reset`` when the
    server closed while the body was being sent and no answer came, ``timeout``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{headers}\r\n"

    async def write() -> None:
        writer.write(head.encode())
        for k in range(0, len(body), 1 << 20):
            writer.write(body[k : k + (1 << 20)])
            await writer.drain()

    sending = asyncio.ensure_future(write())
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.split()[1].decode() if line else "reset"
    except asyncio.TimeoutError:
        return "timeout"
    except (ConnectionError, IndexError):
        return "reset"
    finally:
        sending.cancel()
        writer.close()


async def trickle(port: int, seconds: float, interval: float, announced: int = 1_000_000) -> str:
    """Announce an ``announced``-byte prediction body, then send a byte every ``interval`` s: the server's
    answer within ``seconds``, or ``open`` (still reading it), or ``reset``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /api/predict HTTP/1.1\r\nhost: bench\r\ncontent-length: {announced}\r\n{AUTH}\r\n".encode()
    )
    answer = asyncio.ensure_future(reader.readline())
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not answer.done():
            writer.write(b" ")
            await writer.drain()
            await asyncio.wait({answer}, timeout=min(interval, max(0.0, deadline - time.monotonic())))
        if not answer.done():
            return "open"
        line = answer.result()
        return line.split()[1].decode() if line else "reset"
    except (ConnectionError, IndexError):
        return "reset"
    finally:
        answer.cancel()
        writer.close()


async def normal_client(port: int, stop: asyncio.Event, pause: float = 0.1) -> tuple[list[float], Counter]:
    """One prediction every ``pause`` s (with the key) until ``stop``: latencies (ms) of the 200s, statuses."""
    conn, latencies, statuses = Connection(port, AUTH), [], Counter()
    while not stop.is_set():
        start = time.perf_counter()
        try:
            status = await asyncio.wait_for(conn.post("/api/predict", NORMAL), 30)
        except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, AttributeError):
            status = "error"
            conn.close()
        statuses[str(status)] += 1
        if status == 200:
            latencies.append(1000 * (time.perf_counter() - start))
        await asyncio.sleep(pause)
    conn.close()
    return latencies, statuses


# ---------------------------------------------------------------------------- phases
def phase(server: Server, name: str, attack) -> dict:
    """Run ``attack(port)`` (a coroutine function returning the attackers' statuses) beside the normal
    client; the server's peak memory growth over it."""
    server.reset_peak()
    before = server.rss_mb()

    async def run() -> tuple[list[str], tuple[list[float], Counter], float]:
        stop = asyncio.Event()
        normal = asyncio.ensure_future(normal_client(server.port, stop))
        await asyncio.sleep(0.5)  # the normal client's first answers before the attack
        start = time.perf_counter()
        statuses = await attack(server.port)
        seconds = time.perf_counter() - start
        stop.set()
        return statuses, await normal, seconds

    statuses, (latencies, normal), seconds = asyncio.run(run())
    lat = sorted(latencies)
    row = {
        "attack": name,
        "seconds": seconds,
        "attackers": dict(Counter(statuses)),
        "rss_before_mb": before,
        "peak_growth_mb": server.rss_mb("VmHWM") - before,
        "normal_p50_ms": lat[len(lat) // 2] if lat else None,
        "normal_p99_ms": lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] if lat else None,
        "normal": dict(normal),
        "alive_after": server.proc.poll() is None,
    }
    print(f"  {_row(row)}", flush=True)
    return row


def attacks(args: argparse.Namespace) -> dict:
    """The attacks by name: functions of the server's port to a coroutine function."""
    bomb = pixel_bomb()
    big = b"x" * (16 * 1024 * 1024)
    paths = ("/healthz", "/", "/docs", "/nowhere", "/api/predict")

    async def bomb_attack(port: int) -> list[str]:
        return [await send(port, "POST", "/api/predict_batch", bomb, AUTH, timeout=args.timeout)]

    async def trickle_attack(port: int) -> list[str]:
        conns = (
            trickle(port, args.trickle_seconds, args.trickle_interval, args.trickle_bytes)
            for _ in range(args.trickle)
        )
        return list(await asyncio.gather(*conns))

    async def big_attack(port: int) -> list[str]:
        targets = [(p, key) for p in paths for key in ("", AUTH)]
        sent = await asyncio.gather(
            *(send(port, "POST", p, big, key, timeout=args.timeout) for p, key in targets)
        )
        return [f"{p}{' +key' if key else ''}: {status}" for (p, key), status in zip(targets, sent)]

    async def many_big_attack(port: int) -> list[str]:
        padded = NORMAL + b" " * (16 * 1024 * 1024 - 1024 - len(NORMAL))  # valid JSON, under the limit
        posts = (
            send(port, "POST", "/api/predict", padded, AUTH, timeout=args.timeout)
            for _ in range(args.big_posts)
        )
        return list(await asyncio.gather(*posts))

    async def idle(port: int) -> list[str]:  # noqa: ARG001 - an attack's signature
        await asyncio.sleep(args.trickle_seconds / 2)
        return []

    return {
        "none (the normal client alone)": idle,
        f"(a) pixel bomb: predict_batch of 32 one-bit 6320x6320 PNGs ({len(bomb) // 1024} KB)": bomb_attack,
        f"(b) {args.trickle} trickling connections announcing {args.trickle_bytes} bytes, {args.trickle_seconds:g} s": (
            trickle_attack
        ),
        "(c) 16 MiB bodies on open paths and the API, without / with the key": big_attack,
        f"(d) {args.big_posts} valid ~16 MiB predictions at once, with the key": many_big_attack,
    }


# ---------------------------------------------------------------------------- report
def _ms(v: float | None) -> str:
    return f"{v:.0f}" if v is not None else "-"


def _row(r: dict) -> str:
    return (
        f"| {r['attack']} | {r['seconds']:.1f} s | {r['peak_growth_mb']:+.0f} MB (from {r['rss_before_mb']:.0f}) | "
        f"{_ms(r['normal_p50_ms'])} / {_ms(r['normal_p99_ms'])} | {r['normal']} | {r['attackers']} | "
        f"{'yes' if r['alive_after'] else 'NO'} |"
    )


def report(rows: list[dict]) -> list[str]:
    lines = [
        "| attack | its time | server peak RSS growth | normal p50 / p99 ms | normal statuses | attackers' statuses | alive |",
        "|---|---:|---:|---|---|---|---|",
        *(_row(r) for r in rows),
        "",
        "a fresh server for each row, stopped by SIGTERM: exit status "
        + ", ".join(f"{r['attack'][:4].strip()} {r['exit_status']}" for r in rows),
    ]
    for r in rows[1:]:
        ok = r["peak_growth_mb"] < TARGET_RSS_MB and r["alive_after"]
        lines.append(f"target: {r['attack'][:3]} peak growth {r['peak_growth_mb']:+.0f} MB < {TARGET_RSS_MB:.0f} MB: "
                     f"{'met' if ok else 'NOT met'}")  # fmt: skip
    slow = next((r for r in rows if r["attack"].startswith("(b)")), None)
    if slow is None:
        return lines
    p99 = slow["normal_p99_ms"]
    ok = p99 is not None and p99 < TARGET_P99_MS and set(slow["normal"]) == {"200"}
    lines.append(
        f"target: (b) normal p99 {_ms(p99)} ms < {TARGET_P99_MS:.0f} ms, only 200s: {'met' if ok else 'NOT met'}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trickle", type=int, default=64, help="slow connections of attack (b)")
    ap.add_argument("--trickle-seconds", type=float, default=20.0)
    ap.add_argument(
        "--trickle-interval", type=float, default=2.0, help="seconds between a slow client's bytes"
    )
    ap.add_argument(
        "--trickle-bytes", type=int, default=1_000_000, help="the body length a slow client announces"
    )
    ap.add_argument("--big-posts", type=int, default=32, help="concurrent ~16 MiB posts of attack (d)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per attacking request")
    ap.add_argument("--server-flags", default="", help="more `camim serve` flags (e.g. '--body-timeout 10')")
    ap.add_argument(
        "--only", default="", help="run only these attacks (letters, e.g. 'b'), after the baseline"
    )
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)

    os.environ[KEY_ENV] = KEY  # the server process inherits it
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="serve_abuse_") as tmp:
        run = build_model(Path(tmp))
        flags = [
            "--api-key-env",
            KEY_ENV,
            "--max-queue",
            "64",
            "--threads",
            "1",
            *shlex.split(args.server_flags),
        ]
        print(f"camim serve from {ROOT / 'src'}, flags {flags}; load {os.getloadavg()[0]:.2f}", flush=True)
        chosen = {n: a for n, a in attacks(args).items() if n[0] != "(" or not args.only or n[1] in args.only}
        for k, (name, attack) in enumerate(chosen.items()):  # a fresh server each: nothing carries over
            server = start_server(f"abuse{k}", run, Path(tmp), flags)
            try:
                row = phase(server, name, attack)
            finally:
                status = server.stop()
            rows.append({**row, "exit_status": status})
            if status != 0:
                print(f"{name}: the server exited with {status}: {server.log.read_text()[-2000:]}")
    lines = report(rows)
    print("\n" + "\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "report": lines, "flags": flags}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
