"""Statistics and validation of a whole data folder (``camim data inspect`` / ``camim data validate``).

:func:`scan` reads every file of every split once and returns a JSON-ready summary plus two lists:
``problems`` (the folder cannot be used as is: ``validate`` exits 1) and ``warnings`` (worth knowing,
but the released data has them too: empty BLIP captions, degenerate boxes, extra caption lines).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from camim.data.auxiliary import iter_score_lines, read_box_dict, read_object_dict, read_phrases
from camim.data.captions import Captions, read_captions
from camim.data.labels import LabelSet
from camim.data.layout import CAPTION_SOURCES, RELEASED_CAPTION_SOURCES, SPLITS, DataLayout
from camim.data.samples import read_relations, read_samples
from camim.data.types import MNREExample
from camim.errors import DataError, ImageError
from camim.io import ImageLimits, checked_image

_PREFIX_TO_SOURCE = {prefix: name for name, prefix in reversed(list(CAPTION_SOURCES.items()))}


@dataclass
class ScanResult:
    summary: dict
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _ratio(n: int, d: int) -> float:
    return round(n / d, 6) if d else 0.0


def discover_caption_sources(data_dir: Path, layout: DataLayout, splits: tuple[str, ...]) -> list[str]:
    """The released source names plus any other caption prefix found in the caption folder."""
    sources = list(RELEASED_CAPTION_SOURCES)
    template = layout.path(data_dir, layout.caption, "{split}", prefix="{prefix}")
    folder = template.parent
    if folder.is_dir() and "{prefix}" in template.name:
        head, tail = template.name.split("{prefix}", 1)
        split_alt = "|".join(re.escape(s) for s in splits)
        pattern = re.compile(
            "^"
            + re.escape(head)
            + r"(.+?)"
            + re.escape(tail).replace(r"\{split\}", f"(?:{split_alt})")
            + r"\.(txt|jsonl|json)$"
        )
        for name in sorted(os.listdir(folder)):
            m = pattern.match(name)
            if m and m.group(1) not in CAPTION_SOURCES.values():
                src = _PREFIX_TO_SOURCE.get(m.group(1), m.group(1))
                if src not in sources:
                    sources.append(src)
    return sources


def _caption_files(data_dir: Path, layout: DataLayout, source: str, split: str) -> list[Path]:
    prefix = CAPTION_SOURCES.get(source, source)
    base = layout.path(data_dir, layout.caption, split, prefix=prefix)
    return [p for ext in (".txt", ".jsonl", ".json") if (p := base.with_name(base.name + ext)).is_file()]


def _files_in(folder: Path) -> set[str] | None:
    try:
        return set(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return None


class _Scanner:
    def __init__(self, data_dir: Path, layout: DataLayout, check_images: bool, limits: ImageLimits):
        self.root = data_dir
        self.layout = layout
        self.check_images = check_images
        self.limits = limits
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, msg: object) -> None:
        self.problems.append(str(msg))

    def warn(self, msg: object) -> None:
        self.warnings.append(str(msg))

    # ---- labels --------------------------------------------------------------------------------------
    def labels(self, splits: tuple[str, ...]) -> LabelSet | None:
        rel2id = self.root / self.layout.rel2id
        try:
            if rel2id.is_file():
                return LabelSet.from_rel2id(rel2id)
            rels = []
            for split in splits:
                p = self.layout.first_existing(self.root, self.layout.samples, split)
                if p is not None:
                    rels += read_relations(p)
            if not rels:
                self.problem(DataError("no rel2id file and no labelled samples", self.root))
                return None
            self.warn(f"{rel2id}: not found; labels inferred from the samples")
            return LabelSet.infer(rels)
        except DataError as err:
            self.problem(err)
            return None

    # ---- one split -----------------------------------------------------------------------------------
    def split(self, split: str, labels: LabelSet | None, sources: list[str], cap_stats: dict) -> dict | None:
        path = self.layout.first_existing(self.root, self.layout.samples, split)
        if path is None:
            self.warn(f"{self.root}: no sample file for split {split!r}")
            return None
        errors: list[DataError] = []
        try:
            examples = read_samples(path, labels, on_error="skip", problems=errors)
        except DataError as err:
            self.problem(err)
            return None
        for err in errors:
            self.problem(err)
        n = len(examples)
        dist = Counter(ex.relation for ex in examples)
        img_ids = {ex.img_id for ex in examples}
        neg = labels.negative_name if labels is not None else None
        info: dict = {
            "file": str(path),
            "samples": n,
            "skipped_lines": len(errors),
            "images": len(img_ids),
            "labels": len(dist),
            "label_distribution": dict(sorted(dist.items(), key=lambda kv: (-kv[1], kv[0]))),
            "negative_share": _ratio(dist.get(neg, 0), n) if neg is not None else None,
        }
        info["captions"] = {src: self.captions(src, split, examples, cap_stats) for src in sources}
        info["scores"] = self.scores(split, examples)
        info["objects"], crop_names = self.objects(split, examples)
        info["generated_boxes"] = self.boxes(split, examples)
        info["phrases"] = self.phrases(split, examples)
        info["image_files"] = self.images(self.layout.image_dir, split, sorted(img_ids), n, examples)
        info["generated_image_files"] = self.images(
            self.layout.generated_image_dir, split, sorted(img_ids), n, examples
        )
        info["crop_files"] = self.crops(split, crop_names)
        return info

    def captions(self, source: str, split: str, examples: list[MNREExample], cap_stats: dict) -> dict:
        files = _caption_files(self.root, self.layout, source, split)
        stats = cap_stats.setdefault(
            source, {"covered": 0, "samples": 0, "words": 0, "images": 0, "empty": 0}
        )
        stats["samples"] += len(examples)
        if not files:
            return {"file": None, "coverage": 0.0, "mean_words": 0.0, "empty": 0}
        tables: list[Captions] = []
        for f in files:
            try:
                table = read_captions(f, on_error="skip")
            except DataError as err:
                self.problem(err)
                continue
            for err in table.problems:
                self.problem(err)
            tables.append(table)
        if not tables:
            return {"file": str(files[0]), "coverage": 0.0, "mean_words": 0.0, "empty": 0}
        main = tables[0]
        for other in tables[1:]:
            differ = sum(1 for k, v in other.texts.items() if main.get(k) != v)
            if differ:
                self.warn(f"{other.path}: {differ} captions differ from {main.path}")
        missing = [ex for ex in examples if main.get(ex.img_id) is None]
        if missing:
            self.problem(
                f"{main.path}: no caption for {len(missing)} of {len(examples)} samples "
                f"(first: {missing[0].img_id!r} at {missing[0].source})"
            )
        used = {ex.img_id: main.get(ex.img_id) for ex in examples if main.get(ex.img_id) is not None}
        words = sum(len(t.split()) for t in used.values())
        empty = sum(1 for t in used.values() if not t)
        if empty:
            self.warn(f"{main.path}: {empty} empty captions")
        covered = len(examples) - len(missing)
        stats["covered"] += covered
        stats["words"] += words
        stats["images"] += len(used)
        stats["empty"] += empty
        return {
            "file": str(main.path),
            "coverage": _ratio(covered, len(examples)),
            "mean_words": round(words / len(used), 3) if used else 0.0,
            "empty": empty,
            "unused": len(main) - len(used),
        }

    def scores(self, split: str, examples: list[MNREExample]) -> dict:
        lay = self.layout
        out: dict = {}
        pairs = {"ori": (lay.strong_ori, lay.weak_ori), "dif": (lay.strong_dif, lay.weak_dif)}
        covered_all = set(ex.img_id for ex in examples)
        any_file = False
        for kind, (strong_t, weak_t) in pairs.items():
            strong_p, weak_p = lay.path(self.root, strong_t, split), lay.path(self.root, weak_t, split)
            lines = {}
            for p in (strong_p, weak_p):
                if not p.is_file():
                    self.problem(DataError("score file not found", p))
                    lines[p] = None
                    continue
                any_file = True
                errs: list[DataError] = []
                lines[p] = list(iter_score_lines(p, on_error="skip", problems=errs))
                for e in errs:
                    self.problem(e)
            s_lines, w_lines = lines[strong_p], lines[weak_p]
            if s_lines is None or w_lines is None:
                covered_all = set()
                continue
            aligned = len(s_lines) == len(w_lines) and all(a[1] == b[1] for a, b in zip(s_lines, w_lines))
            if aligned:  # strong + weak = 1 per line
                bad = [(a, b) for a, b in zip(s_lines, w_lines) if abs(a[2] + b[2] - 1.0) > 1e-4]
            else:  # per img_id, last line wins
                s_d, w_d = {a[1]: a for a in s_lines}, {b[1]: b for b in w_lines}
                bad = [
                    (s_d[k], w_d[k])
                    for k in s_d.keys() & w_d.keys()
                    if abs(s_d[k][2] + w_d[k][2] - 1.0) > 1e-4
                ]
            if bad:
                a, b = bad[0]
                self.problem(
                    f"{strong_p}:{a[0]}: strong + weak != 1 on {len(bad)} lines "
                    f"(first: {a[1]!r} {a[2]} + {b[2]} at {weak_p}:{b[0]})"
                )
            ids = {a[1] for a in s_lines} & {b[1] for b in w_lines}
            covered_all &= ids
            n_cov = sum(1 for ex in examples if ex.img_id in ids)
            if n_cov < len(examples):
                self.problem(
                    f"{strong_p}: no {kind} score for {len(examples) - n_cov} of {len(examples)} samples"
                )
            values: dict[str, list[float]] = {}
            for _, img, v in s_lines:
                values.setdefault(img, []).append(v)
            out[kind] = {
                "lines": len(s_lines),
                "coverage": _ratio(n_cov, len(examples)),
                "images_with_conflicting_lines": sum(1 for v in values.values() if len(set(v)) > 1),
                "strong_plus_weak_is_1": not bad,
            }
        n_all = sum(1 for ex in examples if ex.img_id in covered_all) if any_file else 0
        out["coverage"] = _ratio(n_all, len(examples))
        return out

    def _index_dict(self, templates: tuple[str, ...], split: str, reader, what: str, n: int):
        path = self.layout.first_existing(self.root, templates, split)
        if path is None:
            self.problem(
                DataError(f"{what} not found (tried {[t.format(split=split) for t in templates]})", self.root)
            )
            return None, None
        try:
            data = reader(path)
        except DataError as err:
            self.problem(err)
            return None, path
        missing = n - sum(1 for i in range(n) if i in data)
        if missing:
            self.problem(DataError(f"no entry for {missing} of {n} samples", path))
        extra = sum(1 for k in data if k >= n)
        if extra:
            self.warn(DataError(f"{extra} entries beyond the {n} samples", path))
        return data, path

    def objects(self, split: str, examples: list[MNREExample]) -> tuple[dict, dict | None]:
        n = len(examples)
        data, path = self._index_dict(self.layout.objects, split, read_object_dict, "object dictionary", n)
        if data is None:
            return {"file": None if path is None else str(path), "coverage": 0.0}, None
        lengths = Counter(len(data.get(ex.index, [])) for ex in examples)
        return {
            "file": str(path),
            "coverage": _ratio(sum(1 for ex in examples if ex.index in data), n),
            "list_lengths": {str(k): v for k, v in sorted(lengths.items())},
        }, {ex.index: data.get(ex.index, []) for ex in examples}

    def boxes(self, split: str, examples: list[MNREExample]) -> dict:
        n = len(examples)
        data, path = self._index_dict(self.layout.generated_boxes, split, read_box_dict, "box dictionary", n)
        if data is None:
            return {"file": None if path is None else str(path), "coverage": 0.0}
        degenerate = sum(1 for bs in data.values() for b in bs if b[2] - b[0] < 1 or b[3] - b[1] < 1)
        if degenerate:
            self.warn(DataError(f"{degenerate} degenerate boxes (under 1 px; their crops are skipped)", path))
        return {
            "file": str(path),
            "coverage": _ratio(sum(1 for ex in examples if ex.index in data), n),
            "degenerate": degenerate,
        }

    def phrases(self, split: str, examples: list[MNREExample]) -> dict:
        n = len(examples)
        data, path = self._index_dict((self.layout.phrases,), split, read_phrases, "phrase file", n)
        if data is None:
            return {"file": None if path is None else str(path), "coverage": 0.0}
        used = [data[ex.index] for ex in examples if ex.index in data]
        return {
            "file": str(path),
            "coverage": _ratio(len(used), n),
            "mean_words": round(sum(len(p.split()) for p in used) / len(used), 3) if used else 0.0,
        }

    def images(
        self, template: str, split: str, img_ids: list[str], n: int, examples: list[MNREExample]
    ) -> dict:
        folder = self.layout.path(self.root, template, split)
        present = _files_in(folder)
        if present is None:
            return {"folder": str(folder), "present": False, "coverage": 0.0}
        have = {i for i in img_ids if i in present}
        if len(have) < len(img_ids):
            first = next(i for i in img_ids if i not in present)
            self.problem(
                DataError(
                    f"{len(img_ids) - len(have)} of {len(img_ids)} images missing (first: {first})", folder
                )
            )
        if self.check_images:
            self._check_headers(folder, sorted(have))
        return {
            "folder": str(folder),
            "present": True,
            "coverage": _ratio(sum(1 for ex in examples if ex.img_id in have), n),
        }

    def crops(self, split: str, crop_names: dict | None) -> dict:
        folder = self.layout.path(self.root, self.layout.crops_dir, split)
        present = _files_in(folder)
        if present is None or crop_names is None:
            return {"folder": str(folder), "present": present is not None, "coverage": 0.0}
        names = {c for cs in crop_names.values() for c in cs}
        have = names & present
        if len(have) < len(names):
            first = sorted(names - have)[0]
            self.problem(
                DataError(f"{len(names) - len(have)} of {len(names)} crops missing (first: {first})", folder)
            )
        if self.check_images:
            self._check_headers(folder, sorted(have))
        return {"folder": str(folder), "present": True, "coverage": _ratio(len(have), len(names))}

    def _check_headers(self, folder: Path, names: list[str]) -> None:
        """Open each image's header (no decoding) to catch unreadable files and absurd sizes."""
        for name in names:
            path = folder / name
            try:
                with checked_image(path, self.limits):
                    pass
            except ImageError as exc:
                self.problem(exc if exc.too_large else DataError(f"unreadable image: {exc.problem}", path))


def scan(
    data_dir: str | Path,
    layout: DataLayout | None = None,
    splits: tuple[str, ...] = SPLITS,
    check_images: bool = True,
    limits: ImageLimits = ImageLimits(),
) -> ScanResult:
    """Read every file of ``data_dir`` once; return the summary, the problems and the warnings."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError("data folder not found", root)
    layout = layout or DataLayout()
    sc = _Scanner(root, layout, check_images, limits)
    labels = sc.labels(splits)
    sources = discover_caption_sources(root, layout, splits)
    cap_stats: dict = {}
    split_info = {}
    for split in splits:
        info = sc.split(split, labels, sources, cap_stats)
        if info is not None:
            split_info[split] = info
    if not split_info:
        sc.problem(DataError("no sample file for any split", root))

    total = sum(s["samples"] for s in split_info.values())

    def pooled(key: str) -> dict:
        return {
            "coverage": _ratio(sum(s[key]["coverage"] * s["samples"] for s in split_info.values()), total)
        }

    summary = {
        "data_dir": str(root),
        "num_labels": len(labels) if labels is not None else 0,
        "labels": list(labels.names) if labels is not None else [],
        "negative": labels.negative_name if labels is not None else None,
        "samples": total,
        "splits": split_info,
        "captions": {
            src: {
                "coverage": _ratio(st["covered"], st["samples"]),
                "mean_words": round(st["words"] / st["images"], 3) if st["images"] else 0.0,
                "empty": st["empty"],
            }
            for src, st in cap_stats.items()
        },
        "scores": pooled("scores"),
        "objects": pooled("objects"),
        "generated_boxes": pooled("generated_boxes"),
        "phrases": pooled("phrases"),
        "images": pooled("image_files"),
        "generated_images": pooled("generated_image_files"),
        "crops": pooled("crop_files"),
    }
    return ScanResult(summary, sc.problems, sc.warnings)
