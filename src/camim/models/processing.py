"""The processor: a list of :class:`MNREExample` -> one :class:`MREBatch` of tensors.

Text marking (reference §3):
- ``bert`` / ``tmr``: OpenNRE/TMR style. The token list is cut at the two spans into five pieces, each
  word-piece tokenised alone; the head is wrapped ``[unused0] .. [unused1]`` and the tail ``[unused2] ..
  [unused3]`` whatever their order; ``[CLS] .. [SEP]``, zero-padded, cut to ``max_length``; head_pos/tail_pos
  are the opening markers, clipped to ``max_length - 1``.
- ``hvpnet``: ``<s>``/``</s>``/``<o>``/``</o>`` inserted in the word list before the words at the span
  boundaries (the closing marker is absent when the entity ends the sentence, as released), then
  ``tokenizer(..., max_length, truncation, padding="max_length")``; positions are the first ``<s>``/``<o>``.

Counted fallbacks (``processor.report``): a missing caption is encoded as the empty caption ([CLS] [SEP]),
as the released code does for empty BLIP captions; a missing phrase becomes "head name + tail name" (what
MNRE's phrase files hold, minus type words); missing scores become strong = weak = 0.5 when
``missing_scores="uniform"``; absent object crops are zero images with ``objects_mask`` 0 (released
zero-padding). A model that needs an image the example lacks raises a :class:`CamimError` naming the sample.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from camim.errors import CamimError
from camim.models.batch import MREBatch

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from camim.data.types import MNREExample
    from camim.models.config import ModelConfig

OPENNRE_MARKERS = ("[unused0]", "[unused1]", "[unused2]", "[unused3]")
HVPNET_MARKERS = ("<s>", "</s>", "<o>", "</o>")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Modalities without a fallback: a model that needs one of them refuses an example that lacks it (the
# training data module checks their files before training, whatever data.on_missing says).
NO_FALLBACK_MODALITIES = frozenset({"image", "generated_image"})


def ensure_tokens(tokenizer: PreTrainedTokenizerBase, tokens: tuple[str, ...]) -> int:
    """Add marker tokens the vocabulary lacks (as special tokens); returns how many were added."""
    unk = tokenizer.unk_token_id
    missing = [t for t in tokens if tokenizer.convert_tokens_to_ids(t) in (None, unk)]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return len(missing)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """The crop pipeline's geometry: RGB, Resize(size*256/224) of the short side, CenterCrop(size)."""
    img = img.convert("RGB")
    short = round(size * 256 / 224)
    w, h = img.size
    if w <= h:
        nw, nh = short, max(1, round(h * short / w))
    else:
        nw, nh = max(1, round(w * short / h)), short
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def crop_pixels(img: Image.Image, size: int) -> torch.Tensor:
    """Object-crop pipeline (and the clean full-image one): :func:`resize_center_crop`, ToTensor, ImageNet
    Normalize -> (3, size, size) float32."""
    img = resize_center_crop(img, size)
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (arr - mean) / std


def released_full_image_pixels(img: Image.Image, size: int) -> torch.Tensor:
    """The released full-image quirk (cv2): BGR channel order, 0-255 floats, stretched to size x size with
    area interpolation (PIL BOX), no normalisation -> (3, size, size) float32."""
    img = img.convert("RGB").resize((size, size), Image.BOX)
    arr = np.asarray(img, dtype=np.float32)[:, :, ::-1].copy()  # RGB -> BGR
    return torch.from_numpy(arr).permute(2, 0, 1)


class MREProcessor:
    """Turns examples into an :class:`MREBatch` for one model config (see the module docstring)."""

    def __init__(self, config: ModelConfig, tokenizer: PreTrainedTokenizerBase, needs: set[str]):
        self.config = config
        self.tokenizer = tokenizer
        self.needs = set(needs)
        self.report: Counter[str] = Counter()
        markers = HVPNET_MARKERS if config.name == "hvpnet" else OPENNRE_MARKERS
        ensure_tokens(tokenizer, markers)
        self.marker_ids = [tokenizer.convert_tokens_to_ids(t) for t in markers]

    # ---------------------------------------------------------------- text
    def mark_opennre(self, ex: MNREExample) -> tuple[list[int], int, int]:
        """OpenNRE/TMR entity marking (reference §3) -> (ids without padding, head_pos, tail_pos)."""
        tok = self.tokenizer
        sentence = ex.tokens
        pos_head, pos_tail = (ex.head.start, ex.head.end), (ex.tail.start, ex.tail.end)
        rev = pos_head[0] > pos_tail[0]
        pos_min, pos_max = (pos_tail, pos_head) if rev else (pos_head, pos_tail)

        def piece(a: int, b: int) -> list[str]:
            return tok.tokenize(" ".join(sentence[a:b]))

        sent0 = piece(0, pos_min[0])
        ent0 = piece(pos_min[0], pos_min[1])
        sent1 = piece(pos_min[1], pos_max[0])
        ent1 = piece(pos_max[0], pos_max[1])
        sent2 = piece(pos_max[1], len(sentence))
        h0, h1, t0, t1 = OPENNRE_MARKERS
        ent0 = [t0, *ent0, t1] if rev else [h0, *ent0, h1]
        ent1 = [h0, *ent1, h1] if rev else [t0, *ent1, t1]
        tokens = [tok.cls_token, *sent0, *ent0, *sent1, *ent1, *sent2, tok.sep_token]
        first = 1 + len(sent0)
        second = 1 + len(sent0) + len(ent0) + len(sent1)
        head_pos, tail_pos = (second, first) if rev else (first, second)
        limit = self.config.max_length - 1
        return tok.convert_tokens_to_ids(tokens), min(limit, head_pos), min(limit, tail_pos)

    def mark_hvpnet(self, ex: MNREExample) -> tuple[list[int], int, int]:
        """HVPNeT marking (reference §3) -> (ids without padding, head_pos, tail_pos)."""
        words: list[str] = []
        s, s_end, o, o_end = HVPNET_MARKERS
        for i, word in enumerate(ex.tokens):
            if i == ex.head.start:
                words.append(s)
            if i == ex.head.end:
                words.append(s_end)
            if i == ex.tail.start:
                words.append(o)
            if i == ex.tail.end:
                words.append(o_end)
            words.append(word)
        ids = self.tokenizer(" ".join(words), max_length=self.config.max_length, truncation=True)["input_ids"]
        positions = []
        for marker_id in (self.marker_ids[0], self.marker_ids[2]):
            if marker_id in ids:
                positions.append(ids.index(marker_id))
            else:  # marker cut off by truncation: use the last position, as OpenNRE clips
                self.report["marker_truncated"] += 1
                positions.append(len(ids) - 1)
        return ids, positions[0], positions[1]

    def _pad(self, rows: list[list[int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.pad_to_longest:  # the batch's longest row, at most ``length`` (config docstring)
            length = min(length, max(1, *(len(r) for r in rows)))
        ids = torch.zeros(len(rows), length, dtype=torch.long)  # released: zero-padding ([PAD] = 0)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        pad_id = self.tokenizer.pad_token_id or 0
        ids.fill_(pad_id)
        for i, row in enumerate(rows):
            row = row[:length]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask

    def encode_captions(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[CLS] caption [SEP], truncated and padded to ``caption_max_length`` (released encode_plus(40))."""
        enc = self.tokenizer(captions, max_length=self.config.caption_max_length, truncation=True)
        return self._pad(enc["input_ids"], self.config.caption_max_length)

    def encode_phrases(self, phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Phrase ids, padded/cut to ``phrase_max_length``; released = case-sensitive lookup, no [CLS]/[SEP]."""
        tok = self.tokenizer
        rows = []
        for p in phrases:
            if self.config.fidelity.phrase_case_sensitive:
                rows.append(tok.convert_tokens_to_ids(p.split(" ")))
            else:
                rows.append(tok.convert_tokens_to_ids(tok.tokenize(p)))
        ids, mask = self._pad(rows, self.config.phrase_max_length)
        if self.config.fidelity.phrase_unmasked:
            # what transformers 4.11.3 computed from the released all-zero mask (reference §7.4)
            mask = torch.ones_like(mask)
        return ids, mask

    # -------------------------------------------------------------- images
    def _full(self, img: Image.Image) -> torch.Tensor:
        # HVPNeT's released loader uses the crop pipeline for its main image; the BGR quirk is TMR/CAMIM's.
        if self.config.fidelity.full_image_bgr_unnormalised and self.config.name == "tmr":
            return released_full_image_pixels(img, self.config.image_size)
        return crop_pixels(img, self.config.image_size)

    def _objects(
        self, crops_per_example: list[list[Image.Image] | None]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m, size = self.config.max_objects, self.config.image_size
        pixels = torch.zeros(len(crops_per_example), m, 3, size, size)
        mask = torch.zeros(len(crops_per_example), m, dtype=torch.long)
        for i, crops in enumerate(crops_per_example):
            crops = (crops or [])[:m]
            if len(crops) < m:
                self.report["zero_padded_object_crops"] += m - len(crops)
            for j, crop in enumerate(crops):
                pixels[i, j] = crop_pixels(crop, size)
                mask[i, j] = 1
        return pixels, mask

    def _require(self, examples: list[MNREExample], attr: str) -> None:
        for ex in examples:
            if getattr(ex, attr) is None:
                where = ex.source or f"sample {ex.index}"
                raise CamimError(
                    f"{where}: this {self.config.name} model needs the {attr!r} modality, which the example "
                    f"lacks (load it in the dataset, or use visual_mode='text-caption' for text + captions)"
                )

    # ---------------------------------------------------------------- main
    def __call__(self, examples: list[MNREExample]) -> MREBatch:
        if not examples:
            raise CamimError("the processor got an empty list of examples")
        mark = self.mark_hvpnet if self.config.name == "hvpnet" else self.mark_opennre
        rows, heads, tails = [], [], []
        for ex in examples:
            ids, h, t = mark(ex)
            rows.append(ids)
            heads.append(h)
            tails.append(t)
        input_ids, attention_mask = self._pad(rows, self.config.max_length)
        labels = None
        if all(ex.label is not None for ex in examples):
            labels = torch.tensor([ex.label for ex in examples], dtype=torch.long)
        batch = MREBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            head_pos=torch.tensor(heads, dtype=torch.long),
            tail_pos=torch.tensor(tails, dtype=torch.long),
            labels=labels,
            index=torch.tensor([ex.index for ex in examples], dtype=torch.long),
        )
        if "caption" in self.needs:
            captions = []
            for ex in examples:
                if ex.caption is None:
                    self.report["missing_caption_as_empty"] += 1
                captions.append(ex.caption or "")
            batch.caption_input_ids, batch.caption_attention_mask = self.encode_captions(captions)
        if "phrase" in self.needs:
            phrases = []
            for ex in examples:
                if ex.phrase is None:
                    self.report["missing_phrase_from_entity_names"] += 1
                phrases.append(ex.phrase if ex.phrase is not None else f"{ex.head.name} {ex.tail.name}")
            batch.phrase_input_ids, batch.phrase_attention_mask = self.encode_phrases(phrases)
        if "scores" in self.needs:
            scores = []
            for ex in examples:
                if ex.scores is None:
                    if self.config.missing_scores != "uniform":
                        self._require([ex], "scores")
                    self.report["missing_scores_uniform"] += 1
                    scores.append([0.5, 0.5, 0.5, 0.5])
                else:
                    scores.append(ex.scores.as_list())
            batch.scores = torch.tensor(scores, dtype=torch.float32)
        if "image" in self.needs:
            self._require(examples, "image")  # NO_FALLBACK_MODALITIES
            batch.image = torch.stack([self._full(ex.image) for ex in examples])
        if "objects" in self.needs:
            batch.objects, batch.objects_mask = self._objects([ex.objects for ex in examples])
        if "generated_image" in self.needs:
            self._require(examples, "generated_image")
            batch.generated_image = torch.stack([self._full(ex.generated_image) for ex in examples])
        if "generated_objects" in self.needs:
            batch.generated_objects, batch.generated_objects_mask = self._objects(
                [ex.generated_objects for ex in examples]
            )
        return batch
