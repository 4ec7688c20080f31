"""Inference speed of an offline-preset-sized checkpoint on CPU: single-sample latency and batched throughput.

Builds the preset's compact encoder from its config (WordPiece vocabulary trained by ``tokenizers`` on MNRE
train text + MiniCPM captions, the preset's offline sizes and model config; random weights -- speed does not
depend on training), saves the model and loads it through ``Predictor.from_pretrained``. Posts are MNRE test samples
(``../shared/data/mnre``; synthetic posts when absent).

Measured side by side in one process:
- baseline: the bare model -- ``model(model.processor(examples))`` under ``torch.inference_mode``;
- Predictor: ``predict()`` / ``predict_batch()`` end to end (tokenising raw text, resolving mentions,
  validation, softmax, sorted distribution, result objects).
The ratio Predictor / baseline is the cost of the API around the model.

Targets (issue 6): single p50 <= 50 ms, batched >= 200 samples/s on 2 CPU cores.

    python benchmarks/inference_speed.py [--preset offline-bert|offline-tmr-cam-mi] [--threads 2] [--n 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MNRE = ROOT.parent / "shared" / "data" / "mnre"
TARGET_P50_MS = 50.0
TARGET_THROUGHPUT = 200.0

PRESETS = ("offline-bert", "offline-tmr-cam-mi")


def preset_config(preset: str):
    """The preset's resolved run config: its model part (sizes, fidelity, pad_to_longest) and its offline
    encoder sizes, exactly as training uses them."""
    from camim.training.config import load_config

    return load_config(preset)


def load_examples(n: int):
    """MNRE test samples with MiniCPM captions, or synthetic posts when the data is absent."""
    from camim.data.types import Entity, MNREExample

    if (MNRE / "ours_rel2id.json").exists():
        from camim.data import MNREDataset

        ds = MNREDataset(MNRE, split="test", caption_source="minicpm", modalities=("caption",))
        return [ds[i] for i in range(min(n, len(ds)))], ds.labels.names, "MNRE test"
    words = "rt the new team player plays for city festival held in london with his dog".split()
    out = []
    for i in range(n):
        toks = [words[(i * 7 + k) % len(words)] for k in range(12 + i % 10)]
        out.append(
            MNREExample(i, toks, Entity(toks[1], 1, 2), Entity(toks[5], 5, 6), "x.jpg", caption="a photo")
        )
    return out, ["None", *[f"/rel/{k}" for k in range(22)]], "synthetic"


def build_encoder(folder: Path, offline) -> Path:
    """The preset's offline encoder (vocabulary + compact BertConfig with ``offline``'s sizes), built by
    camim.training from MNRE when available, else a toy vocabulary with the same sizes."""
    if (MNRE / "ours_rel2id.json").exists():
        from camim.pretraining.offline import build_offline_encoder

        return build_offline_encoder(offline, MNRE, folder / "encoder", limit=3000)
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertTokenizerFast

    enc = folder / "encoder"
    enc.mkdir(parents=True)
    wp = BertWordPieceTokenizer(lowercase=True)
    specials = ["[PAD]", *[f"[unused{i}]" for i in range(10)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wp.train_from_iterator(
        ["rt the new team player plays for city festival held in london"] * 10, special_tokens=specials
    )
    wp.save_model(str(enc))
    words = (enc / "vocab.txt").read_text(encoding="utf-8").splitlines()
    # transformers 5 takes the vocabulary as `vocab` (a dict); the 4.x `vocab_file=` keyword is ignored there
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    tok.save_pretrained(str(enc))
    BertConfig(
        vocab_size=offline.vocab_size,
        hidden_size=offline.hidden_size,
        num_hidden_layers=offline.num_hidden_layers,
        num_attention_heads=offline.num_attention_heads,
        intermediate_size=offline.intermediate_size,
        max_position_embeddings=offline.max_position_embeddings,
    ).save_pretrained(str(enc))
    return enc


def item(ex) -> dict:
    return {"text": " ".join(ex.tokens), "head": ex.head.name, "tail": ex.tail.name, "caption": ex.caption}


def span_item(ex) -> dict:
    return {
        "token": ex.tokens,
        "head": (ex.head.start, ex.head.end),
        "tail": (ex.tail.start, ex.tail.end),
        "caption": ex.caption,
    }


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=PRESETS, default="offline-tmr-cam-mi")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--n", type=int, default=100, help="single-sample requests timed")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batched", type=int, default=512, help="samples in the throughput run")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from camim.inference import Predictor
    from camim.models import build_model

    examples, labels, source = load_examples(max(args.n, args.batched))
    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = preset_config(args.preset)
        enc = build_encoder(Path(tmp), run_cfg.offline)
        cfg = replace(run_cfg.model, text_encoder=str(enc), text_encoder_pretrained=False)
        model = build_model(cfg, labels=labels)
        model.save_pretrained(Path(tmp) / "run" / "model")
        predictor = Predictor.from_pretrained(Path(tmp) / "run")
    model = predictor.model
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"preset {args.preset}: {params:.1f} M parameters, max_length {cfg.max_length}, {source} posts, "
          f"torch {torch.__version__}, {args.threads} thread(s), {torch.get_num_threads()} in use")  # fmt: skip

    def bare(batch_examples):
        with torch.inference_mode():
            return model(model.processor(batch_examples)).logits

    singles = examples[: args.n]
    for ex in singles[:5]:  # warm-up
        bare([ex])
        predictor.predict_batch([item(ex)])

    def timed(fn, xs) -> list[float]:
        out = []
        for x in xs:
            t = time.perf_counter()
            fn(x)
            out.append((time.perf_counter() - t) * 1000)
        return out

    base_ms = timed(lambda ex: bare([ex]), singles)
    pred_ms = timed(lambda ex: predictor.predict_batch([item(ex)]), singles)
    print(f"\nsingle sample, {len(singles)} requests (ms)        p50      p95     mean")
    for name, ms in (
        ("baseline model(processor([ex]))", base_ms),
        ("Predictor.predict (text + mentions)", pred_ms),
    ):
        print(
            f"  {name:38s} {percentile(ms, 50):7.2f}  {percentile(ms, 95):7.2f}  {statistics.mean(ms):7.2f}"
        )
    p50 = percentile(pred_ms, 50)
    print(f"  ratio Predictor / baseline (p50): {p50 / percentile(base_ms, 50):.2f}")

    batch = examples[: args.batched]
    t = time.perf_counter()
    for s in range(0, len(batch), args.batch_size):
        bare(batch[s : s + args.batch_size])
    base_tp = len(batch) / (time.perf_counter() - t)
    t = time.perf_counter()
    predictor.predict_batch([span_item(ex) for ex in batch], batch_size=args.batch_size)
    pred_tp = len(batch) / (time.perf_counter() - t)
    print(f"\nbatched, {len(batch)} samples, batch size {args.batch_size} (samples/s)")
    print(f"  baseline model(processor(batch))        {base_tp:8.1f}")
    print(f"  Predictor.predict_batch                 {pred_tp:8.1f}")
    print(f"  ratio Predictor / baseline: {pred_tp / base_tp:.2f}")

    ok_latency, ok_tp = p50 <= TARGET_P50_MS, pred_tp >= TARGET_THROUGHPUT
    print(f"\ntargets: p50 {p50:.1f} ms <= {TARGET_P50_MS:.0f} ms: {'met' if ok_latency else 'NOT met'}; "
          f"throughput {pred_tp:.0f}/s >= {TARGET_THROUGHPUT:.0f}/s: {'met' if ok_tp else 'NOT met'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
