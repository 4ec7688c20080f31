"""Captions per second of the ``openai`` backend against a local chat-completions server with injected
latency: one request at a time vs ``--concurrency`` in flight, side by side in this process.

    python benchmarks/caption_throughput.py            # 160 images, 200 ms per request, 1 vs 16
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from camim.captioning.base import GenerationConfig
from camim.captioning.cache import read_cache
from camim.captioning.images import folder_items
from camim.captioning.openai_backend import OpenAIBackendConfig, OpenAICaptioner
from camim.captioning.runner import caption_images
from camim.captioning.testing import FakeChatServer


def run(base_url: str, images: Path, output: Path, concurrency: int) -> tuple[float, int]:
    """(captions per second, captions written) of one full run into a fresh cache."""
    backend = OpenAICaptioner(
        OpenAIBackendConfig(model="bench", base_url=base_url, concurrency=concurrency), GenerationConfig()
    )
    report = caption_images(folder_items(images), backend, output, progress=False)
    assert report.complete and len(read_cache(output).records) == report.captioned
    return report.captioned / report.seconds, report.captioned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--delay", type=float, default=0.2, help="server latency per request, seconds")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeChatServer(delay=args.delay) as server:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i in range(args.images):  # 320x240 JPEGs, distinct
            Image.new("RGB", (320, 240), (i % 256, (7 * i) % 256, 99)).save(
                folder / f"{i:04d}.jpg", quality=90
            )
        run(server.base_url, folder, Path(tmp) / "warmup.jsonl", args.concurrency)  # first-use imports
        server.state.max_in_flight = 0
        sequential, n1 = run(server.base_url, folder, Path(tmp) / "seq.jsonl", 1)
        concurrent, n2 = run(server.base_url, folder, Path(tmp) / "conc.jsonl", args.concurrency)
        print(f"images: {args.images}, server latency: {args.delay * 1000:.0f} ms per request")
        print(f"sequential (concurrency 1):   {sequential:7.2f} captions/s ({n1} captions)")
        print(f"concurrent (concurrency {args.concurrency}): {concurrent:7.2f} captions/s ({n2} captions)")
        print(f"max in flight seen by server: {server.state.max_in_flight}")
        print(f"speed-up: {concurrent / sequential:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
