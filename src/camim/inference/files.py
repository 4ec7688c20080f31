"""The resumable JSONL prediction loop behind ``camim predict --input``: one output record per input line.

:func:`predict_file` reads an MNRE-form JSONL (or MNRE's ``.txt`` of Python literals), prepares each line
(a bad line becomes an ``error`` record naming ``file:line``), predicts the good ones in batches, and appends
the records to a :class:`camim.io.JsonlLog`, so an interrupted run resumes after its last written batch;
each record carries the hash of its input line, so an output is never resumed for another input.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camim.data.images import find_image
from camim.errors import CamimError, DataError
from camim.inference.predictor import Prediction, Predictor, PreparedInput
from camim.io import DEFAULT_ENCODING, JsonlLog, atomic_write_bytes, check_encoding, decode_text, short_hash
from camim.progress import progress


def prediction_record(result: Prediction, top_k: int | None) -> dict[str, Any]:
    """A prediction as written to an output line (and printed by ``--json``): without its token list."""
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
    elif image_dir is not None and obj.get("img_id") not in (None, ""):
        img_id = str(obj["img_id"])  # integer ids of earlier MNRE releases name "<id>.jpg" (or .png ...)
        path = find_image(image_dir, img_id) or image_dir / img_id
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


def line_hash(raw: bytes) -> str:
    """The short hash of one input line (its bytes without the line end) that each output record carries."""
    return short_hash(raw.rstrip(b"\r\n"), 16)


def _input_lines(path: Path) -> list[bytes]:
    """The raw lines of ``path`` (as read for prediction, line ends kept)."""
    with path.open("rb") as fh:
        return list(fh)


@dataclass
class _Held:
    """What an existing output holds when a run starts."""

    done: set[int] = field(default_factory=set)  # input lines it has a record of
    errors: dict[int, int] = field(default_factory=dict)  # input line -> output row, of its error records
    torn: bool = False  # a torn last line (an interrupted write) was cut off
    ordered: bool = True  # its records are in input-line order

    @property
    def predicted(self) -> int:
        return len(self.done) - len(self.errors)


def _done_lines(output: Path, input_path: Path, lines: list[bytes]) -> _Held:
    """The records already in ``output``; a torn last line (interrupted write) is cut off and counted.
    ``CamimError`` when a record was made from another line than ``input_path``'s line of that number
    (``output`` belongs to another input file) or carries no input hash."""
    log = JsonlLog(output, what="predictions file")
    records = log.read()
    held = _Held(torn=log.partial_tail and log.drop_partial_tail())
    bad = min((k for k, _ in log.bad_lines), default=None)  # the first line that is not a record
    last = 0
    for k, rec in records:
        if bad is not None and k > bad:
            break
        try:
            n = int(rec["line"])  # type: ignore[index]
        except (ValueError, KeyError, TypeError):
            bad = k
            break
        _check_record_hash(rec, n, output, k, input_path, lines)
        held.done.add(n)
        if "error" in rec:  # type: ignore[operator]
            held.errors[n] = k
        held.ordered, last = held.ordered and n > last, n
    if bad is not None:
        raise DataError("not a camim predictions line; use --overwrite to replace the file", output, bad)
    return held


def _check_record_hash(rec: Any, n: int, output: Path, k: int, input_path: Path, lines: list[bytes]) -> None:
    """``DataError`` (naming ``output``'s line ``k``) when record ``rec`` was not made from input line ``n``."""
    recorded = rec.get("input_sha256")
    actual = line_hash(lines[n - 1]) if 1 <= n <= len(lines) else None
    if recorded is not None and recorded == actual:
        return
    if recorded is None:
        why = "has no hash of its input line (written by an older camim?)"
    elif actual is None:
        why = f"is for line {n}, but {input_path} has only {len(lines)} lines"
    else:
        why = f"was predicted from a line {n} that differs from {input_path}:{n}"
    raise DataError(
        f"this output belongs to another input file (its record {why}); refusing to resume it: "
        "use another --output, or --overwrite to start it afresh",
        output,
        k,
    )


def _keep_rows(output: Path, drop: set[int] | None = None, by_line: bool = False) -> None:
    """Rewrite ``output`` atomically without its rows ``drop`` (1-based), or with its records sorted by
    input line (``by_line``)."""
    rows = output.read_bytes().split(b"\n")[:-1]  # the torn tail, if any, was cut off before
    kept = [row for k, row in enumerate(rows, start=1) if k not in (drop or ())]
    if by_line:
        kept.sort(key=lambda row: int(json.loads(row)["line"]))
    atomic_write_bytes(output, b"".join(row + b"\n" for row in kept))


def check_output_is_not_input(input_path: Path, output_path: Path | None) -> None:
    """``CamimError`` when ``output_path`` is ``input_path`` (the same path, or the same file through a link),
    which writing predictions would empty."""
    if output_path is None:
        return
    same = input_path.resolve() == output_path.resolve()
    if not same and input_path.exists() and output_path.exists():
        try:
            same = os.path.samefile(input_path, output_path)
        except OSError:
            same = False
    if same:
        raise CamimError(f"{output_path}: --output is the --input file; write the predictions elsewhere")


def predict_file(
    predictor: Predictor,
    input_path: Path,
    output_path: Path | None,
    image_dir: Path | None = None,
    batch_size: int = 32,
    top_k: int | None = None,
    overwrite: bool = False,
    limit: int | None = None,
    encoding: str = DEFAULT_ENCODING,
    retry_failed: bool = False,
) -> int:
    """Predict every line of ``input_path`` into ``output_path`` (JSONL, one record per input line, in order).

    Each record has ``line`` (1-based input line), ``input_sha256`` (the hash of that input line) and either
    the prediction or ``error`` (``file:line: ...``). An existing output is resumed (lines already there are
    skipped; a torn last line is cut off and counted) unless ``overwrite``, and only when its records were
    made from the same input lines; ``retry_failed`` predicts the lines of its error records again. The
    input is decoded strictly as ``encoding`` (an undecodable byte: ``DataError`` naming file and line,
    before anything is written); an output that is the input file is refused. Returns 0, or 1 while the
    output holds an error record (this run's or an earlier one's).
    """
    check_output_is_not_input(input_path, output_path)
    lines = _input_lines(input_path)
    codec = check_encoding(encoding)
    texts = [decode_text(raw, input_path, codec, line=n) for n, raw in enumerate(lines, start=1)]
    held = _resume(output_path, input_path, lines, overwrite, retry_failed)
    done = held.done
    last = len(texts) if limit is None else min(limit, len(texts))
    todo = sum(1 for n in range(1, last + 1) if n not in done and texts[n - 1].strip())
    with _output(output_path, overwrite) as write, progress(todo, "predicting", "line") as shown:
        run = _FileRun(predictor, input_path, image_dir, top_k, write, shown)
        # a batch is a window of batch_size input lines, whatever is done: a resumed run predicts a line in the
        # company it had before (a batch cut by a kill is predicted whole again), so its numbers are the same
        for start in range(1, last + 1, batch_size):
            window = [n for n in range(start, min(start + batch_size, last + 1)) if texts[n - 1].strip()]
            if all(n in done for n in window):
                continue
            for n in window:
                run.add(n, texts[n - 1], line_hash(lines[n - 1]), write_it=n not in done)
            run.flush(batch_size)
    appended_before = held.done and run.first_written is not None and run.first_written < max(held.done)
    if output_path is not None and (appended_before or not held.ordered):
        _keep_rows(output_path, by_line=True)  # retried lines were appended after later ones
    failed = sorted([*held.errors, *run.failed_lines])
    print(_summary(output_path, held, run, failed), file=sys.stderr)
    return 1 if failed else 0


def _summary(output_path: Path | None, held: _Held, run: _FileRun, failed: list[int]) -> str:
    """The closing line: what the output holds (earlier runs' records included) and what this run did."""
    where = output_path if output_path is not None else "stdout"
    text = f"camim predict: {held.predicted + run.predicted} prediction(s), {len(failed)} failed line(s)"
    if held.done or held.torn:
        this_run = f"{run.predicted} predicted and {run.failed} failed in this run"
        text += f" ({this_run}{', 1 torn line cut off' if held.torn else ''})"
    text += f" -> {where}"
    if failed:
        shown = ", ".join(map(str, failed[:10])) + (", ..." if len(failed) > 10 else "")
        text += f"; failed input line(s): {shown} (--retry-failed predicts them again)"
    return text


def _resume(
    output_path: Path | None, input_path: Path, lines: list[bytes], overwrite: bool, retry_failed: bool
) -> _Held:
    """What an existing output holds (nothing with ``overwrite``); with ``retry_failed`` its error records
    are removed first, so that their lines are predicted again."""
    if output_path is None or not output_path.exists() or overwrite:
        return _Held()
    held = _done_lines(output_path, input_path, lines)
    torn = "; cut off 1 torn line (an interrupted write: its line is predicted again)" if held.torn else ""
    retry = ""
    if retry_failed and held.errors:
        _keep_rows(output_path, drop=set(held.errors.values()))
        retry = f"; predicting the {len(held.errors)} failed line(s) again (--retry-failed)"
        held.done -= held.errors.keys()
        held.errors = {}
    if held.done or held.torn:
        errors = f" ({len(held.errors)} with an error record)" if held.errors else ""
        print(
            f"camim predict: resuming {output_path}: {len(held.done)} line(s) already done{errors}{torn}{retry}",
            file=sys.stderr,
        )
    return held


@contextmanager
def _output(output_path: Path | None, overwrite: bool) -> Iterator[Any]:
    """A writer of record lists: appended to ``output_path`` (one write per batch, so an interruption loses
    at most that batch), or printed to stdout."""
    if output_path is None:

        def to_stdout(records: list[dict[str, Any]]) -> None:
            sys.stdout.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
            sys.stdout.flush()

        yield to_stdout
        return
    if overwrite:
        output_path.unlink(missing_ok=True)
    log = JsonlLog(output_path, what="predictions file").open()
    try:
        yield log.append
    finally:
        log.close()


@dataclass
class _FileRun:
    """The lines of one input on their way to the output: prepared one by one, predicted a batch at a time."""

    predictor: Predictor
    input_path: Path
    image_dir: Path | None
    top_k: int | None
    write: Any  # records -> None
    shown: Any  # the progress display (camim.progress.progress)
    predicted: int = 0
    failed: int = 0
    failed_lines: list[int] = field(default_factory=list)
    first_written: int | None = None  # the smallest input line this run wrote a record of
    # (line, prepared input or None for a bad line, its record or None when the output holds it already)
    pending: list[tuple[int, PreparedInput | None, dict[str, Any] | None]] = field(default_factory=list)

    def add(self, n: int, line: str, digest: str, write_it: bool = True) -> None:
        """Parse and prepare input line ``n``; a bad line becomes an error record at once. A line already in
        the output (``write_it`` False) goes through the model again with its batch and is not written."""
        rec: dict[str, Any] = {"line": n, "input_sha256": digest}
        try:
            obj = _parse_line(line, self.input_path.suffix == ".txt")  # MNRE's txt: Python dict literals
            item = line_to_item(obj, self.input_path.parent, self.image_dir)
            item["source"] = f"{self.input_path}:{n}"
            prep: PreparedInput | None = self.predictor.prepare(item, index=n - 1)
            if isinstance(obj, dict) and obj.get("relation") is not None:
                rec["gold"] = obj["relation"]
        except CamimError as exc:
            if write_it:
                self._fail(rec, n, exc)
            prep = None
        self.pending.append((n, prep, rec if write_it else None))

    def flush(self, batch_size: int) -> None:
        """Predict the pending lines (a line the model refuses fails alone) and write their records."""
        ready = [p for _, p, _ in self.pending if p is not None]
        results = iter(
            [
                r
                for s in range(0, len(ready), batch_size)
                for r in self.predictor.run_prepared(ready[s : s + batch_size])
            ]
        )
        for n, prep, rec in self.pending:
            if prep is None:
                continue
            result = next(results)
            if rec is None:  # already in the output
                continue
            if isinstance(result, CamimError):
                self._fail(rec, n, result)
            else:
                rec.update(prediction_record(result, self.top_k))
                self.predicted += 1
        records = [rec for _, _, rec in self.pending if rec is not None]
        if records:
            self.write(records)
            first = min(rec["line"] for rec in records)
            self.first_written = first if self.first_written is None else min(self.first_written, first)
        self.shown.update(len(records))
        self.shown.set_postfix(failed=self.failed)
        self.pending.clear()

    def _fail(self, rec: dict[str, Any], n: int, exc: CamimError) -> None:
        rec["error"] = str(DataError(str(exc), self.input_path, n))
        print(f"camim predict: {rec['error']}", file=sys.stderr)
        self.failed += 1
        self.failed_lines.append(n)
