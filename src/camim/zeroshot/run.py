"""``zero_shot``: an MLLM answers every sample of a split; the answers are parsed, scored and written as a run
folder that the run tools read like a trained one.

``OUT`` holds ``answers.jsonl`` (the append-only, resumable cache of raw answers, one line per (sample,
model, request hash), the captioning cache's format with the sample key in ``img_id``), ``config.yaml`` (the
resolved zero-shot settings, ``mode: zero-shot``), ``predictions.jsonl`` (``id``, ``img_id``, ``gold``,
``predicted``, ``probabilities: null``, the raw ``answer``, how it ``parsed``, whether the ``image`` was
sent), ``metrics.json`` (the split's scores from :class:`~camim.training.metrics.MREMetrics`, plus counts of
the answers) and ``report.md`` with its plots. Unparseable, empty and failed answers are scored as the
negative label and counted; failed requests are not cached, so running again asks for them (and only them).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from camim.captioning.base import CaptionBackend, CaptionResult, ChatRequest
from camim.captioning.cache import CaptionCache, CaptionRecord, read_cache
from camim.captioning.images import ImageItem, ImageProblem, load_image
from camim.data import MNREDataset, default_labels
from camim.data.descriptions import relation_descriptions
from camim.data.layout import DataLayout
from camim.errors import CamimError
from camim.progress import progress as progress_display
from camim.runs import RunFolder, prediction_row
from camim.training.metrics import MREMetrics
from camim.zeroshot.parse import EMPTY, JSON, TEXT, UNPARSEABLE, AnswerParser
from camim.zeroshot.prompt import PromptBuilder, PromptInput, request_hash, sample_key, select_shots

ANSWERS_FILE = "answers.jsonl"


@dataclass
class ZeroShotConfig:
    """What to ask: the split of ``data_dir``, captions from ``caption_source`` (``None``: none), ``shots``
    in-context examples from train drawn with ``seed``, at most ``max_images`` images per request, and only
    the first ``limit`` samples when set."""

    data_dir: str
    split: str = "test"
    caption_source: str | None = None
    shots: int = 0
    seed: int = 666
    max_images: int = 1
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.split not in ("train", "val", "test"):
            raise CamimError(f"split must be train, val or test, got {self.split!r}")
        if self.shots < 0:
            raise CamimError(f"--shots must be >= 0, got {self.shots}")
        if self.max_images < 0:
            raise CamimError(f"--max-images must be >= 0, got {self.max_images}")
        if self.limit is not None and self.limit < 1:
            raise CamimError(f"--limit must be >= 1, got {self.limit}")


@dataclass
class ZeroShotReport:
    """Counts of one run: requests sent now or found in the cache, and how the answers read."""

    samples: int = 0
    requests: int = 0  # distinct requests of this run (identical samples share one)
    cached: int = 0
    sent: int = 0
    failed: int = 0  # no answer after the retries (not cached; the next run asks again)
    retries: int = 0
    text_only: int = 0  # samples sent without their image (missing, unreadable, or --max-images 0)
    unreadable_images: int = 0  # images that existed but could not be read (sent text-only instead)
    truncated: int = 0  # answers cut at max tokens
    answers: dict[str, int] = field(default_factory=lambda: {JSON: 0, TEXT: 0, EMPTY: 0, UNPARSEABLE: 0})
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def unparseable(self) -> int:
        """Samples scored as the negative label without a label in their answer (unparseable or empty)."""
        return self.answers[EMPTY] + self.answers[UNPARSEABLE]

    @property
    def complete(self) -> bool:
        return self.failed == 0

    def summary(self) -> str:
        a = self.answers
        lines = [
            f"{self.samples} samples, {self.requests} requests: {self.sent} sent now, {self.cached} from the "
            f"cache, {self.failed} failed, {self.retries} retries ({self.seconds:.1f} s)",
            f"answers: {a[JSON]} as JSON, {a[TEXT]} as text, {a[EMPTY]} empty, {a[UNPARSEABLE]} unparseable "
            f"({self.unparseable + self.failed} scored as the negative label); {self.text_only} sent text-only"
            + (f", {self.truncated} cut at max tokens" if self.truncated else ""),
        ]
        lines += [f"  {p}" for p in self.problems[:20]]
        if self.failed:
            lines.append("rerun the same command to ask again for the failed samples")
        return "\n".join(lines)


@dataclass
class ZeroShotResult:
    """``metrics`` as in ``metrics.json``; the run folder; the report."""

    metrics: dict
    output_dir: Path
    report: ZeroShotReport


def _image(data_dir: str, split: str, layout: DataLayout, img_id: str) -> ImageItem | None:
    path = layout.path(data_dir, layout.image_dir, split) / img_id
    return ImageItem(img_id, path) if path.is_file() else None


def _inputs(ds: MNREDataset, limit: int | None, with_caption: bool, layout: DataLayout) -> list[PromptInput]:
    n = len(ds) if limit is None else min(limit, len(ds))
    out = []
    for i in range(n):
        ex = ds[i]
        caption = (ex.caption or "") if with_caption else None
        out.append(PromptInput(ex, _image(str(ds.data_dir), ds.split, layout, ex.img_id), caption))
    return out


@dataclass
class _Asker:
    """Sends a run's requests through ``backend``: what the cache holds is not asked again, answers go to the
    cache as they arrive, and ``report`` counts them."""

    backend: CaptionBackend
    cache: CaptionCache
    report: ZeroShotReport
    hashes: dict[str, str]  # request key -> request hash (what the cache is keyed by)
    progress: bool | None

    def ask(self, requests: list[ChatRequest]) -> dict[str, CaptionResult]:
        """Send the requests not in the cache; the results that were not answers (failed, missing or
        unreadable image) by request key."""
        backend, report, hashes = self.backend, self.report, self.hashes
        model, settings = backend.model, backend.settings()
        todo = [r for r in requests if (r.key, model, hashes[r.key]) not in self.cache.done]
        report.cached += len(requests) - len(todo)
        problems: dict[str, CaptionResult] = {}
        bar = progress_display(len(todo), f"zero-shot ({model})", "req", enabled=self.progress)

        def on_results(results: list[CaptionResult]) -> None:
            records = []
            for result in results:
                report.retries += result.retries
                if result.kind != "ok":
                    problems[result.img_id] = result
                    bar.set_postfix(failed=len(problems))
                    continue
                report.sent += 1
                report.truncated += result.finish_reason == "length"
                records.append(
                    CaptionRecord(
                        img_id=result.img_id,
                        text=result.text or "",
                        model=model,
                        prompt_hash=hashes[result.img_id],
                        settings={**settings, "finish_reason": result.finish_reason},
                    )
                )
            self.cache.extend(records)  # one write + fsync per batch that finished together
            bar.update(len(results))

        try:
            backend.answer(todo, on_results)
        finally:
            bar.close()
        return problems

    def ask_text_only(
        self,
        problems: dict[str, CaptionResult],
        by_key: dict[str, PromptInput],
        builder: PromptBuilder,
        requests: dict[str, ChatRequest],
    ) -> dict[str, CaptionResult]:
        """An image that exists but cannot be read: ask again text-only (said so in the prompt), counted; the
        results that were still no answer."""
        unreadable = [k for k, r in problems.items() if r.kind in ("missing", "corrupt")]
        if not unreadable:
            return {}
        self.report.unreadable_images = len(unreadable)
        for k in unreadable:
            self.report.problems.append(f"{k}: {problems.pop(k).error}; sent text-only")
            q = by_key[k]
            requests[k] = builder.request(k, PromptInput(q.example, None, q.caption))
            self.hashes[k] = request_hash(requests[k])
        return self.ask([requests[k] for k in unreadable])


def zero_shot(
    backend: CaptionBackend,
    config: ZeroShotConfig,
    output_dir: str | Path,
    progress: bool | None = None,
    fsync: bool = True,
) -> ZeroShotResult:
    """Ask ``backend`` for the relation of every sample (see the module docstring); resumable.

    ``backend`` is a captioning backend (``OpenAICaptioner``, ``TransformersCaptioner``): its ``answer``
    sends the chats with its concurrency, retries and batching. Interrupting loses only the requests in
    flight; running again sends only the requests without an answer in ``answers.jsonl``.
    """
    start = time.perf_counter()
    folder = RunFolder(Path(output_dir))
    folder.path.mkdir(parents=True, exist_ok=True)
    labels = default_labels(config.data_dir)
    if labels.negative_id is None:
        raise CamimError(
            f"{config.data_dir}: the label set has no negative label (e.g. 'None'); zero-shot scoring needs one "
            "for answers that name no label"
        )
    ds = _dataset(config, labels, config.split)
    queries = _inputs(ds, config.limit, config.caption_source is not None, DataLayout())
    report = ZeroShotReport(samples=len(queries))
    descriptions = relation_descriptions(labels.names)
    shots = _shots(config, labels, report) if config.shots else []
    builder = PromptBuilder(
        labels.names, descriptions, shots, config.max_images, config.caption_source is not None
    )
    # the backend's prompt is this run's instructions (the label list), as captions record theirs
    backend.generation = dataclasses.replace(backend.generation, prompt=builder.instructions)

    keys = [sample_key(q.example) for q in queries]
    requests: dict[str, ChatRequest] = {}
    for key, query in zip(keys, queries):
        requests.setdefault(key, builder.request(key, query))
    report.requests = len(requests)
    hashes = {k: request_hash(r) for k, r in requests.items()}
    with CaptionCache(folder.path / ANSWERS_FILE, fsync=fsync) as cache:
        if cache.torn_lines:
            report.problems.append(
                f"{ANSWERS_FILE}: an unfinished last line (a killed run's) cut off; asked again"
            )
        asker = _Asker(backend, cache, report, hashes, progress)
        problems = asker.ask(list(requests.values()))
        problems.update(asker.ask_text_only(problems, dict(zip(keys, queries)), builder, requests))
    report.failed = len(problems)
    report.problems += [f"{k}: {r.error}" for k, r in problems.items()]
    # the cached answers of exactly these requests (this model, these prompts)
    answers = {
        r.img_id: r
        for r in read_cache(folder.path / ANSWERS_FILE).records
        if r.model == backend.model and r.prompt_hash == hashes.get(r.img_id)
    }
    rows, scores = _score(queries, keys, answers, requests, labels, report)
    report.seconds = time.perf_counter() - start
    metrics = _metrics(config, scores, report, ds)
    run_config = _run_config(config, backend, builder, descriptions is not None)
    folder.write_config(run_config)
    folder.write_predictions(rows)
    _write_report(folder.path, run_config, metrics, labels.names, report, next(iter(requests.values()), None))
    folder.write_metrics(metrics)  # last: the run folder is complete
    return ZeroShotResult(metrics=metrics, output_dir=folder.path, report=report)


def _dataset(config: ZeroShotConfig, labels, split: str) -> MNREDataset:
    modalities = ("caption",) if config.caption_source is not None else ()
    return MNREDataset(
        config.data_dir, split, labels, config.caption_source, modalities, on_missing="fallback"
    )


def _shots(config: ZeroShotConfig, labels, report: ZeroShotReport) -> list[PromptInput]:
    """The in-context examples drawn from train (:func:`select_shots`); an unreadable example image is left
    out, said so, since it would fail every request."""
    train = _dataset(config, labels, "train")
    position = {id(ex): i for i, ex in enumerate(train.examples)}
    shots = []
    for ex in select_shots(train.examples, config.shots, config.seed):
        caption = (train[position[id(ex)]].caption or "") if config.caption_source is not None else None
        image = _image(config.data_dir, "train", DataLayout(), ex.img_id)
        if image is not None:
            try:
                load_image(image)
            except ImageProblem as exc:
                report.problems.append(f"in-context example {ex.index}: {exc}; shown without its image")
                image = None
        shots.append(PromptInput(ex, image, caption))
    return shots


def _score(
    queries: list[PromptInput],
    keys: list[str],
    answers: dict[str, CaptionRecord],
    requests: dict[str, ChatRequest],
    labels,
    report: ZeroShotReport,
) -> tuple[list[dict], dict]:
    """The ``predictions.jsonl`` rows and the split's scores; answers without a label (or none at all) are
    scored as the negative label, counted in ``report``."""
    parser = AnswerParser(labels.names, labels.negative_name)
    metric = MREMetrics(len(labels), labels.negative_id, labels.names)
    rows, preds, golds = [], [], []
    for key, query in zip(keys, queries):
        ex, record = query.example, answers.get(key)
        parsed = parser.parse(record.text) if record is not None else None
        if parsed is not None:
            report.answers[parsed.how] += 1
        predicted = parsed.label if parsed is not None and parsed.label is not None else labels.negative_name
        sent_image = any(p["type"] == "image" for p in requests[key].messages[-1]["content"])
        report.text_only += not sent_image
        preds.append(labels.to_id(predicted))
        golds.append(ex.label)
        # an MLLM's answer has no distribution over the labels: probabilities null, the raw answer instead
        rows.append(
            prediction_row(
                ex.index, ex.img_id, ex.relation, predicted, None,
                answer=record.text if record is not None else None,
                parsed=parsed.how if parsed is not None else "failed",
                image=sent_image,
            )
        )  # fmt: skip
    metric.update(torch.tensor(preds, dtype=torch.long), torch.tensor(golds, dtype=torch.long))
    scores = {**metric.compute(), "per_relation": metric.per_relation(),
              "confusion": metric.confusion_matrix().tolist()}  # fmt: skip
    return rows, scores


def _metrics(config: ZeroShotConfig, scores: dict, report: ZeroShotReport, ds: MNREDataset) -> dict:
    """``metrics.json``: the split's scores, how the answers read and what was sent."""
    return {
        config.split: scores,
        "num_samples": report.samples,
        "answers": {
            **report.answers,
            "failed": report.failed,
            "scored_as_negative_without_label": report.unparseable + report.failed,
            "text_only": report.text_only,
            "unreadable_images": report.unreadable_images,
            "truncated": report.truncated,
        },
        "requests": {
            "distinct": report.requests,
            "sent": report.sent,
            "cached": report.cached,
            "retries": report.retries,
        },
        "complete": report.complete,
        "data_report": {k: v for k, v in ds.report.items() if v},
    }


def _run_config(
    config: ZeroShotConfig, backend: CaptionBackend, builder: PromptBuilder, described: bool
) -> dict:
    """``config.yaml`` of a zero-shot run (``mode: zero-shot``; the run tools read it as one more run)."""
    return {
        "name": "zero-shot",
        "description": f"Zero-shot MLLM extractor: {backend.model} answers with the relation",
        "mode": "zero-shot",
        "model": {"name": "mllm", "model": backend.model, **backend.settings()},
        "data": {
            "data_dir": str(config.data_dir),
            "split": config.split,
            "caption_source": config.caption_source,
            "limit": config.limit,
        },
        "prompt": {
            "shots": config.shots,
            "seed": config.seed,
            "max_images": config.max_images,
            "label_descriptions": described,
            "shot_samples": [{"id": s.example.index, "relation": s.example.relation} for s in builder.shots],
        },
    }


def _write_report(
    out: Path,
    config: dict,
    metrics: dict,
    names: list[str],
    report: ZeroShotReport,
    example: ChatRequest | None,
) -> None:
    from camim.reports import write_run_report

    a = metrics["answers"]
    p = config["prompt"]
    summary = (
        f"Zero-shot: `{config['model']['model']}` ({config['model']['backend']} backend) answered "
        f"{metrics['num_samples']} samples of `{config['data']['split']}` with {p['shots']} in-context examples "
        f"(seed {p['seed']}), captions `{config['data']['caption_source']}`, at most {p['max_images']} image(s) "
        "per request. Full settings: `config.yaml`; raw answers: `predictions.jsonl`."
    )
    sections = [
        "## Answers",
        "",
        "| read as JSON | read from text | empty | unparseable | failed | scored as the negative label without one |",
        "|---|---|---|---|---|---|",
        f"| {a[JSON]} | {a[TEXT]} | {a[EMPTY]} | {a[UNPARSEABLE]} | {a['failed']} | "
        f"{a['scored_as_negative_without_label']} |",
        "",
        f"{a['text_only']} samples were sent without an image (not available, unreadable, or `--max-images 0`); "
        f"{a['truncated']} answers were cut at the token limit.",
        "",
    ]
    if not metrics["complete"]:
        sections += [
            f"**Incomplete:** {a['failed']} requests failed after their retries and are scored as the negative "
            "label; run the same command again to ask for them.",
            "",
        ]
    if example is not None:
        sections += ["## The prompt of the first sample", ""]
        for m in example.messages:
            parts = [
                q["text"] if q["type"] == "text" else f"[image {q['image'].img_id}]" for q in m["content"]
            ]
            sections += [f"**{m['role']}**", "", "```text", "\n".join(parts), "```", ""]
    write_run_report(out, config, metrics, names, summary=summary, sections=sections)
