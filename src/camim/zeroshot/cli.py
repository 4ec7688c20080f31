"""``camim zero-shot``: an MLLM predicts the relation of every sample of a split; the output is a run folder."""

from __future__ import annotations

import argparse
import sys

from camim.errors import CamimError

_EPILOG = """examples:
  vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000 --limit-mm-per-prompt '{"image": 4}'
  camim zero-shot --data-dir data/mnre --split test --output runs/zs-qwen --backend openai \\
      --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-VL-7B-Instruct --shots 8 --max-images 4
  camim zero-shot --data-dir data/mnre --split test --output runs/zs-llava --backend transformers \\
      --model llava-hf/llava-1.5-7b-hf --dtype bfloat16 --with-caption minicpm
Interrupted runs resume: rerun the same command and only the samples without an answer are asked."""


def register(subparsers) -> None:
    """Add ``zero-shot`` to the ``camim`` command line."""
    from camim.captioning.cli import add_backend_arguments

    p = subparsers.add_parser(
        "zero-shot",
        help="an MLLM predicts the relation (a zero-shot / in-context baseline), written as a run folder",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = p.add_argument_group("run")
    run.add_argument("--data-dir", required=True, help="MNRE-style data folder")
    run.add_argument("--split", default="test", choices=("train", "val", "test"))
    run.add_argument("--output", required=True, help="run folder (its answers.jsonl is resumed)")
    run.add_argument(
        "--shots", type=int, default=0, help="in-context examples from train, balanced by relation"
    )
    run.add_argument("--seed", type=int, default=666, help="seed of the in-context examples")
    run.add_argument(
        "--max-images",
        type=int,
        default=1,
        help="images per request: the post's, then the examples' (0: text only; default 1)",
    )
    run.add_argument(
        "--with-caption", metavar="SOURCE", help="add each image's caption (minicpm, cogvlm, ..., or a file)"
    )
    run.add_argument("--limit", type=int, help="only the first N samples of the split")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_backend_arguments(p, max_tokens=64)
    p.set_defaults(func=run_zero_shot)


def run_zero_shot(args: argparse.Namespace) -> int:
    """Exit status 0 when every sample got an answer, 1 when some requests failed (rerun to retry them)."""
    from camim.captioning.cli import build_backend
    from camim.runs import format_scores
    from camim.zeroshot.run import ZeroShotConfig, zero_shot

    if not args.model:
        raise CamimError("camim zero-shot needs --model")
    config = ZeroShotConfig(
        data_dir=args.data_dir,
        split=args.split,
        caption_source=args.with_caption,
        shots=args.shots,
        seed=args.seed,
        max_images=args.max_images,
        limit=args.limit,
    )
    backend = build_backend(args)
    try:
        result = zero_shot(backend, config, args.output, progress=False if args.no_progress else None)
    except KeyboardInterrupt:
        print(f"interrupted: the answers so far are in {args.output}; rerun to resume", file=sys.stderr)
        raise
    scores = result.metrics[args.split]
    print(result.report.summary())
    print(f"{args.split}  {format_scores(scores)}")
    print(f"wrote {result.output_dir} (report: {result.output_dir / 'report.md'})")
    return 0 if result.report.complete else 1
