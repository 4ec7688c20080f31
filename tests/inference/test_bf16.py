"""Predictor(bf16=True): the forward runs under bfloat16 autocast on the CPU, and answers as fp32 does."""

from __future__ import annotations

import torch

from camim.inference import Predictor

from .conftest import training_examples


def _items(n: int, seed: int) -> list[dict]:
    return [
        {"token": e.tokens, "head": (e.head.start, e.head.end), "tail": (e.tail.start, e.tail.end)}
        for e in training_examples(n, seed=seed)
    ]


def test_bf16_predictor_autocasts_and_agrees_with_fp32(bert_run):
    fp32 = Predictor.from_pretrained(bert_run.path)
    bf16 = Predictor.from_pretrained(bert_run.path, bf16=True)
    seen = []
    hook = bf16.model.classifier.fc.register_forward_hook(
        lambda _m, _i, out: seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
    )
    items = _items(8, seed=5)
    try:
        a, b = fp32.predict_batch(items), bf16.predict_batch(items)
    finally:
        hook.remove()
    assert seen == [(True, torch.bfloat16)]  # one batched forward, its Linear layers in bfloat16
    for x, y in zip(a, b):
        assert x.relation == y.relation
        pa, pb = dict(x.distribution), dict(y.distribution)
        # bf16 keeps 8 bits of mantissa: probabilities agree to about 1e-2, not to fp32's 1e-6
        assert max(abs(pa[k] - pb[k]) for k in pa) < 2e-2
    assert not torch.is_autocast_enabled("cpu")  # nothing left switched on after the forward
