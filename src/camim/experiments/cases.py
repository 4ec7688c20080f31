"""Case analysis across finished runs (the paper's Fig. 5): ``camim experiment cases``.

For one split, every sample becomes a row: the text with the head and tail highlighted, the caption each run
read (runs whose model reads no captions read none), the original image's thumbnail when the image exists in
the data folder, the gold relation, and each run's prediction with its probability. Filters pick the rows
where the runs disagree ("disagree"), where only the caption-aware runs are right ("caption-right": at least
one run that reads captions is right and every run that reads none is wrong), or where every run is wrong
("all-wrong"); these flips (and the reverse one, "caption-free-right") are counted per gold relation. Outputs: ``cases.jsonl`` (every selected row), ``cases.md`` and a self-contained ``cases.html``
(thumbnails inlined as data URIs, no external assets).

Predictions come from a run's ``predictions.jsonl`` for the test split, and otherwise from the saved model
run over the split (:func:`camim.training.api.predict_split`), with the run's own data settings. Runs must hold
predictions for the same samples with the same gold labels.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from camim.errors import CamimError
from camim.io import atomic_write_bytes, atomic_write_text, open_image
from camim.models.config import ModelConfig
from camim.runs import RunFolder

FILTERS = ("all", "disagree", "caption-right", "all-wrong")
THUMBNAIL = 128  # longest side of a thumbnail, pixels


@dataclass
class CaseRun:
    """One finished run as the case analysis sees it."""

    path: Path
    name: str
    description: str  # model and switches, e.g. "tmr, cam=both, mi=True, text-caption mode"
    modalities: list[str]  # the dataset modalities its model reads, besides the text
    caption_source: str | None  # the captions it read (None: it reads none)
    predictions: dict[int, dict] = field(default_factory=dict)  # sample id -> predictions.jsonl row

    @property
    def caption_aware(self) -> bool:
        return self.caption_source is not None

    def modality_note(self) -> str:
        read = [
            "text",
            *(f"caption ({self.caption_source})" if m == "caption" else m for m in self.modalities),
        ]
        return f"{self.name}: {self.description}; reads {', '.join(read)}"


def load_run(path: str | Path, split: str, data_dir: Path | None) -> CaseRun:
    """A finished run folder (``metrics.json``, ``model/``) and its predictions on ``split``."""
    from camim.models import load_model
    from camim.training.api import predict_split
    from camim.training.config import load_run_config

    folder = RunFolder(Path(path))
    if not folder.finished or not folder.has_model:
        raise CamimError(f"{folder.path}: not a finished run folder (needs metrics.json and model/)")
    run_cfg = load_run_config(folder.config_path) if folder.config_path.is_file() else None
    model = load_model(folder.model_dir)
    cfg = model.config
    modalities = sorted(model.required_modalities)
    source = run_cfg.data.caption_source if run_cfg is not None else "minicpm"
    description = _description(cfg)
    del model
    run = CaseRun(
        folder.path,
        folder.path.name,
        description,
        modalities,
        source if "caption" in modalities and source else None,
    )
    if split == "test" and folder.predictions_path.is_file():
        rows = folder.read_predictions()
    else:
        if data_dir is None:
            raise CamimError(f"{folder.path}: no data folder to predict {split} on (pass --data-dir)")
        limit = run_cfg.data.eval_limit if run_cfg is not None else None
        rows = predict_split(folder.path, data_dir, split, limit=limit)
    run.predictions = {row["id"]: row for row in rows}
    return run


def _description(cfg: ModelConfig) -> str:
    """``tmr, cam=both, mi=True, text-caption mode (no images)``: the switches the extractor's capabilities
    give effect (a text-only extractor: its name alone)."""
    caps = cfg.capabilities
    parts = [cfg.name]
    parts += [f"cam={cfg.cam}"] if caps.cam else []
    parts += [f"mi={cfg.mi}"] if caps.mi else []
    if cfg.visual_mode == "text-caption" and "text-caption" in caps.visual_modes:
        parts.append("text-caption mode (no images)")
    return ", ".join(parts)


def _data_dir(runs: list[Path], given: str | Path | None) -> Path | None:
    if given is not None:
        return Path(given)
    for path in runs:
        config = RunFolder.of(path).read_config() or {}
        data_dir = (config.get("data") or {}).get("data_dir")
        if data_dir and Path(data_dir).is_dir():
            return Path(data_dir)
    return None


def _check_same_samples(runs: list[CaseRun]) -> list[int]:
    first = runs[0]
    ids = sorted(first.predictions)
    for run in runs[1:]:
        if sorted(run.predictions) != ids:
            raise CamimError(
                f"{run.path}: predictions for {len(run.predictions)} samples, {first.path}: for {len(ids)}; "
                "cases compare runs on the same samples (same split and data.eval_limit)"
            )
        for i in ids:
            if run.predictions[i].get("gold") != first.predictions[i].get("gold"):
                raise CamimError(
                    f"{run.path}: sample {i} has gold {run.predictions[i].get('gold')!r}, {first.path} "
                    f"{first.predictions[i].get('gold')!r}: not the same data"
                )
    return ids


def _examples(data_dir: Path | None, split: str, ids: list[int]) -> dict:
    """Sample id -> MNREExample (text, entities, img_id) from the split file, when the data folder is there."""
    if data_dir is None:
        return {}
    from camim.data import MNREDataset

    ds = MNREDataset(
        data_dir, split, caption_source=None, modalities=(), on_error="skip", require_labels=False
    )
    by_index = {ex.index: ex for ex in ds.examples}
    return {i: by_index[i] for i in ids if i in by_index}


def _captions(data_dir: Path | None, split: str, sources: set[str]) -> dict[str, dict[int, str]]:
    """Caption source -> sample id -> caption, as each run's dataset read it (missing: the empty caption)."""
    if data_dir is None:
        return {}
    from camim.data import MNREDataset

    out = {}
    for source in sorted(sources):
        ds = MNREDataset(
            data_dir, split, caption_source=source, modalities=("caption",), on_error="skip", on_missing="fallback",
            require_labels=False,
        )  # fmt: skip
        out[source] = {ex.index: ds[k].caption for k, ex in enumerate(ds.examples)}
    return out


def _image_path(data_dir: Path | None, split: str, img_id: str | None) -> Path | None:
    if data_dir is None or not img_id:
        return None
    from camim.data.layout import DataLayout

    layout = DataLayout()
    path = layout.path(data_dir, layout.image_dir, split) / img_id
    return path if path.is_file() else None


def _thumbnail_jpeg(path: Path) -> bytes | None:
    """A small JPEG of the image (the shared safe opener; an unreadable image gives None)."""
    try:
        img = open_image(path)
    except CamimError:
        return None
    img.thumbnail((THUMBNAIL, THUMBNAIL))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def build_cases(runs: list[CaseRun], split: str, data_dir: Path | None) -> list[dict]:
    """One row per sample (see the module docstring); ``flags`` say which filters it passes."""
    ids = _check_same_samples(runs)
    examples = _examples(data_dir, split, ids)
    captions = _captions(data_dir, split, {r.caption_source for r in runs if r.caption_source})
    aware = [r for r in runs if r.caption_aware]
    free = [r for r in runs if not r.caption_aware]
    cases = []
    for i in ids:
        gold = runs[0].predictions[i].get("gold")
        preds = {}
        for r in runs:
            row = r.predictions[i]
            probs = row["probabilities"]
            preds[r.name] = {
                "relation": row["predicted"],
                "probability": probs.get(row["predicted"]),
                "gold_probability": probs.get(gold) if gold is not None else None,
                "correct": gold is not None and row["predicted"] == gold,
            }
        right = {name: p["correct"] for name, p in preds.items()}
        ex = examples.get(i)
        img_id = ex.img_id if ex is not None else runs[0].predictions[i].get("img_id")
        image = _image_path(data_dir, split, img_id)
        cases.append(
            {
                "id": i,
                "img_id": img_id,
                "tokens": ex.tokens if ex is not None else None,
                "head": _entity(ex.head) if ex is not None else None,
                "tail": _entity(ex.tail) if ex is not None else None,
                "gold": gold,
                "captions": {
                    r.name: captions.get(r.caption_source, {}).get(i) if r.caption_aware else None
                    for r in runs
                },
                "image": str(image) if image is not None else None,
                "predictions": preds,
                "flags": {
                    "disagree": len({p["relation"] for p in preds.values()}) > 1,
                    "caption-right": bool(aware and free)
                    and any(right[r.name] for r in aware)
                    and not any(right[r.name] for r in free),
                    "caption-free-right": bool(aware and free)
                    and any(right[r.name] for r in free)
                    and not any(right[r.name] for r in aware),
                    "all-wrong": gold is not None and not any(right.values()),
                },
            }
        )
    return cases


def _entity(e) -> dict:
    return {"name": e.name, "start": e.start, "end": e.end}


def flip_counts(cases: list[dict]) -> dict[str, Counter]:
    """Gold relation -> counts of samples, disagreements, caption-only-right, caption-free-only-right and
    all-wrong rows ("total" sums every relation)."""
    out: dict[str, Counter] = {}
    for case in cases:
        for key in (str(case["gold"]), "total"):
            c = out.setdefault(key, Counter())
            c["samples"] += 1
            for flag, on in case["flags"].items():
                c[flag] += int(on)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] == "total", kv[0])))


COUNT_COLUMNS = ("samples", "disagree", "caption-right", "caption-free-right", "all-wrong")


def flip_table(counts: dict[str, Counter]) -> str:
    lines = ["| gold relation | " + " | ".join(COUNT_COLUMNS) + " |", "|---|" + "---:|" * len(COUNT_COLUMNS)]
    for rel, c in counts.items():
        lines.append(f"| {rel} | " + " | ".join(str(c[k]) for k in COUNT_COLUMNS) + " |")
    return "\n".join(lines)


def select(cases: list[dict], which: str) -> list[dict]:
    if which not in FILTERS:
        raise CamimError(f"unknown filter {which!r}; choose from {', '.join(FILTERS)}")
    return cases if which == "all" else [c for c in cases if c["flags"][which]]


# ------------------------------------------------------------------------------------------------ writers
def _marked(case: dict, head: tuple[str, str], tail: tuple[str, str], escape) -> str:
    """The sentence with head/tail spans wrapped in the given (open, close) markers (spans may overlap)."""
    tokens = case["tokens"]
    if tokens is None:
        return "(text not available: no data folder)"
    out = []
    for k, tok in enumerate(tokens):
        piece = escape(tok)
        for ent, (open_, _) in ((case["head"], head), (case["tail"], tail)):
            if k == ent["start"]:
                piece = open_ + piece
        for ent, (_, close) in ((case["head"], head), (case["tail"], tail)):
            if k == ent["end"] - 1:
                piece = piece + close
        out.append(piece)
    return " ".join(out)


def _md_cell(text: str | None) -> str:
    return "" if text is None else str(text).replace("|", "\\|").replace("\n", " ")


def write_markdown(path: Path, runs, cases, counts, header: list[str], thumbs: dict[int, str]) -> None:
    lines = [*header, "", "## Flips per gold relation", "", flip_table(counts), "", "## Cases", ""]
    cols = ["id", "image", "text (**[head]**ₕ, **[tail]**ₜ)", "gold"]
    cols += [f"{r.name} caption" for r in runs if r.caption_aware]
    cols += [f"{r.name}" for r in runs]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for case in cases:
        text = _marked(case, ("**[", "]**ₕ"), ("**[", "]**ₜ"), _md_cell)
        cells = [str(case["id"]), f"![]({thumbs[case['id']]})" if case["id"] in thumbs else "", text]
        cells.append(_md_cell(case["gold"]))
        cells += [_md_cell(case["captions"][r.name]) for r in runs if r.caption_aware]
        for r in runs:
            p = case["predictions"][r.name]
            mark = "✓" if p["correct"] else "✗"
            cells.append(f"{mark} {_md_cell(p['relation'])} ({p['probability']:.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(path, "\n".join(lines) + "\n")


HTML_STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;font-size:13px}th{background:#f3f3f3}
mark.h{background:#ffd68a}mark.t{background:#a8d8ff}.ok{color:#06702b}.bad{color:#b00020}
.cap{color:#444;font-style:italic;max-width:28em}img{max-width:128px}"""


def write_html(path: Path, runs, cases, counts, header: list[str], images: dict[int, bytes]) -> None:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(header[0].lstrip('# '))}</title>"]
    parts += [f"<style>{HTML_STYLE}</style></head><body><h1>{e(header[0].lstrip('# '))}</h1><ul>"]
    parts += [f"<li>{e(line.lstrip('- '))}</li>" for line in header[1:] if line.strip()]
    parts += [
        "</ul><p><mark class='h'>head</mark> <mark class='t'>tail</mark></p><h2>Flips per gold relation</h2>"
    ]
    parts += ["<table><tr><th>gold relation</th>" + "".join(f"<th>{k}</th>" for k in COUNT_COLUMNS) + "</tr>"]
    for rel, c in counts.items():
        parts.append(f"<tr><td>{e(rel)}</td>" + "".join(f"<td>{c[k]}</td>" for k in COUNT_COLUMNS) + "</tr>")
    parts += ["</table><h2>Cases</h2><table><tr><th>id</th><th>image</th><th>text</th><th>gold</th>"]
    parts += [f"<th>{e(r.name)} caption</th>" for r in runs if r.caption_aware]
    parts += [f"<th>{e(r.name)}</th>" for r in runs] + ["</tr>"]
    for case in cases:
        text = _marked(case, ("<mark class='h'>", "</mark>"), ("<mark class='t'>", "</mark>"), e)
        img = images.get(case["id"])
        src = f"<img alt='{e(str(case['img_id']))}' src='data:image/jpeg;base64,{base64.b64encode(img).decode()}'>" if img else ""  # fmt: skip
        row = [str(case["id"]), src, text, e(str(case["gold"]))]
        row += [
            f"<span class='cap'>{e(case['captions'][r.name] or '')}</span>" for r in runs if r.caption_aware
        ]
        for r in runs:
            p = case["predictions"][r.name]
            cls, mark = ("ok", "✓") if p["correct"] else ("bad", "✗")
            row.append(f"<span class='{cls}'>{mark} {e(p['relation'])} ({p['probability']:.2f})</span>")
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    parts.append("</table></body></html>")
    atomic_write_text(path, "\n".join(parts) + "\n")


def run_cases(
    run_dirs: list[str | Path],
    output_dir: str | Path,
    split: str = "test",
    data_dir: str | Path | None = None,
    which: str = "all",
    limit: int | None = None,
) -> dict:
    """Write ``cases.jsonl``, ``cases.md`` and ``cases.html`` for ``run_dirs`` on ``split`` into ``output_dir``.

    ``which`` is one of :data:`FILTERS`; ``limit`` caps the rows of the markdown and HTML tables (the JSONL has
    every selected row). Returns ``{"runs", "notes", "counts", "selected", "total", "files"}``."""
    if split not in ("train", "val", "test"):
        raise CamimError(f"split must be train, val or test, got {split!r}")
    if which not in FILTERS:
        raise CamimError(f"unknown filter {which!r}; choose from {', '.join(FILTERS)}")
    if len(run_dirs) < 2:
        raise CamimError("cases compare at least two runs (--runs A B [C ...])")
    paths = [Path(p) for p in run_dirs]
    data = _data_dir(paths, data_dir)
    runs = [load_run(p, split, data) for p in paths]
    names = Counter(r.name for r in runs)
    for r in runs:  # unique column names: parent/name where two folders share a name
        if names[r.name] > 1:
            r.name = f"{r.path.parent.name}/{r.path.name}"
    cases = build_cases(runs, split, data)
    counts = flip_counts(cases)
    selected = select(cases, which)
    shown = selected if limit is None else selected[:limit]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes = [r.modality_note() for r in runs]
    if not any(r.caption_aware for r in runs) or all(r.caption_aware for r in runs):
        notes.append("no caption-aware / caption-free pair among the runs: the caption flips are not defined")
    header = [
        f"# Cases: {split}, {which} ({len(selected)} of {len(cases)} samples)",
        "",
        *[f"- {n}" for n in notes],
        f"- data: {data if data is not None else '(none found: texts, captions and images not shown)'}",
    ]
    if len(shown) < len(selected):
        header.append(
            f"- the first {len(shown)} selected rows are shown; cases.jsonl has all {len(selected)}"
        )
    images = {}
    for case in shown:
        if case["image"]:
            jpeg = _thumbnail_jpeg(Path(case["image"]))
            if jpeg is not None:
                images[case["id"]] = jpeg
    thumbs = {}
    if images:
        (out / "thumbs").mkdir(exist_ok=True)
        for i, jpeg in images.items():
            atomic_write_bytes(out / "thumbs" / f"{i}.jpg", jpeg)
            thumbs[i] = f"thumbs/{i}.jpg"
    atomic_write_text(out / "cases.jsonl", (json.dumps(c, ensure_ascii=False) + "\n" for c in selected))
    write_markdown(out / "cases.md", runs, shown, counts, header, thumbs)
    write_html(out / "cases.html", runs, shown, counts, header, images)
    return {
        "runs": [r.name for r in runs],
        "notes": notes,
        "counts": counts,
        "selected": len(selected),
        "total": len(cases),
        "files": [out / "cases.md", out / "cases.html", out / "cases.jsonl"],
    }
