"""The six caption sets released with CAMIM (``caption/{prefix}_{split}.txt`` and ``.json``), converted to
and from the caption JSONL cache.

Released forms (reference-behaviour.md §4.6): ``.txt`` holds one Python dict literal per line,
``{'img_id': 'x.jpg', 'text': '...'}`` (LF or CRLF line ends, depending on the set); ``.json`` (cogvlm,
llavanext, minicpm) is one JSON object ``{img_id_without_extension: text}``. ``export`` writes both forms
byte-for-byte as released (``repr`` of the dict; ``json.dumps`` with default separators and no final newline).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from camim.captioning.cache import CaptionCache, CaptionRecord, read_cache, utc_now
from camim.data._literal import describe_literal_error, parse_literal
from camim.data.captions import keep_last, normalise_whitespace
from camim.data.layout import CAPTION_SOURCES
from camim.errors import CamimError, DataError
from camim.io import DEFAULT_ENCODING, atomic_write_bytes, decode_text

# Released source name (the model name in the cache) -> the MLLM of the paper's Table 2.
RELEASED_MLLMS: dict[str, str] = {
    "minicpm": "MiniCPM-Llama3-V 2.5",
    "caption": "Qwen-VL-Plus",
    "cogvlm": "CogVLM2 (LLaMA3-8B)",
    "llavanext": "LLaVA-NeXT (LLaMA3-8B)",
    "instruct": "InstructBLIP (Vicuna-7B)",
    "blip2": "BLIP-2 (Flan-T5-XXL)",
}
# File prefix -> source name (BLIP -> blip2; the other prefixes are their own names).
_PREFIX_TO_SOURCE = {prefix: name for name, prefix in CAPTION_SOURCES.items() if name in RELEASED_MLLMS}
_FILE_NAME = re.compile(r"^(?P<prefix>.+)_(?P<split>train|val|test)$")


@dataclass
class ImportReport:
    """Per input file: (lines read, lines written); the lines read but not written were already in the
    output. ``conflicts``: per input file, the img_ids it gives several different captions (the last one is
    imported, as the data layer's reader keeps the last). ``differ``: per input file, per earlier source (an
    earlier file of this import, or the output itself), the img_ids whose caption differs from the one kept
    from that source (whitespace aside, as ``camim data validate`` compares them)."""

    files: dict[str, tuple[int, int]] = field(default_factory=dict)
    conflicts: dict[str, list[str]] = field(default_factory=dict)
    differ: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def read(self) -> int:
        return sum(r for r, _ in self.files.values())

    @property
    def written(self) -> int:
        return sum(w for _, w in self.files.values())

    def summary(self) -> str:
        lines = [f"{name}: {r} captions read, {w} written" for name, (r, w) in self.files.items()]
        lines.append(
            f"total: {self.read} read, {self.written} written, {self.read - self.written} already present"
        )
        for name, ids in self.conflicts.items():  # camim data validate's wording
            lines.append(
                f"warning: {name}: {len(ids)} img_ids have several different captions, the last one is used "
                f"(first: {ids[0]!r})"
            )
        for name, sources in self.differ.items():
            for earlier, ids in sources.items():
                lines.append(
                    f"warning: {name}: {len(ids)} captions differ from {earlier}, whose captions are kept "
                    f"(first: {ids[0]!r})"
                )
        return "\n".join(lines)


def source_of(path: str | Path, source: str | None = None) -> str:
    """The released source name of a caption file, from ``source`` (a name or alias such as ``qwenvl``) or
    else from its ``{prefix}_{split}`` file name."""
    if source is not None:
        prefix = CAPTION_SOURCES.get(source)
        if prefix is None or prefix not in _PREFIX_TO_SOURCE:
            raise CamimError(f"unknown caption source {source!r} (known: {', '.join(CAPTION_SOURCES)})")
        return _PREFIX_TO_SOURCE[prefix]
    match = _FILE_NAME.match(Path(path).stem)
    if match is None or match["prefix"] not in _PREFIX_TO_SOURCE:
        raise CamimError(
            f"{path}: cannot tell the caption source from the file name (expected "
            f"{{{','.join(_PREFIX_TO_SOURCE)}}}_{{train,val,test}}.txt/.json); pass --source"
        )
    return _PREFIX_TO_SOURCE[match["prefix"]]


def _record(img_id: str, text: str, source: str, path: Path, fmt: str, newline: str | None) -> CaptionRecord:
    settings = {
        "backend": "released",
        "mllm": RELEASED_MLLMS[source],
        "source_file": path.name,
        "format": fmt,
    }
    if newline is not None:
        settings["newline"] = newline
    # The prompt of each released set is unknown (the paper gives one for Qwen-VL-Plus only): left null.
    return CaptionRecord(img_id=img_id, text=text, model=source, settings=settings, created=utc_now())


def read_released_txt(
    path: str | Path, source: str | None = None, encoding: str = DEFAULT_ENCODING
) -> list[CaptionRecord]:
    """Read a released ``.txt`` caption file (every line, repeated img_ids included); ``DataError`` naming
    file and line on a malformed line or an undecodable byte."""
    path = Path(path)
    source = source_of(path, source)
    content = decode_text(path.read_bytes(), path, encoding)
    newline = "\r\n" if "\r\n" in content else "\n"
    records = []
    for lineno, line in enumerate(content.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            obj = parse_literal(line)
        except (ValueError, SyntaxError) as exc:
            raise DataError(describe_literal_error(exc), path, lineno) from None
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("img_id"), str)
            or not isinstance(obj.get("text"), str)
        ):
            raise DataError("expected {'img_id': str, 'text': str}", path, lineno)
        records.append(_record(obj["img_id"], obj["text"], source, path, "txt", newline))
    return records


def read_released_json(
    path: str | Path, source: str | None = None, image_ext: str = ".jpg", encoding: str = DEFAULT_ENCODING
) -> list[CaptionRecord]:
    """Read a released ``.json`` caption file. Its keys lack the file extension: it is taken from the
    ``.txt`` file beside it when there is one, else ``image_ext``."""
    path = Path(path)
    source = source_of(path, source)
    try:
        obj = json.loads(decode_text(path.read_bytes(), path, encoding))
    except json.JSONDecodeError as exc:
        raise DataError(f"not JSON: {exc.msg}", path, exc.lineno) from None
    if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
        raise DataError("expected one JSON object {image name without extension: caption}", path)
    sibling = path.with_suffix(".txt")
    ids: dict[str, str] = {}
    newline = None  # the .txt twin's line end, kept so that exporting to .txt reproduces it
    if sibling.is_file():
        twin = read_released_txt(sibling, source, encoding)
        ids = {Path(r.img_id).stem: r.img_id for r in twin}
        newline = twin[0].settings["newline"] if twin else None
    return [
        _record(ids.get(stem, stem + image_ext), text, source, path, "json", newline)
        for stem, text in obj.items()
    ]


def import_released(
    paths: list[str | Path],
    output: str | Path,
    source: str | None = None,
    image_ext: str = ".jpg",
    encoding: str = DEFAULT_ENCODING,
) -> ImportReport:
    """Append released caption files (``.txt`` or ``.json``) to the JSONL ``output``; captions already there
    (same img_id, model, prompt hash) are skipped, so importing twice changes nothing. Of the lines of one
    file that caption the same image, the last is imported (the data layer's rule); those with different
    texts are counted in ``ImportReport.conflicts``. Across files, the caption imported first is kept (it is
    in the output already); later ones that differ are counted in ``ImportReport.differ``."""
    report = ImportReport()
    # .txt before .json: of two forms of one set, the .txt (full img_ids) is the one kept.
    ordered = sorted(map(Path, paths), key=lambda p: p.suffix != ".txt")
    kept: dict = {}  # cache key -> (whitespace-normalised text, where it comes from), the first one per key
    for record in read_cache(output).records:
        kept.setdefault(record.key, (normalise_whitespace(record.text), str(output)))
    with CaptionCache(output) as cache:
        for p in ordered:
            if not p.is_file():
                raise CamimError(f"{p}: no such caption file")
            if p.suffix == ".json":
                records = read_released_json(p, source, image_ext, encoding)
            elif p.suffix == ".txt":
                records = read_released_txt(p, source, encoding)
            else:
                raise CamimError(f"{p}: expected a released .txt or .json caption file")
            conflicts: list[str] = []
            last = keep_last(((r.key, r) for r in records), conflicts, value=lambda r: r.text)
            if conflicts:
                report.conflicts[str(p)] = [key[0] for key in conflicts]
            differ = _differing(last.values(), kept, str(p))
            if differ:
                report.differ[str(p)] = differ
            report.files[str(p)] = (len(records), cache.extend(last.values()))
    return report


def _differing(records, kept: dict, source: str) -> dict[str, list[str]]:
    """Per earlier source, the img_ids of ``records`` whose caption differs (whitespace aside) from the one
    ``kept`` for the same key; ``records`` new to ``kept`` are added to it as coming from ``source``."""
    out: dict[str, list[str]] = {}
    for record in records:
        text = normalise_whitespace(record.text)
        earlier = kept.setdefault(record.key, (text, source))
        if earlier[0] != text:
            out.setdefault(earlier[1], []).append(record.img_id)
    return out


def export_released(
    input: str | Path, output: str | Path, model: str | None = None, newline: str | None = None
) -> int:
    """Write the captions of ``model`` in the JSONL ``input`` to ``output`` in the released form (``.txt``
    or ``.json``, by suffix); the number of captions written.

    The last caption per img_id wins, in order of first appearance. ``newline`` ``None`` keeps the line end
    recorded at import (the set's own), else LF. ``model`` may be omitted when the file holds one model.
    """
    input, output = Path(input), Path(output)
    if output.suffix not in (".txt", ".json"):
        raise CamimError(f"{output}: the released forms are .txt and .json")
    contents = read_cache(input)
    if not contents.records:
        raise CamimError(
            f"{input}: no captions" + (f" ({contents.problems()})" if contents.problems() else "")
        )
    models = list(dict.fromkeys(r.model for r in contents.records))
    if model is None:
        if len(models) > 1:
            raise CamimError(f"{input} holds captions of several models; pick one with --model: {models}")
        model = models[0]
    elif model not in models:
        raise CamimError(f"{input}: no captions of model {model!r} (present: {models})")
    latest = contents.latest(model)
    if output.suffix == ".json":
        stems: dict[str, str] = {}
        for img_id in latest:
            stem = img_id.rsplit(".", 1)[0]
            if stem in stems:
                raise CamimError(f"{input}: {img_id} and {stems[stem]} share the .json key {stem!r}")
            stems[stem] = img_id
        data = json.dumps({stem: latest[i].text for stem, i in stems.items()})
    else:
        if newline is None:
            recorded = {r.settings.get("newline") for r in latest.values()}
            newline = recorded.pop() if len(recorded) == 1 and None not in recorded else "\n"
        data = "".join(repr({"img_id": r.img_id, "text": r.text}) + newline for r in latest.values())
    atomic_write_bytes(output, data.encode("utf-8"))
    return len(latest)
