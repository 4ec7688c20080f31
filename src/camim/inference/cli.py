"""``camim predict`` (a JSONL file or one example given by flags) and ``camim serve`` (HTTP API + web page)."""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Any

from camim.errors import CamimError, DataError
from camim.inference.predictor import Prediction, Predictor, PreparedInput
from camim.io import JsonlLog


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict relations for a JSONL file or one post",
        description=(
            "Predict the relation of each (post, head, tail[, image, caption]) example. File form: --input in.jsonl "
            "--output out.jsonl, one MNRE-form JSON object per line ({'token' or 'text', 'h', 't', 'img_id' or "
            "'image' (a path), 'caption'?}; a .txt input holds Python dict literals, as MNRE's ours_*.txt); a bad line is reported with its line number and the others are "
            "still written; an interrupted run resumes where it stopped. Single form: --text/--tokens, --head, --tail."
        ),
    )
    p.add_argument("--model", required=True, help="training output DIR, DIR/model, or a hub id")
    p.add_argument("--input", type=Path, help="JSONL file of examples")
    p.add_argument("--output", type=Path, help="JSONL file of predictions (file form; default: stdout)")
    p.add_argument("--image-dir", type=Path, help="folder of the images named by 'img_id' (file form)")
    p.add_argument("--overwrite", action="store_true", help="start --output afresh instead of resuming it")
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
    s.add_argument("--max-image-mb", type=float, default=10.0, help="largest accepted image (encoded)")
    s.add_argument("--max-request-mb", type=float, default=16.0, help="largest accepted request body")
    _captioner_args(s)
    s.set_defaults(func=run_serve)


def _captioner_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("captioning of images that come without a caption (optional)")
    g.add_argument(
        "--caption-model", help="model name on an OpenAI-compatible server (e.g. a vLLM MiniCPM-V)"
    )
    g.add_argument("--caption-base-url", help="the server's base URL (default: OPENAI_BASE_URL, else OpenAI)")
    g.add_argument("--caption-timeout", type=float, default=60.0, help="seconds per captioning request")


def _load(args: argparse.Namespace) -> Predictor:
    captioner = None
    if args.caption_model:
        from camim.inference.captioners import openai_captioner

        captioner = openai_captioner(args.caption_model, args.caption_base_url, timeout=args.caption_timeout)
    elif args.caption_base_url:
        raise CamimError("--caption-base-url needs --caption-model")
    return Predictor.from_pretrained(args.model, device=args.device, captioner=captioner)


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
        print(json.dumps(_record(result, args.top_k), ensure_ascii=False, indent=2))
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


def _record(result: Prediction, top_k: int | None) -> dict[str, Any]:
    d = result.to_dict()
    if top_k:
        d["distribution"] = d["distribution"][:top_k]
    d.pop("tokens")
    return d


def line_to_item(obj: Any, base_dir: Path, image_dir: Path | None) -> dict[str, Any]:
    """One MNRE-form JSON object -> a :meth:`Predictor.prepare` item (images as paths); raises CamimError."""
    if not isinstance(obj, dict):
        raise CamimError(f"expected a JSON object, got {type(obj).__name__}")
    if "token" not in obj and "text" not in obj:
        raise CamimError("no 'token' (token list) or 'text' (raw post)")
    for key in ("h", "t"):
        if key not in obj and {"h": "head", "t": "tail"}[key] not in obj:
            raise CamimError(f"no '{key}' entity ({{'name': ..., 'pos': [start, end]}})")
    item: dict[str, Any] = {
        "head": obj.get("h", obj.get("head")),
        "tail": obj.get("t", obj.get("tail")),
        "caption": obj.get("caption"),
        "img_id": obj.get("img_id"),
    }
    if "token" in obj:
        item["token"] = obj["token"]
    else:
        item["text"] = obj["text"]
        for key in ("head", "tail"):  # OpenNRE: with 'text', 'pos' counts characters
            spec = item[key]
            if isinstance(spec, dict) and spec.get("pos") is not None:
                item[key] = {"char": spec["pos"], **{k: v for k, v in spec.items() if k != "pos"}}
    image = obj.get("image")
    if image is not None:
        if not isinstance(image, str):
            raise CamimError("'image' must be a path")
        path = Path(image) if Path(image).is_absolute() else base_dir / image
    elif image_dir is not None and obj.get("img_id"):
        path = image_dir / str(obj["img_id"])
    else:
        path = None
    if path is not None:
        if not path.is_file():
            raise CamimError(f"image {path} not found")
        item["image"] = path
    return item


def _parse_line(line: str, literal: bool) -> Any:
    if literal:  # ast.literal_eval only builds literals: no code runs
        try:
            return ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise CamimError(f"not a Python literal ({type(exc).__name__}: {exc})") from None
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise CamimError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None


def _done_lines(output: Path) -> set[int]:
    """Line numbers already in ``output``; a torn last line (interrupted write) is cut off."""
    log = JsonlLog(output, what="predictions file")
    records = log.read()
    if log.partial_tail:
        log.drop_partial_tail()
    done: set[int] = set()
    bad = [k for k, _ in log.bad_lines]
    for k, rec in records:
        try:
            done.add(int(rec["line"]))  # type: ignore[index]
        except (ValueError, KeyError, TypeError):
            bad.append(k)
    if bad:
        raise DataError("not a camim predictions line; use --overwrite to replace the file", output, min(bad))
    return done


def predict_file(
    predictor: Predictor,
    input_path: Path,
    output_path: Path | None,
    image_dir: Path | None = None,
    batch_size: int = 32,
    top_k: int | None = None,
    overwrite: bool = False,
    limit: int | None = None,
) -> int:
    """Predict every line of ``input_path`` into ``output_path`` (JSONL, one record per input line, in order).

    Each record has ``line`` (1-based input line) and either the prediction or ``error`` (``file:line: ...``).
    An existing output is resumed (lines already there are skipped) unless ``overwrite``. Returns 0, or 1
    when some lines failed.
    """
    literal = input_path.suffix == ".txt"  # MNRE's released txt/ours_{split}.txt: Python dict literals
    done: set[int] = set()
    if output_path is not None and output_path.exists() and not overwrite:
        done = _done_lines(output_path)
        if done:
            print(f"camim predict: resuming {output_path}: {len(done)} line(s) already done", file=sys.stderr)
    log = None
    if output_path is not None:
        if overwrite:
            output_path.unlink(missing_ok=True)
        log = JsonlLog(output_path, what="predictions file").open()
    counts = {"predicted": 0, "failed": 0}
    pending: list[tuple[int, PreparedInput | None, dict[str, Any]]] = []

    def flush() -> None:
        ready = [p for _, p, _ in pending if p is not None]
        try:
            results: list[Prediction | CamimError] = (
                list(predictor.predict_prepared(ready, batch_size)) if ready else []
            )
        except CamimError:  # isolate the example the model refused; the others still get predictions
            results = []
            for p in ready:
                try:
                    results.append(predictor.predict_prepared([p])[0])
                except CamimError as exc:
                    results.append(exc)
        it = iter(results)
        records = []
        for n, prep, rec in pending:
            if prep is not None:
                res = next(it)
                if isinstance(res, CamimError):
                    rec["error"] = str(DataError(str(res), input_path, n))
                    print(f"camim predict: {rec['error']}", file=sys.stderr)
                    counts["failed"] += 1
                else:
                    rec.update(_record(res, top_k))
                    counts["predicted"] += 1
            records.append(rec)
        if log is not None:
            log.append(records)  # one write per batch: an interruption loses at most this batch
        else:
            sys.stdout.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
            sys.stdout.flush()
        pending.clear()

    try:
        with input_path.open("r", encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, start=1):
                if limit is not None and n > limit:
                    break
                if n in done or not line.strip():
                    continue
                rec: dict[str, Any] = {"line": n}
                try:
                    obj = _parse_line(line, literal)
                    item = line_to_item(obj, input_path.parent, image_dir)
                    item["source"] = f"{input_path}:{n}"
                    prep = predictor.prepare(item, index=n - 1)
                    if isinstance(obj, dict) and obj.get("relation") is not None:
                        rec["gold"] = obj["relation"]
                except CamimError as exc:
                    message = str(DataError(str(exc), input_path, n))
                    print(f"camim predict: {message}", file=sys.stderr)
                    rec["error"] = message
                    counts["failed"] += 1
                    prep = None
                pending.append((n, prep, rec))
                if sum(p is not None for _, p, _ in pending) >= batch_size:
                    flush()
        flush()
    finally:
        if log is not None:
            log.close()
    where = output_path if output_path is not None else "stdout"
    print(
        f"camim predict: {counts['predicted']} prediction(s), {counts['failed']} failed line(s) -> {where}",
        file=sys.stderr,
    )
    return 1 if counts["failed"] else 0


# ------------------------------------------------------------------------------ serve
def run_serve(args: argparse.Namespace) -> int:
    from camim.inference.server import ServeConfig, serve

    config = ServeConfig(
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        max_image_bytes=int(args.max_image_mb * 1024 * 1024),
    )
    predictor = _load(args)
    print(
        f"camim serve: {args.model} on http://{args.host}:{args.port}/ (API docs at /docs)", file=sys.stderr
    )
    serve(predictor, host=args.host, port=args.port, config=config)
    return 0
