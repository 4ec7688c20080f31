"""``camim caption``: caption a split or a folder of images with an MLLM; ``camim caption import|export``
converts the released caption sets to and from the JSONL cache."""

from __future__ import annotations

import argparse
import sys

from camim.captioning.cache import PAPER_PROMPT
from camim.errors import CamimError

_EPILOG = """examples:
  vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000
  camim caption --data-dir data --split train --backend openai --base-url http://localhost:8000/v1 \\
      --model Qwen/Qwen2.5-VL-7B-Instruct --concurrency 32 --output data/caption/qwen25vl_train.jsonl
  camim caption --images my_posts/ --backend transformers --model llava-hf/llama3-llava-next-8b-hf \\
      --dtype bfloat16 --batch-size 8 --output my_posts/captions.jsonl
  camim caption import data/caption/minicpm_*.txt --output captions.jsonl
  camim caption export captions.jsonl --model minicpm --output minicpm_train.txt
Interrupted runs resume: rerun the same command and only missing captions are requested."""


def add_backend_arguments(p: argparse.ArgumentParser, max_tokens: int = 512) -> None:
    """The MLLM options shared by every command that calls one (``caption``, ``zero-shot``): the backend,
    the model, decoding, and each backend's settings; :func:`build_backend` reads them."""
    gen = p.add_argument_group("model")
    gen.add_argument("--backend", choices=("openai", "transformers"), default="openai")
    gen.add_argument("--model", help="served model name (openai) or hub id / local folder (transformers)")
    gen.add_argument("--max-tokens", type=int, default=max_tokens)
    gen.add_argument("--temperature", type=float, default=0.0)
    oa = p.add_argument_group("openai backend")
    oa.add_argument(
        "--base-url", help="e.g. http://localhost:8000/v1 (vLLM); default $OPENAI_BASE_URL or OpenAI"
    )
    oa.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key"
    )
    oa.add_argument("--concurrency", type=int, default=8, help="requests in flight at most")
    oa.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    oa.add_argument("--max-retries", type=int, default=5, help="per request, on 429/5xx/timeouts")
    oa.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    oa.add_argument(
        "--max-refusals",
        type=int,
        default=3,
        help="stop after N refusals in a row that retrying cannot fix (HTTP 4xx, same message; default 3)",
    )
    oa.add_argument("--max-image-side", type=int, help="downscale larger images before sending")
    tf = p.add_argument_group("transformers backend")
    tf.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    tf.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    tf.add_argument("--batch-size", type=int, default=4)
    tf.add_argument("--trust-remote-code", action="store_true")


def _add_generate_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("images (one of)")
    src.add_argument(
        "--data-dir", help="MNRE data folder (samples under txt/, images under img_org/{split}/)"
    )
    src.add_argument("--split", choices=("train", "val", "test"), help="split of --data-dir to caption")
    src.add_argument("--images", help="a folder of images to caption instead (ids are the file names)")
    run = p.add_argument_group("captioning")
    run.add_argument("--output", help="caption JSONL file (appended to; existing captions are skipped)")
    run.add_argument("--prompt", default=PAPER_PROMPT, help="default: the paper's prompt (Eq. 3)")
    run.add_argument("--limit", type=int, help="caption at most this many new images")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_backend_arguments(p)


def register(subparsers) -> None:
    """Add ``caption`` (with ``import`` and ``export``) to the ``camim`` command line."""
    p = subparsers.add_parser(
        "caption",
        help="caption images with an MLLM (§3.1.2); import/export the released caption sets",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_generate_arguments(p)
    p.set_defaults(func=run_caption)
    sub = p.add_subparsers(dest="caption_command", metavar="{import,export}")
    imp = sub.add_parser("import", help="released caption .txt/.json files -> caption JSONL")
    imp.add_argument("files", nargs="+", help="e.g. caption/minicpm_train.txt caption/cogvlm_train.json")
    imp.add_argument("--output", required=True, help="caption JSONL file (appended to)")
    imp.add_argument("--source", help="source name when the file name does not say (minicpm, qwenvl, ...)")
    imp.add_argument(
        "--image-ext", default=".jpg", help="extension for .json keys without a .txt beside them"
    )
    imp.add_argument(
        "--encoding", default="utf-8", help="text encoding of the files (default UTF-8, strict; BOM accepted)"
    )
    imp.set_defaults(func=run_import)
    exp = sub.add_parser("export", help="caption JSONL -> the released .txt or .json form")
    exp.add_argument("input", help="caption JSONL file")
    exp.add_argument("--output", required=True, help="a .txt (dict literal lines) or .json file")
    exp.add_argument("--model", help="whose captions (needed when the file holds several models)")
    exp.add_argument("--newline", choices=("lf", "crlf"), help="default: as imported, else lf")
    exp.set_defaults(func=run_export)


def _items(args: argparse.Namespace) -> list:
    from camim.captioning.images import folder_items, split_items

    if args.images and args.data_dir:
        raise CamimError("give either --images or --data-dir/--split, not both")
    if args.images:
        return folder_items(args.images)
    if not args.data_dir or not args.split:
        raise CamimError("say what to caption: --data-dir DIR --split SPLIT, or --images DIR")
    return split_items(args.data_dir, args.split)


def build_backend(args: argparse.Namespace, prompt: str | None = None):
    """The backend named by ``--backend``, configured from the parsed arguments (:func:`add_backend_arguments`);
    ``prompt`` defaults to ``args.prompt``."""
    from camim.captioning.base import GenerationConfig

    try:
        prompt = prompt if prompt is not None else getattr(args, "prompt", PAPER_PROMPT)
        generation = GenerationConfig(prompt, args.max_tokens, args.temperature)
        if args.backend == "openai":
            from camim.captioning.openai_backend import OpenAIBackendConfig, OpenAICaptioner

            config = OpenAIBackendConfig(
                model=args.model,
                base_url=args.base_url,
                api_key_env=args.api_key_env,
                concurrency=args.concurrency,
                timeout=args.timeout,
                max_retries=args.max_retries,
                backoff=args.backoff,
                max_image_side=args.max_image_side,
                max_refusals=args.max_refusals,
            )
            return OpenAICaptioner(config, generation)
        from camim.captioning.transformers_backend import TransformersBackendConfig, TransformersCaptioner

        config = TransformersBackendConfig(
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            trust_remote_code=args.trust_remote_code,
        )
        return TransformersCaptioner(config, generation)
    except ValueError as exc:
        raise CamimError(str(exc)) from None
    except ImportError as exc:
        raise CamimError(
            f"the {args.backend} backend needs {exc.name}: pip install 'camim[caption]'"
        ) from None


def run_caption(args: argparse.Namespace) -> int:
    """``camim caption``: exit status 0 when every image got a caption (or is missing/corrupt), 1 otherwise."""
    from camim.captioning.runner import caption_images

    if not args.model or not args.output:
        raise CamimError("camim caption needs --model and --output")
    items = _items(args)
    backend = build_backend(args)
    try:
        report = caption_images(
            items, backend, args.output, limit=args.limit, progress=False if args.no_progress else None
        )
    except KeyboardInterrupt:
        print(f"interrupted: finished captions are in {args.output}; rerun to resume", file=sys.stderr)
        raise
    print(report.summary())
    return 0 if report.complete else 1


def run_import(args: argparse.Namespace) -> int:
    """``camim caption import``."""
    from camim.captioning.released import import_released

    report = import_released(
        args.files, args.output, source=args.source, image_ext=args.image_ext, encoding=args.encoding
    )
    print(report.summary())
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``camim caption export``."""
    from camim.captioning.released import export_released

    newline = {"lf": "\n", "crlf": "\r\n", None: None}[args.newline]
    n = export_released(args.input, args.output, model=args.model, newline=newline)
    print(f"{n} captions written to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m camim.captioning.cli caption ...``: the caption commands alone (same behaviour as ``camim``)."""
    parser = argparse.ArgumentParser(prog="camim")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CamimError as exc:
        print(f"camim: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
