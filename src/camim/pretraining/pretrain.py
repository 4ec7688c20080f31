"""Domain-adaptive pretraining (``camim pretrain``): masked-language-model training of a text encoder on the
training split's sentences and captions, before fine-tuning (Gururangan et al., 2020, "Don't Stop
Pretraining").

The encoder is a hub id / folder (``text_encoder``, continued pretraining) or, ``from_scratch``, the compact
BERT of the offline presets with their WordPiece vocabulary (:func:`camim.pretraining.offline.build_offline_encoder`
with the ``offline`` section's sizes). Masking is transformers' ``DataCollatorForLanguageModeling`` with
``whole_word_mask=True`` (every chosen word's pieces all become ``[MASK]``: transformers 5 supports no random
replacement with whole-word masking); the head is ``AutoModelForMaskedLM``'s. Training runs in Lightning
(progress bar, ``bf16-mixed`` on a GPU with ``precision: auto``) and is resumable from the checkpoint
``<output>/checkpoints/last.ckpt`` written after every epoch: shuffling, masking and dropout are seeded per
epoch (and batch), so an interrupted run resumed gives the weights of an uninterrupted one.

The output folder loads with ``AutoModel``/``AutoTokenizer.from_pretrained`` and holds ``camim_pretrain.json``
(what it saw: sources, files, sample counts, steps, per-epoch and final MLM loss, the settings). Only the training
split is ever read (:func:`camim.pretraining.offline.training_texts` refuses a val/test file). The offline presets
use such a folder with ``offline.pretrained_encoder`` (presets ``offline-bert-dapt``, ``offline-tmr-cam-mi-dapt``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch

from camim.errors import CamimError
from camim.io import atomic_write_text, check_encoding, no_space_is_an_error
from camim.models.bundled import resolve_encoder
from camim.pretraining.offline import OfflineConfig
from camim.trainer import AtomicCheckpointIO, Precision, interruptible, progress_callbacks, quiet_lightning
from camim.typed import apply_overrides, differing_keys, from_mapping, to_plain

log = logging.getLogger(__name__)

CARD = "camim_pretrain.json"
SETTINGS = "pretrain_settings.json"  # in <output>/checkpoints: the settings an unfinished run resumes with


@dataclass
class PretrainConfig:
    """Settings of ``camim pretrain`` (``--set key=value`` dotted keys, e.g. ``epochs=10``, ``offline.vocab_size=8000``)."""

    text_encoder: str | None = None  # a hub id or folder to continue pretraining (or from_scratch)
    from_scratch: bool = False  # the offline presets' compact BERT and WordPiece vocabulary (offline.* sizes)
    # what the corpus holds: "text" (the training sentences) and "caption:<source>" (the training captions of a
    # caption source name or file, one per image)
    sources: list[str] = field(default_factory=lambda: ["text", "caption:minicpm"])
    # each distinct text once: MNRE repeats a sentence for every entity pair in it (the 12,247 training
    # samples hold 7,330 distinct sentences), which only reweights the corpus and costs a third more steps
    dedupe: bool = True
    max_length: int = 64  # word pieces per text (MNRE's longest marked sentence has 57)
    mlm_probability: float = 0.15  # share of words masked (whole words)
    lr: float = 5e-4
    batch_size: int = 64
    # 20: at 10 the MLM loss was still falling (5.25, 5.14, 5.12 over the last three epochs on MNRE) and more steps
    # gave the better encoder on dev F1 (docs/training.md); with the sparse head (masked_lm_loss) 20 epochs of
    # MNRE (4600 steps) take about as long on 2 cores as 10 did before
    epochs: int = 20
    max_steps: int = -1  # cap on optimiser steps (smoke runs); -1 = epochs decide
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    seed: int = 1
    train_limit: int | None = None  # only the first N training samples (smoke runs, tests)
    encoding: str = "utf-8"
    on_error: Literal["raise", "skip"] = "raise"
    accelerator: str = "auto"
    devices: int = 1
    precision: Literal["auto"] | Precision = "auto"  # auto: bf16-mixed on a GPU, else 32-true
    progress_bar: bool = True
    num_workers: int = 0
    offline: OfflineConfig = field(default_factory=OfflineConfig)  # from_scratch: vocabulary and BERT sizes


def pretrain_config(overrides: list[str] | dict | None = None, **settings: Any) -> PretrainConfig:
    """``PretrainConfig`` from keyword settings plus ``--set`` overrides (dotted keys; strict types; unknown keys
    refused naming the key), validated."""
    raw = apply_overrides(dict(settings), overrides)
    cfg = from_mapping(PretrainConfig, raw)
    validate_pretrain_config(cfg)
    return cfg


def validate_pretrain_config(cfg: PretrainConfig) -> None:
    if bool(cfg.text_encoder) == cfg.from_scratch:
        raise CamimError(
            "give either a text encoder (--text-encoder / text_encoder) or --from-scratch, not both"
        )
    if not cfg.sources:
        raise CamimError("sources: name at least one of text, caption:<source>")
    for s in cfg.sources:
        if s != "text" and not (s.startswith("caption:") and s[len("caption:") :]):
            raise CamimError(
                f"sources: {s!r} is neither 'text' nor 'caption:<source>' (e.g. caption:minicpm)"
            )
    if len(set(cfg.sources)) != len(cfg.sources):
        raise CamimError(f"sources: {cfg.sources} names a source twice")
    for key in ("lr", "batch_size", "epochs", "max_length"):
        if getattr(cfg, key) <= 0:
            raise CamimError(f"{key} must be positive, got {getattr(cfg, key)}")
    if not 0.0 < cfg.mlm_probability < 1.0:
        raise CamimError(f"mlm_probability must be in (0, 1), got {cfg.mlm_probability}")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise CamimError(f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.from_scratch and cfg.max_length > cfg.offline.max_position_embeddings:
        raise CamimError(
            f"max_length {cfg.max_length} exceeds offline.max_position_embeddings {cfg.offline.max_position_embeddings}"
        )
    try:
        check_encoding(cfg.encoding)
    except CamimError as exc:
        raise CamimError(f"encoding: {exc}") from None
    _check_seed(cfg)


def _check_seed(cfg: PretrainConfig) -> None:
    """``seed`` that Lightning's ``seed_everything`` takes (>= 2.5.3 raises a ValueError outside [0, 2**32 - 1],
    a traceback; before, it seeded 0) and whose every batch's masking seed a torch generator takes (64 bits)."""
    from lightning.fabric.utilities.seed import max_seed_value, min_seed_value

    top = min(max_seed_value, ((_SEED64 + 1) // _MASK_STRIDE - cfg.epochs) // _EPOCH_STRIDE)
    if not min_seed_value <= cfg.seed <= top:
        raise CamimError(
            f"seed must be in [{min_seed_value}, {top}] with epochs {cfg.epochs}, got {cfg.seed}"
        )


def pretraining_corpus(
    cfg: PretrainConfig, data_dir: str | Path
) -> tuple[list[str], dict[str, int], list[str]]:
    """The texts of ``cfg.sources`` from the training split only, the count per source and the files read.
    With ``cfg.dedupe`` a text already in the corpus (from any source) is left out; the counts are of the texts
    kept, and ``"<source> duplicates"`` counts those left out."""
    from camim.pretraining.offline import training_texts

    corpus: list[str] = []
    counts: dict[str, int] = {}
    files: list[str] = []
    seen: set[str] = set()
    for source in cfg.sources:
        caption = None if source == "text" else source[len("caption:") :]
        texts, captions, read = training_texts(data_dir, caption, cfg.train_limit, cfg.encoding, cfg.on_error)
        part = texts if caption is None else captions
        if caption is not None and not part:
            raise CamimError(f"sources: {source} gave no caption for the training split of {data_dir}")
        left_out = 0
        if cfg.dedupe:
            kept = [t for t in dict.fromkeys(part) if t not in seen]
            seen.update(kept)
            left_out, part = len(part) - len(kept), kept
        corpus += part
        counts[source] = len(part)
        if left_out:
            counts[f"{source} duplicates"] = left_out
        files += [str(f) for f in read if str(f) not in files and (caption is not None or f == read[0])]
    return corpus, counts, files


_SEED64 = 2**64 - 1  # the largest seed of a torch generator
_EPOCH_STRIDE, _MASK_STRIDE = 100_003, 1_000_003


def _masking_seed(seed: int, epoch: int, first: int) -> int:
    """The seed of the masks of the batch whose first sample is ``first`` (of a corpus under 1,000,003 texts)."""
    return (seed * _EPOCH_STRIDE + epoch) * _MASK_STRIDE + first


class _EpochShuffle(torch.utils.data.Sampler):
    """A permutation seeded by (seed, epoch): Lightning calls ``set_epoch``, so a resumed run sees the same
    order as an uninterrupted one."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * _EPOCH_STRIDE + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class _WholeWordMasking:
    """Pads a batch of tokenised texts (offsets included, which ``tokenizer.pad`` does not pad) and masks
    whole words with transformers' collator, seeded by (seed, epoch, the batch's first sample)."""

    def __init__(self, tokenizer, mlm_probability: float, seed: int, sampler: _EpochShuffle):
        from transformers import DataCollatorForLanguageModeling

        self.tokenizer, self.seed, self.sampler = tokenizer, seed, sampler
        self.collator = DataCollatorForLanguageModeling(
            tokenizer,
            mlm=True,
            whole_word_mask=True,
            mlm_probability=mlm_probability,
            mask_replace_prob=1.0,  # transformers supports only [MASK] replacement with whole-word masking
            random_replace_prob=0.0,
            seed=seed,
        )
        self.fill = {"input_ids": tokenizer.pad_token_id, "token_type_ids": 0, "attention_mask": 0,
                     "special_tokens_mask": 1, "offset_mapping": (0, 0)}  # fmt: skip

    def __call__(self, items: list[tuple[int, dict]]) -> dict:
        width = max(len(enc["input_ids"]) for _, enc in items)
        padded = [
            {k: list(v) + [self.fill[k]] * (width - len(v)) for k, v in enc.items()} for _, enc in items
        ]
        self.collator.seed = _masking_seed(self.seed, self.sampler.epoch, items[0][0])
        self.collator.generator = None  # a fresh generator from the seed above
        return dict(self.collator(padded))


class _Encoded(torch.utils.data.Dataset):
    def __init__(self, encodings: list[dict]):
        self.encodings = encodings

    def __len__(self) -> int:
        return len(self.encodings)

    def __getitem__(self, i: int) -> tuple[int, dict]:
        return i, self.encodings[i]


def masked_lm_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """``model(**batch).loss`` of a transformers masked-LM model, with its head run on the masked positions only
    ("sparse prediction", as NVIDIA's and MosaicML's BERT pretraining do): the same mean cross-entropy over the
    positions whose label is not -100, but the hidden -> vocabulary projection runs on the ~15% of tokens that are
    scored instead of all of them. On the offline presets' compact BERT (vocabulary 8000, hidden 128) that
    projection was half of a CPU step (0.59 s -> 0.31 s at batch 64 x 64 word pieces). BERT-style (``cls``) and
    RoBERTa-style (``lm_head``) heads take this path; any other model falls back to its own dense loss."""
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if head is None or encoder is None or encoder is model:
        return model(**batch).loss
    labels = batch["labels"]
    hidden = encoder(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
    scored = labels != -100
    logits = head(hidden[scored])  # (masked tokens, vocabulary)
    return torch.nn.functional.cross_entropy(logits.float(), labels[scored])


class MLMModule(L.LightningModule):
    """A masked-LM model (``AutoModelForMaskedLM``) trained with AdamW + linear warmup/decay (camim.optim);
    keeps the mean MLM loss of every epoch (in its checkpoints too)."""

    def __init__(self, model: torch.nn.Module, cfg: PretrainConfig, total_steps: int):
        super().__init__()
        self.model, self.cfg, self.total_steps = model, cfg, total_steps
        self.epoch_losses: list[float] = []
        self._sum, self._n = 0.0, 0

    def on_train_epoch_start(self) -> None:
        torch.manual_seed(self.cfg.seed * _EPOCH_STRIDE + self.current_epoch)  # dropout: same on resume
        self._sum, self._n = 0.0, 0

    def training_step(self, batch: dict, batch_idx: int):
        if not bool((batch["labels"] != -100).any()):
            return None  # no word masked in this batch (tiny batches): nothing to learn, step skipped
        loss = masked_lm_loss(self.model, batch)
        self.log("mlm_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self._sum += float(loss.detach())
        self._n += 1
        return loss

    def on_train_epoch_end(self) -> None:
        if self._n:
            self.epoch_losses.append(self._sum / self._n)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["camim_epoch_losses"] = list(self.epoch_losses)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.epoch_losses = list(checkpoint.get("camim_epoch_losses", []))

    def configure_optimizers(self):
        from camim.optim import build_optimizer, build_scheduler, warmup_steps_for

        c = self.cfg
        opt = build_optimizer(self.model, c.lr, c.weight_decay, adam_eps=1e-8, adam_bias_correction=True)
        warmup = warmup_steps_for(self.total_steps, None, c.warmup_ratio)
        sched = build_scheduler(opt, self.total_steps, warmup)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@dataclass
class PretrainResult:
    output_dir: Path
    card: dict


def check_pretrained_folder(folder: str | Path) -> Path:
    """``folder`` if it is a finished ``camim pretrain`` folder; else a one-line ``CamimError``."""
    folder = Path(folder)
    if not (folder / CARD).is_file() or not (folder / "config.json").is_file():
        raise CamimError(
            f"offline.pretrained_encoder: {folder} is not a finished `camim pretrain` folder (no {CARD} and "
            "config.json); run `camim pretrain --data-dir D --output ENC --from-scratch` first"
        )
    return folder


def _load_model(cfg: PretrainConfig, data_dir: str | Path, work: Path):
    """(tokenizer, masked-LM model, offline-vocabulary folder or None)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM

    if cfg.from_scratch:
        from camim.pretraining.offline import build_offline_encoder

        vocab = build_offline_encoder(
            cfg.offline, data_dir, work / "vocabulary", cfg.train_limit,
            encoding=cfg.encoding, on_error=cfg.on_error,
        )  # fmt: skip
        tok = AutoTokenizer.from_pretrained(str(vocab))
        return tok, BertForMaskedLM(BertConfig.from_pretrained(str(vocab))), vocab
    source = resolve_encoder(cfg.text_encoder)  # a hub id, a folder or a bundled encoder's name (minilm)
    try:
        tok = AutoTokenizer.from_pretrained(source)
        # from_pretrained gives eval mode, and Lightning keeps the modes it finds: train mode for dropout
        model = AutoModelForMaskedLM.from_pretrained(source).train()
    except Exception as exc:  # noqa: BLE001 - hub/folder errors become one line
        raise CamimError(f"text_encoder {cfg.text_encoder!r}: cannot load a masked-LM model: {exc}") from None
    return tok, model, None


def _precision(cfg: PretrainConfig) -> Any:
    if cfg.precision != "auto":
        return cfg.precision
    gpu = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def pretrain(
    cfg: PretrainConfig, data_dir: str | Path, output_dir: str | Path, callbacks: list | None = None
) -> PretrainResult:
    """Run (or resume, or reuse when finished with the same settings) a pretraining into ``output_dir``."""
    validate_pretrain_config(cfg)
    out = Path(output_dir)
    settings = to_plain(cfg)
    settings_key = {**settings, "data_dir": str(Path(data_dir).resolve())}
    finished = _held_pretraining(out, settings_key)
    if finished is not None:
        log.info("pretraining in %s is finished with these settings: reused", out)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # left by a run killed after writing its card
        return PretrainResult(out, finished)
    quiet_lightning()
    hint = lambda: _resume_hint(out / "checkpoints" / "last.ckpt")  # noqa: E731
    full_disk = no_space_is_an_error(
        out, lambda: "what was written before is intact; free space and " + hint()
    )
    with interruptible(hint), full_disk:
        return _pretrain(cfg, data_dir, out, settings, settings_key, callbacks or [])


def _pretrain(
    cfg: PretrainConfig, data_dir: str | Path, out: Path, settings: dict, settings_key: dict, callbacks: list
) -> PretrainResult:
    """The pretraining itself (corpus, model, Lightning fit, the output folder and its card)."""
    card_path, work = out / CARD, out / "checkpoints"
    t0 = time.time()
    corpus, counts, files = pretraining_corpus(cfg, data_dir)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / SETTINGS, json.dumps(settings_key, indent=1))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    tok, model, vocab = _load_model(cfg, data_dir, work)
    loader = _mlm_loader(cfg, tok, corpus)
    total = cfg.max_steps if cfg.max_steps > 0 else len(loader) * cfg.epochs
    module = MLMModule(model, cfg, total)
    trainer = _mlm_trainer(cfg, work, callbacks)
    last = work / "last.ckpt"
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(last) if last.is_file() else None)
    model.save_pretrained(str(out))  # model.safetensors + config.json
    tok.save_pretrained(str(out))
    if vocab is not None:
        shutil.copy2(vocab / "camim_offline.json", out / "camim_offline.json")
    card = {
        "kind": "camim pretrain (masked LM, whole-word masking)",
        "base": "from scratch (offline vocabulary and sizes)" if cfg.from_scratch else cfg.text_encoder,
        "data_dir": str(data_dir),
        "split": "train",
        "sources": list(cfg.sources),
        "samples": counts,
        "files": files,
        "steps": int(trainer.global_step),
        "epochs": len(module.epoch_losses),
        "epoch_mlm_loss": module.epoch_losses,
        "final_mlm_loss": module.epoch_losses[-1] if module.epoch_losses else None,
        "seconds_this_session": round(time.time() - t0, 1),
        "settings": settings,
        "settings_key": settings_key,
    }
    atomic_write_text(card_path, json.dumps(card, indent=1))  # written last: marks the folder finished
    shutil.rmtree(work, ignore_errors=True)
    return PretrainResult(out, card)


def _resume_hint(last: Path) -> str:
    if last.is_file():
        return f"run the same command again to resume from {last}"
    return "no epoch was saved yet; the same command starts the pretraining again from the beginning"


#: settings that do not change what a pretraining computes (a folder may be resumed or reused with others)
NEUTRAL_SETTINGS = ("progress_bar", "num_workers", "accelerator", "devices", "precision")


def _held_pretraining(out: Path, settings_key: dict) -> dict | None:
    """The card of a finished pretraining in ``out`` with these settings (reuse it), else None; a finished or
    unfinished pretraining with other settings is refused naming the keys."""
    card_path, unfinished = out / CARD, out / "checkpoints" / SETTINGS
    for path, what in ((card_path, "a finished pretraining"), (unfinished, "an unfinished pretraining")):
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8"))
            held = old.get("settings_key", old) if path == card_path else old
            diff = differing_keys(held, settings_key, ignore=NEUTRAL_SETTINGS)
            if diff:
                raise CamimError(
                    f"{out} holds {what} with other settings ({', '.join(diff)}); use a new --output"
                )
            if path == card_path:
                return old
    return None


def _mlm_loader(cfg: PretrainConfig, tok, corpus: list[str]) -> torch.utils.data.DataLoader:
    """The corpus tokenised, shuffled per (seed, epoch) and whole-word masked per (seed, epoch, batch)."""
    enc = tok(corpus, truncation=True, max_length=cfg.max_length, return_special_tokens_mask=True,
              return_offsets_mapping=True)  # fmt: skip
    encodings = [{k: enc[k][i] for k in enc} for i in range(len(corpus))]
    sampler = _EpochShuffle(len(encodings), cfg.seed)
    return torch.utils.data.DataLoader(
        _Encoded(encodings), batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
        collate_fn=_WholeWordMasking(tok, cfg.mlm_probability, cfg.seed, sampler),
        generator=torch.Generator().manual_seed(cfg.seed),  # its worker seed draw leaves torch's RNG alone
    )  # fmt: skip


def _last_epoch_loss(trainer: L.Trainer, module: MLMModule) -> float | None:
    return module.epoch_losses[-1] if module.epoch_losses else None


def _mlm_trainer(cfg: PretrainConfig, work: Path, callbacks: list) -> L.Trainer:
    """Lightning's trainer, writing ``work/last.ckpt`` (and the latest epoch) after every epoch."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(
        dirpath=str(work),
        filename="epoch{epoch}",
        save_last=True,
        save_top_k=1,
        save_on_train_epoch_end=True,
        auto_insert_metric_name=False,  # "epoch2.ckpt", not "epochepoch=2.ckpt"
    )
    # a bar on a terminal, epoch lines in a log (with the card's epoch MLM loss)
    bar, lines = progress_callbacks(cfg.progress_bar, "mlm_loss", epoch_loss=_last_epoch_loss)
    return L.Trainer(
        max_epochs=cfg.epochs, max_steps=cfg.max_steps, accelerator=cfg.accelerator, devices=cfg.devices,
        precision=_precision(cfg), logger=False, enable_progress_bar=bar,
        enable_model_summary=False, callbacks=[checkpoint, *lines, *callbacks], limit_val_batches=0,
        num_sanity_val_steps=0, log_every_n_steps=10, plugins=[AtomicCheckpointIO()],
    )  # fmt: skip
