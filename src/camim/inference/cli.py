"""``camim predict`` (a JSONL file or one example given by flags) and ``camim serve`` (HTTP API + web page)."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Any

from camim.errors import CamimError
from camim.inference.files import check_output_is_not_input, predict_file, prediction_record
from camim.inference.predictor import Predictor
from camim.io import DEFAULT_ENCODING

BF16_HELP = "bfloat16 autocast around the model's forward (CPU or GPU; ~2x on a CPU with avx512_bf16)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict relations for a JSONL file or one post",
        description=(
            "Predict the relation of each (post, head, tail[, image, caption]) example. File form: --input in.jsonl "
            "--output out.jsonl, one MNRE-form JSON object per line ({'token' or 'text', 'h', 't', 'img_id' or "
            "'image' (a path), 'caption'?}; a .txt input holds Python dict literals, as MNRE's ours_*.txt); a bad "
            "line is reported with its line number and the others are still written; an interrupted run resumes "
            "where it stopped (each output record carries the hash of its input line, so an output is never "
            "resumed for another input). Single form: --text/--tokens, --head, --tail."
        ),
    )
    p.add_argument("--model", required=True, help="training output DIR, DIR/model, or a hub id")
    p.add_argument("--input", type=Path, help="JSONL file of examples")
    p.add_argument("--output", type=Path, help="JSONL file of predictions (file form; default: stdout)")
    p.add_argument("--image-dir", type=Path, help="folder of the images named by 'img_id' (file form)")
    p.add_argument("--overwrite", action="store_true", help="start --output afresh instead of resuming it")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="predict the lines of --output's error records again (e.g. after restoring a missing image)",
    )
    p.add_argument(
        "--encoding",
        default=DEFAULT_ENCODING,
        help="text encoding of --input (default UTF-8, decoded strictly; a BOM is accepted), e.g. latin-1",
    )
    p.add_argument("--limit", type=int, help="only the first LIMIT lines of --input")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--top-k", type=int, default=None, help="keep only the k most probable relations per line")
    p.add_argument("--text", help="single form: the post as raw text")
    p.add_argument("--tokens", help="single form: the post as whitespace-separated tokens")
    p.add_argument("--head", help="single form: head mention, or token span START:END")
    p.add_argument("--tail", help="single form: tail mention, or token span START:END")
    p.add_argument("--image", type=Path, help="single form: the post's image")
    p.add_argument("--caption", help="single form: a caption of the image")
    p.add_argument("--json", action="store_true", help="single form: print the full result as JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help=BF16_HELP)
    _captioner_args(p)
    p.set_defaults(func=run_predict)

    s = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (JSON API + web page)",
        description="Serve a model: a web page at /, a JSON API at /api/predict, its OpenAPI schema at /docs.",
    )
    s.add_argument("--model", required=True, help="training output DIR, DIR/model, or a hub id")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--device", default="cpu")
    s.add_argument("--bf16", action="store_true", help=BF16_HELP)
    s.add_argument("--max-image-mb", type=float, default=10.0, help="largest accepted image (encoded)")
    s.add_argument("--max-request-mb", type=float, default=16.0, help="largest accepted request body")
    s.add_argument(
        "--max-request-decoded-mb",
        type=float,
        default=256.0,
        help="what decoding a request's images may take (its pixels, after reducing to the model's size); beyond: 413",
    )
    s.add_argument(
        "--max-decoded-mb",
        type=float,
        default=1024.0,
        help="what the requests being decoded may take together; beyond: 503 with Retry-After",
    )
    s.add_argument(
        "--max-reading-mb",
        type=float,
        help="request bodies held at once (read or being read, until answered), per process (default: 4 x --max-request-mb); beyond: 503",
    )
    _serving_args(s)
    _captioner_args(s)
    s.set_defaults(func=run_serve)


def _serving_args(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("serving traffic (docs/inference.md, 'Serving in production')")
    g.add_argument("--max-batch-size", type=int, default=16, help="posts per model forward (1: no batching)")
    g.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="longest wait of a forward for posts on their way (being decoded, or from clients just answered)",
    )
    g.add_argument("--max-queue", type=int, default=256, help="prediction requests in flight; beyond: 503")
    g.add_argument(
        "--request-timeout", type=float, default=30.0, help="seconds to answer a request; then 504"
    )
    g.add_argument(
        "--graceful-timeout", type=float, default=30.0, help="on SIGTERM/SIGINT: seconds to finish requests"
    )
    g.add_argument(
        "--drain-delay",
        type=float,
        default=5.0,
        help="on SIGTERM: seconds of /readyz 503 while still serving, before closing (0: close at once)",
    )
    g.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds for a request's headers to arrive; then 408",
    )
    g.add_argument(
        "--body-timeout", type=float, default=30.0, help="seconds for a request's body to arrive; then 408"
    )
    g.add_argument("--workers", type=int, default=1, help="server processes, each with its own model copy")
    g.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads per process (default on a CPU: one less than torch's, leaving a core to HTTP)",
    )
    g.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="require 'Authorization: Bearer <the value of environment variable VAR>' on the API and /metrics",
    )


def _captioner_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("captioning of images that come without a caption (optional)")
    g.add_argument(
        "--caption-model", help="model name on an OpenAI-compatible server (e.g. a vLLM MiniCPM-V)"
    )
    g.add_argument("--caption-base-url", help="the server's base URL (default: OPENAI_BASE_URL, else OpenAI)")
    g.add_argument("--caption-timeout", type=float, default=60.0, help="seconds per captioning request")


def _load(args: argparse.Namespace, device: str | None = None) -> Predictor:
    captioner = None
    if args.caption_model:
        from camim.inference.captioners import openai_captioner

        captioner = openai_captioner(args.caption_model, args.caption_base_url, timeout=args.caption_timeout)
    elif args.caption_base_url:
        raise CamimError("--caption-base-url needs --caption-model")
    return Predictor.from_pretrained(
        args.model, device=device or args.device, captioner=captioner, bf16=args.bf16
    )


# ------------------------------------------------------------------------------ predict
def run_predict(args: argparse.Namespace) -> int:
    if args.input is None and args.text is None and args.tokens is None:
        raise CamimError(
            "give --input in.jsonl (file form) or --text/--tokens with --head and --tail (single form)"
        )
    if args.input is not None and (args.text or args.tokens):
        raise CamimError("give either --input (file form) or --text/--tokens (single form), not both")
    if args.batch_size < 1:
        raise CamimError("--batch-size must be at least 1")
    if args.input is not None and not args.input.is_file():
        raise CamimError(f"{args.input}: input file not found")
    if args.retry_failed and (args.input is None or args.output is None):
        raise CamimError("--retry-failed needs --input and the --output whose failed lines to predict again")
    if args.input is not None:
        check_output_is_not_input(args.input, args.output)  # before the model is loaded
    predictor = _load(args)
    if args.input is None:
        return _predict_single(predictor, args)
    return predict_file(
        predictor,
        args.input,
        args.output,
        image_dir=args.image_dir,
        batch_size=args.batch_size,
        top_k=args.top_k,
        overwrite=args.overwrite,
        limit=args.limit,
        encoding=args.encoding,
        retry_failed=args.retry_failed,
    )


def _span_or_mention(value: str | None, what: str) -> Any:
    if not value:
        raise CamimError(f"single form: give --{what} (a mention, or a token span START:END)")
    a, sep, b = value.partition(":")
    if sep and a.strip().isdigit() and b.strip().isdigit():
        return (int(a), int(b))
    return value


def _predict_single(predictor: Predictor, args: argparse.Namespace) -> int:
    post: str | list[str] = args.text if args.text is not None else args.tokens.split()
    result = predictor.predict(
        post,
        _span_or_mention(args.head, "head"),
        _span_or_mention(args.tail, "tail"),
        image=args.image,
        caption=args.caption,
    )
    if args.json:
        print(json.dumps(prediction_record(result, args.top_k), ensure_ascii=False, indent=2))
        return 0
    print(f"{result.relation}\t{result.probability:.4f}")
    print(
        f"head: {result.head.name} {[result.head.start, result.head.end]}  tail: {result.tail.name} "
        f"{[result.tail.start, result.tail.end]}"
    )
    print(f"caption used ({result.caption_source}): {result.caption or '-'}")
    for note in result.notes:
        print(f"note: {note}")
    for rel, prob in result.distribution[: args.top_k or 5]:
        print(f"  {prob:.4f}  {rel}")
    return 0


# ------------------------------------------------------------------------------ serve
SERVE_SETTINGS_ENV = "CAMIM_SERVE_SETTINGS"  # how `--workers` processes get the parent's flags
_SERVE_KEYS = (
    "model", "device", "bf16", "threads", "max_image_mb", "max_request_mb", "max_reading_mb", "max_batch_size",
    "max_wait_ms", "max_queue", "request_timeout", "body_timeout", "drain_delay", "api_key_env", "caption_model",
    "caption_base_url", "caption_timeout", "max_request_decoded_mb", "max_decoded_mb",
)  # fmt: skip


def run_serve(args: argparse.Namespace) -> int:
    from camim.inference.process import serve

    for flag in ("max_batch_size", "max_queue", "workers"):
        if getattr(args, flag) < 1:
            raise CamimError(f"--{flag.replace('_', '-')} must be at least 1")
    for flag in ("request_timeout", "header_timeout", "body_timeout"):
        if getattr(args, flag) <= 0:
            raise CamimError(f"--{flag.replace('_', '-')} must be positive")
    for flag in ("max_wait_ms", "graceful_timeout", "drain_delay"):
        if getattr(args, flag) < 0:
            raise CamimError(f"--{flag.replace('_', '-')} must be 0 or more")
    for flag, least in (("max_reading_mb", "max_request_mb"), ("max_decoded_mb", "max_request_decoded_mb")):
        value, floor = getattr(args, flag), getattr(args, least)
        if value is not None and value < floor:  # a request within the per-request limit would never fit
            raise CamimError(
                f"--{flag.replace('_', '-')} ({value:g}) must be at least --{least.replace('_', '-')} "
                f"({floor:g}): a request within the second could never be served"
            )
    if _api_key(args.api_key_env) is None and not _is_loopback(args.host):
        print(
            f"camim serve: warning: listening on {args.host} without --api-key-env: anyone who can reach it can "
            "use the API",
            file=sys.stderr,
        )
    if args.workers > 1:
        _validate(args)
        os.environ[SERVE_SETTINGS_ENV] = json.dumps({k: getattr(args, k) for k in _SERVE_KEYS})
        app: Any = "camim.inference.cli:app_from_environment"
    else:
        app = build_app(args)
    print(
        f"camim serve: {args.model} on http://{args.host}:{args.port}/ (API docs at /docs)", file=sys.stderr
    )
    serve(
        app,
        host=args.host,
        port=args.port,
        graceful_timeout_s=args.graceful_timeout,
        workers=args.workers,
        header_timeout_s=args.header_timeout,
    )
    return 0


def _validate(args: argparse.Namespace) -> None:
    """Fail here, once, on a bad model, device or captioner flag, before ``--workers`` processes each load
    their own copy. The model is loaded on the CPU and dropped: the supervisor never starts CUDA (which would
    keep a context and model-sized memory on the card for the server's life)."""
    import torch

    try:
        torch.device(args.device)  # parsed only: no device is touched
    except RuntimeError as exc:
        raise CamimError(f"--device {args.device}: {exc}") from None
    predictor = _load(args, device="cpu")
    del predictor
    gc.collect()


def build_app(args: argparse.Namespace) -> Any:
    """The app of ``camim serve`` for ``args`` (sets torch's threads for this process)."""
    import torch

    from camim.inference.server import ServeConfig, create_app

    threads = args.threads or (serving_threads() if torch.device(args.device).type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    config = ServeConfig(
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        max_reading_bytes=None if args.max_reading_mb is None else int(args.max_reading_mb * 1024 * 1024),
        max_image_bytes=int(args.max_image_mb * 1024 * 1024),
        max_request_decoded_bytes=int(args.max_request_decoded_mb * 1024 * 1024),
        max_decoded_bytes=int(args.max_decoded_mb * 1024 * 1024),
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        request_timeout_s=args.request_timeout,
        body_timeout_s=args.body_timeout,
        drain_delay_s=args.drain_delay,
    )
    app = create_app(_load(args), config, api_key=_api_key(args.api_key_env))
    # The model, torch, transformers and FastAPI leave ~400k long-lived objects that every full collection
    # of the cyclic GC walks: 230-310 ms pauses of the event loop and the model thread alike, three in 5,000
    # requests here. In the permanent generation they are never walked again (the same collections: 2-6 ms).
    gc.collect()
    gc.freeze()
    return app


def serving_threads() -> int:
    """torch threads of a CPU server by default: one less than torch's default (one per core), so that the
    event loop and request decoding keep a core while the model thread computes (on 2 cores, 1 thread served
    1.1-1.9x the requests/s of 2 at 1, 16 and 64 clients, interleaved runs)."""
    import torch

    return max(1, torch.get_num_threads() - 1)


def app_from_environment() -> Any:
    """uvicorn's app factory in each process of ``camim serve --workers N``: the parent's flags, from the
    environment."""
    return build_app(argparse.Namespace(**json.loads(os.environ[SERVE_SETTINGS_ENV])))


def _api_key(variable: str | None) -> str | None:
    if variable is None:
        return None
    key = os.environ.get(variable, "")
    if not key.strip():
        raise CamimError(f"--api-key-env {variable}: the environment variable {variable} is not set or empty")
    return key


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
