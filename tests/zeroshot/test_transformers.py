"""``camim zero-shot`` end to end with a tiny random local MLLM (the captioning tests' LLaVA): chats with
several turns and images, text-only samples in the same batch, and a rerun that generates nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.captioning.conftest import build_tiny_vlm

from camim.captioning.base import GenerationConfig
from camim.cli import main
from camim.zeroshot.run import ZeroShotConfig, zero_shot

from .conftest import examples


@pytest.fixture(scope="module")
def tiny_mllm(tmp_path_factory) -> Path:
    corpus = ["Post: Head entity: Tail entity: Image: attached. not available relation None /per/per/couple"]
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-mllm"), corpus)


def _backend(folder: Path, batch_size: int = 3):
    from camim.captioning.transformers_backend import TransformersBackendConfig, TransformersCaptioner

    config = TransformersBackendConfig(
        model=str(folder), device="cpu", dtype="float32", batch_size=batch_size
    )
    return TransformersCaptioner(config, GenerationConfig(max_tokens=6))


def test_a_tiny_local_mllm_end_to_end(tiny_mllm, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = ZeroShotConfig(str(tiny_data), "test", shots=2, max_images=2, seed=3)
    backend = _backend(tiny_mllm)
    generated: list[int] = []
    original = backend._generate_texts

    def counting(texts, images):
        generated.append(len(texts))
        return original(texts, images)

    monkeypatch.setattr(backend, "_generate_texts", counting)
    result = zero_shot(backend, config, out, progress=False)
    # 16 samples in batches of 3 (batch 10-12 mixes posts with and without an image, 13-15 have none); sample
    # 3's image is unreadable: it gets that result at once and is asked again text-only at the end
    assert generated == [3, 3, 3, 3, 3, 1]
    assert result.report.unreadable_images == 1 and result.report.sent == 16 and result.report.failed == 0
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 16 and all(isinstance(p["answer"], str) for p in predictions)
    assert [p["image"] for p in predictions] == [i < 12 and i != 3 for i in range(16)]
    gold = [ex.relation for ex in examples(tiny_data)]
    assert [p["gold"] for p in predictions] == gold
    # a random model rarely names a label: whatever it wrote is read, counted and scored
    answers = result.metrics["answers"]
    assert answers["json"] + answers["text"] + answers["empty"] + answers["unparseable"] == 16
    assert sum(map(sum, result.metrics["test"]["confusion"])) == 16
    settings = json.loads((out / "answers.jsonl").read_text().splitlines()[0])["settings"]
    assert settings["backend"] == "transformers" and settings["finish_reason"] in ("stop", "length")

    # greedy decoding, and the answers come from the cache: a second run generates nothing
    generated.clear()
    again = zero_shot(backend, config, out, progress=False)
    assert generated == [] and again.report.cached == 16 and again.metrics["test"] == result.metrics["test"]


def test_camim_zero_shot_with_the_transformers_backend(tiny_mllm, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["zero-shot", "--data-dir", str(tiny_data), "--output", str(out), "--backend", "transformers"]
    args += [
        "--model",
        str(tiny_mllm),
        "--device",
        "cpu",
        "--max-tokens",
        "4",
        "--limit",
        "3",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "3 samples, 3 requests: 3 sent now" in capsys.readouterr().out
    assert (out / "report.md").is_file() and len((out / "predictions.jsonl").read_text().splitlines()) == 3
