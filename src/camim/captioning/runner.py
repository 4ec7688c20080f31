"""Run a backend over a list of images into the caption cache, resuming where an earlier run stopped."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from camim.captioning.base import CaptionBackend, CaptionResult
from camim.captioning.cache import CaptionCache, CaptionRecord
from camim.progress import progress as progress_display

_MAX_LISTED = 20  # problems listed per kind in a report


@dataclass
class CaptionRunReport:
    """What one run did. ``skipped_done`` images were already in the cache; ``missing``/``corrupt`` images
    and ``failed`` requests wrote nothing, so the next run tries them again."""

    total: int = 0
    skipped_done: int = 0
    captioned: int = 0
    already_written: int = 0  # captioned here but written meanwhile by a concurrent run (not duplicated)
    torn_lines: int = 0  # an unfinished last line a killed run left in the cache, cut off (its image redone)
    empty: int = 0  # captions with empty text (stored; the model answered nothing)
    truncated: int = 0  # finish_reason "length": the answer hit max_tokens
    missing: int = 0
    corrupt: int = 0
    failed: int = 0
    retries: int = 0
    seconds: float = 0.0
    problems: dict[str, list[str]] = field(default_factory=dict)  # kind -> first messages

    @property
    def complete(self) -> bool:
        """True when every requested image now has a caption or cannot have one (missing/corrupt)."""
        return self.failed == 0

    def add(self, result: CaptionResult) -> None:
        self.retries += result.retries
        if result.kind == "ok":
            return
        setattr(self, result.kind, getattr(self, result.kind) + 1)
        listed = self.problems.setdefault(result.kind, [])
        if len(listed) < _MAX_LISTED:
            listed.append(f"{result.img_id}: {result.error}")

    def summary(self) -> str:
        """A few human-readable lines."""
        rate = self.captioned / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{self.total} images: {self.captioned} captioned now ({rate:.2f}/s), {self.skipped_done} already "
            f"cached, {self.missing} missing, {self.corrupt} corrupt, {self.failed} failed; {self.retries} retries"
        ]
        if self.empty or self.truncated or self.already_written:
            lines.append(
                f"{self.empty} empty captions, {self.truncated} cut at max tokens, "
                f"{self.already_written} written meanwhile by another run"
            )
        if self.torn_lines:
            lines.append(
                f"{self.torn_lines} unfinished last line (a killed run's) cut off the cache; its image asked again"
            )
        for kind, messages in self.problems.items():
            lines.extend(f"  {kind}: {m}" for m in messages)
        if self.failed:
            lines.append("rerun the same command to retry the failed images")
        return "\n".join(lines)


def caption_images(
    items: Sequence,
    backend: CaptionBackend,
    output: str | Path,
    limit: int | None = None,
    progress: bool | None = None,
    fsync: bool = True,
) -> CaptionRunReport:
    """Caption ``items`` (:class:`~camim.captioning.images.ImageItem`) with ``backend`` into the JSONL cache
    ``output``, skipping every image that already has a line for (img_id, model, prompt hash).

    ``limit`` caps how many new images are sent. ``progress`` ``None`` shows a bar only on a terminal.
    Interrupting (Ctrl-C, kill) loses only the requests in flight; run again to resume.
    """
    start = time.perf_counter()
    model, phash = backend.model, backend.generation.prompt_hash
    settings = backend.settings()
    report = CaptionRunReport()
    with CaptionCache(output, fsync=fsync) as cache:
        report.torn_lines = cache.torn_lines
        unique = list({item.img_id: item for item in items}.values())
        report.total = len(unique)
        todo = [item for item in unique if (item.img_id, model, phash) not in cache.done]
        report.skipped_done = report.total - len(todo)
        if limit is not None:
            todo = todo[:limit]
        bar = progress_display(len(todo), f"captioning ({model})", "img", enabled=progress)

        def on_results(results: list[CaptionResult]) -> None:
            records = []
            for result in results:
                report.add(result)
                if result.kind == "ok":
                    record = CaptionRecord(
                        img_id=result.img_id,
                        text=result.text or "",
                        model=model,
                        prompt=backend.generation.prompt,
                        prompt_hash=phash,
                        settings=settings,
                    )
                    records.append(record)
                    report.empty += not record.text.strip()
                    report.truncated += result.finish_reason == "length"
            written = cache.extend(records)  # one write + fsync for the whole batch
            report.captioned += written
            report.already_written += len(records) - written
            bar.update(len(results))
            if report.failed or report.missing or report.corrupt:
                bar.set_postfix(failed=report.failed, missing=report.missing, corrupt=report.corrupt)

        try:
            backend.caption(todo, on_results)
        finally:
            bar.close()
            report.seconds = time.perf_counter() - start
    return report
