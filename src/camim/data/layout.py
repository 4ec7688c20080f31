"""Where each file of an MNRE-style data folder lives. The default is the layout of the released
CAMIM/TMR repositories (``CAMIM/data``); every path is relative to the data folder and may contain
``{split}`` (and, for captions, ``{prefix}``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from camim.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val", "test")

# Caption source name -> file prefix under caption/ (paper Table 2 model in the comment).
CAPTION_SOURCES: dict[str, str] = {
    "minicpm": "minicpm",  # MiniCPM-V 2.5 (the released code trains with this one)
    "caption": "caption",  # Qwen-VL-Plus
    "qwenvl": "caption",
    "cogvlm": "cogvlm",  # CogVLM2
    "llavanext": "llavanext",  # LLaVA-NeXT
    "instruct": "instruct",  # InstructBLIP
    "blip2": "BLIP",  # BLIP-2
}
# The six distinct released sources, one name each (for inspect/validate).
RELEASED_CAPTION_SOURCES: tuple[str, ...] = ("minicpm", "caption", "cogvlm", "llavanext", "instruct", "blip2")


@dataclass
class DataLayout:
    """File names and image folders of a data folder (default: the released CAMIM layout).

    ``samples`` and the object dictionaries list candidates tried in order (first existing wins); captions
    are tried as ``{caption}.txt``, ``.jsonl`` then ``.json``.
    """

    rel2id: str = "ours_rel2id.json"
    samples: tuple[str, ...] = ("txt/ours_{split}.txt", "{split}.jsonl", "txt/{split}.jsonl")
    caption: str = "caption/{prefix}_{split}"
    strong_ori: str = "txt/{split}_weight_strong.txt"
    weak_ori: str = "txt/{split}_weight_weak.txt"
    strong_dif: str = "txt/dif_{split}_weight_strong.txt"
    weak_dif: str = "txt/dif_{split}_weight_weak.txt"
    objects: tuple[str, ...] = ("txt/mre_{split}_dict.pth", "txt/mre_{split}_dict.json")
    generated_boxes: tuple[str, ...] = ("txt/mre_dif_{split}_dict.pth", "txt/mre_dif_{split}_dict.json")
    phrases: str = "txt/phrase_text_{split}.json"
    image_dir: str = "img_org/{split}"
    crops_dir: str = "img_vg/{split}/crops"
    generated_image_dir: str = "diffusion_pic/{split}"

    def path(self, root: str | Path, template: str, split: str, **kw: str) -> Path:
        return Path(root) / template.format(split=split, **kw)

    def first_existing(self, root: str | Path, templates: tuple[str, ...], split: str) -> Path | None:
        """The first of ``templates`` that exists for ``split``, or ``None``."""
        for t in templates:
            p = self.path(root, t, split)
            if p.is_file():
                return p
        return None

    def samples_path(self, root: str | Path, split: str) -> Path:
        """The sample file of ``split``; ``DataError`` listing the candidates when none exists."""
        p = self.first_existing(root, self.samples, split)
        if p is None:
            tried = ", ".join(str(self.path(root, t, split)) for t in self.samples)
            raise DataError(f"no sample file for split {split!r} (tried {tried})", root)
        return p

    def caption_path(self, root: str | Path, source: str, split: str) -> Path:
        """The caption file of a source name (see :data:`CAPTION_SOURCES`; other names are used as prefix)."""
        prefix = CAPTION_SOURCES.get(source, source)
        base = self.path(root, self.caption, split, prefix=prefix)
        for ext in (".txt", ".jsonl", ".json"):
            p = base.with_name(base.name + ext)
            if p.is_file():
                return p
        known = ", ".join(CAPTION_SOURCES)
        raise DataError(
            f"no caption file for source {source!r} (tried {base}.txt/.jsonl/.json; known: {known}); "
            f"make it with `camim caption --data-dir {root} --split {split} --model MLLM "
            f"--output {base}.jsonl` (see docs/captioning.md) or `camim caption import` of a released set",
            root,
        )
