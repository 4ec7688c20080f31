"""What the three preparation steps share: the resumable progress log, the samples of a split, device
selection and the per-run report.

Progress log: one append-only JSONL file per step and split (``{data_dir}/progress/{step}_{split}.jsonl``).
Each finished item is one line ``{"key": ..., "settings": <hash>, ...result}`` written with a single
``os.write`` on an ``O_APPEND`` descriptor (:class:`camim.io.JsonlLog`), so an interrupted run loses at most
the item in flight. A last line cut short by a crash (SIGKILL mid-write) is cut off when the log is opened
and counted (``torn_lines_dropped`` in the step's report); any other undecodable line is ignored and counted
(``unreadable_progress_lines``); their items are redone. A rerun treats an item as done when the log holds a
line for its key made with the same settings (model, thresholds, ...), so changing a setting redoes the work.
One process writes a split's log at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from camim.data.layout import DataLayout
from camim.data.samples import OnError, read_samples
from camim.data.types import MNREExample
from camim.errors import CamimError, DataError, first_line
from camim.io import JsonlLog, checked_image, settings_hash

PROGRESS_DIR = "progress"


class ProgressLog:
    """Append-only JSONL record of finished items (see the module docstring), on :class:`camim.io.JsonlLog`."""

    def __init__(self, path: str | Path, settings: dict):
        self.path = Path(path)
        self.settings = dict(settings)
        self.hash = settings_hash(self.settings)
        self.done: dict[str, dict] = {}
        self.other_settings = 0  # lines made with different settings (ignored)
        self._log = JsonlLog(self.path, what="progress log")
        records = self._log.read()
        # the last write was cut short: cut off (this process is the log's one writer), its item redone
        self.torn_lines = int(self._log.partial_tail and self._log.drop_partial_tail())
        self.bad_lines = len(self._log.bad_lines)  # undecodable lines (ignored: their items are redone)
        for _, rec in records:
            if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
                self.bad_lines += 1  # e.g. a line cut short by a crash, later followed by new ones: redo it
            elif rec.get("settings") == self.hash:
                self.done[rec["key"]] = rec
            else:
                self.other_settings += 1

    def append(self, key: str, record: dict) -> dict:
        """Record ``key`` as done with ``record`` (a JSON-serialisable dict); returns the stored line."""
        rec = {"key": key, "settings": self.hash, **record}
        self._log.append([rec])  # starts a fresh line after a cut-short one
        self.done[key] = rec
        return rec


def progress_path(data_dir: str | Path, step: str, split: str) -> Path:
    """Where the progress log of ``step`` on ``split`` lives."""
    return Path(data_dir) / PROGRESS_DIR / f"{step}_{split}.jsonl"


def is_valid_image(path: str | Path) -> bool:
    """True when ``path`` exists, is within the image limits and PIL can verify it."""
    try:
        with checked_image(path) as im:
            im.verify()
        return True
    except Exception:  # any decoder failure means "redo it"
        return False


def load_split(
    data_dir: str | Path, split: str, layout: DataLayout | None = None, on_error: OnError = "raise"
) -> tuple[list[MNREExample], list[DataError]]:
    """The samples of ``split`` read through the data layer (relation optional, any label accepted)."""
    layout = layout or DataLayout()
    problems: list[DataError] = []
    path = layout.samples_path(data_dir, split)
    samples = read_samples(path, labels=None, on_error=on_error, problems=problems, require_relation=False)
    return samples, problems


def resolve_device(device: str | None = None):
    """``device`` as a torch device; ``None`` picks CUDA when available, else CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def loading_pretrained(what: str, model: str) -> Iterator[None]:
    """Around Hugging Face ``from_pretrained`` calls: a missing or unusable ``model`` (hub id or folder;
    ``OSError``/``ValueError``) becomes the one-line ``cannot load {what} {model!r}: <first line>``."""
    try:
        yield
    except (OSError, ValueError) as exc:
        raise CamimError(f"cannot load {what} {model!r}: {first_line(exc)}") from None


def progress_bar(items: Iterable, total: int, desc: str, enabled: bool = True):
    """``items`` with a progress display (:func:`camim.progress.progress`: a bar on a terminal, a line every
    30 s in a log); a plain iterator when disabled."""
    if not enabled:
        yield from items
        return
    from camim.progress import progress

    with progress(total, desc, "item") as shown:
        for item in items:
            yield item
            shown.update(1)


@dataclass
class PrepareReport:
    """What one run of a step did: items processed now, skipped as already done, and counted fallbacks."""

    step: str
    split: str
    total: int = 0
    processed: int = 0
    skipped_done: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note_log(self, log: ProgressLog) -> None:
        """Say what the progress log held besides usable lines."""
        if log.other_settings:
            self.notes.append(
                f"{log.other_settings} progress lines made with other settings ignored ({log.path})"
            )
        if log.bad_lines:
            self.count("unreadable_progress_lines", log.bad_lines)
        if log.torn_lines:
            self.count("torn_lines_dropped", log.torn_lines)

    def count(self, what: str, n: int = 1) -> None:
        self.fallbacks[what] = self.fallbacks.get(what, 0) + n

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"{self.step} [{self.split}]: {self.total} items, {self.processed} processed, "
            f"{self.skipped_done} already done (skipped)"
        ]
        for k, v in sorted(self.fallbacks.items()):
            lines.append(f"  {k}: {v}")
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  wrote {o}" for o in self.outputs]
        return "\n".join(lines)
