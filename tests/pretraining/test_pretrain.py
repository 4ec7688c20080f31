"""`camim pretrain`: whole-word masked-LM on the training split only, resumable, a from_pretrained folder the
offline *-dapt presets start from."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tests.training.conftest import TINY, write_tiny_mnre

from camim.errors import CamimError, DataError
from camim.pretraining.pretrain import _masking_seed, pretrain, pretrain_config, pretraining_corpus

# the compact BERT of the offline tests (TINY's offline.* keys, as pretraining settings)
TINY_BERT = [o for o in TINY if o.startswith("offline.")]
SETTINGS = [*TINY_BERT, "batch_size=8", "lr=3e-3", "epochs=3", "progress_bar=false", "warmup_ratio=0.1"]
SENTINEL = "zyxwvuquux"  # planted only in the val and test splits


def _scratch(extra=()):
    return pretrain_config([*SETTINGS, *extra], from_scratch=True)


@pytest.fixture(scope="module")
def pretrained(tiny_mnre, tmp_path_factory):
    out = tmp_path_factory.mktemp("dapt") / "enc"
    return pretrain(_scratch(), tiny_mnre, out)


def test_mlm_loss_falls_and_the_folder_reloads_with_auto_classes(pretrained, tiny_mnre):
    from transformers import AutoModel, AutoTokenizer

    card = pretrained.card
    losses = card["epoch_mlm_loss"]
    assert len(losses) == 3 == card["epochs"] and losses[-1] < losses[0] - 0.5
    assert card["final_mlm_loss"] == losses[-1]
    # 48 sentences (46 distinct), 48 images' captions (the tiny world's captions: 5 distinct), each text once
    assert card["samples"] == {
        "text": 46, "text duplicates": 2, "caption:minicpm": 5, "caption:minicpm duplicates": 43
    }  # fmt: skip
    assert card["steps"] == 3 * 7  # 51 texts / batch 8, three epochs
    assert all("_train" in f for f in card["files"])
    folder = pretrained.output_dir
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, add_pooling_layer=False)
    assert model.config.hidden_size == 32 and model.config.vocab_size == len(tok)
    assert "married" in tok.tokenize("Anna married Bob")
    mlm = load_file(str(folder / "model.safetensors"))
    key = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(model.embeddings.word_embeddings.weight.detach(), mlm[key])
    assert not (folder / "checkpoints").exists()  # finished: the resume checkpoint is gone
    # rerun with the same settings: reused, not retrained; the checkpoints of a run killed after writing its
    # card (before removing them) go
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"a model-sized file")
    assert pretrain(_scratch(), tiny_mnre, folder).card == card
    assert not (folder / "checkpoints").exists()
    with pytest.raises(CamimError, match="other settings.*epochs"):
        pretrain(_scratch(["epochs=4"]), tiny_mnre, folder)


def test_val_and_test_text_never_enter_the_corpus_or_the_vocabulary(tmp_path):
    data = write_tiny_mnre(tmp_path / "data")
    for split in ("val", "test"):
        for name in (f"txt/ours_{split}.txt", f"caption/minicpm_{split}.txt"):
            path = data / name
            path.write_text(path.read_text().replace("today", SENTINEL).replace("smiling", SENTINEL))
    assert SENTINEL in (data / "txt/ours_val.txt").read_text()
    corpus, counts, files = pretraining_corpus(_scratch(), data)
    assert len(corpus) == 51 and not any(SENTINEL in t.lower() for t in corpus)
    assert files == [str(data / "txt/ours_train.txt"), str(data / "caption/minicpm_train.txt")]
    res = pretrain(_scratch(["epochs=1", "offline.vocab_size=2000"]), data, tmp_path / "enc")
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(res.output_dir).get_vocab()
    assert "today" in vocab and SENTINEL not in vocab and "##" + SENTINEL[1:] not in vocab
    # a val caption file named as a source is refused, whatever its name
    with pytest.raises(DataError, match="only the training split"):
        pretraining_corpus(
            _scratch(["sources=[caption:" + str(data / "caption/minicpm_val.txt") + "]"]), data
        )


class _Interrupt(Exception):
    pass


def test_an_interrupted_run_resumed_gives_the_uninterrupted_weights(tiny_mnre, tmp_path):
    from lightning.pytorch.callbacks import Callback

    class Stop(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise _Interrupt

    cfg = _scratch(["epochs=2"])
    full = pretrain(cfg, tiny_mnre, tmp_path / "full")
    with pytest.raises(_Interrupt):
        pretrain(cfg, tiny_mnre, tmp_path / "resumed", callbacks=[Stop()])
    assert (tmp_path / "resumed/checkpoints/last.ckpt").is_file()
    assert not (tmp_path / "resumed/camim_pretrain.json").exists()
    resumed = pretrain(cfg, tiny_mnre, tmp_path / "resumed")
    assert resumed.card["steps"] == full.card["steps"] == 14  # 2 epochs of 7 batches
    assert resumed.card["epoch_mlm_loss"] == pytest.approx(full.card["epoch_mlm_loss"], abs=1e-6)
    a, b = (
        load_file(str(full.output_dir / "model.safetensors")),
        load_file(str(resumed.output_dir / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # a resumed folder with other settings is refused, not mixed
    with pytest.raises(_Interrupt):
        pretrain(cfg, tiny_mnre, tmp_path / "other", callbacks=[Stop()])
    with pytest.raises(CamimError, match="unfinished pretraining with other settings.*lr"):
        pretrain(_scratch(["epochs=2", "lr=1e-3"]), tiny_mnre, tmp_path / "other")


def test_the_dapt_preset_starts_from_the_pretrained_weights(pretrained, tiny_mnre, tmp_path):
    from camim.models import build_model
    from camim.training.api import resolve_run_config, train_run

    enc = pretrained.output_dir
    over = [*TINY, f"offline.pretrained_encoder={enc}"]
    cfg = resolve_run_config("offline-tmr-cam-mi-dapt", over, tiny_mnre, tmp_path / "run")
    assert cfg.model.text_encoder == str(enc.resolve())
    model = build_model(cfg.model, labels=["None", "a", "b", "c"])
    mlm = load_file(str(enc / "model.safetensors"))
    emb = [p for n, p in model.named_parameters() if n.endswith("embeddings.word_embeddings.weight")]
    assert emb and all(torch.equal(p.detach(), mlm["bert.embeddings.word_embeddings.weight"]) for p in emb)
    with pytest.raises(CamimError, match="offline.pretrained_encoder is null"):
        train_run("offline-bert-dapt", tiny_mnre, tmp_path / "run2", overrides=TINY)
    with pytest.raises(CamimError, match="not a finished `camim pretrain` folder"):
        train_run(
            "offline-bert-dapt",
            tiny_mnre,
            tmp_path / "run3",
            overrides=[*TINY, f"offline.pretrained_encoder={tmp_path}"],
        )
    with pytest.raises(CamimError, match="needs model.text_encoder_pretrained"):
        resolve_run_config("offline-bert", [f"offline.pretrained_encoder={enc}"], tiny_mnre, tmp_path / "r")


def test_a_bad_set_key_is_a_one_line_error(tiny_mnre, tmp_path, capsys):
    from camim.cli import main

    argv = ["pretrain", "--data-dir", str(tiny_mnre), "--output", str(tmp_path / "e"), "--from-scratch"]
    assert main([*argv, "--set", "colour=red"]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("camim: error: unknown top-level config key(s): colour; known: text_encoder")
        and "\n" not in err
    )
    assert main([*argv, "--set", "epochs=1.5"]) == 1
    assert capsys.readouterr().err.strip() == "camim: error: epochs: expected an integer, got 1.5"
    assert main([*argv, "--sources", "text", "pictures"]) == 1
    assert "sources: 'pictures'" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_a_pretrained_encoder_fine_tunes_in_train_mode(pretrained, tiny_mnre, tmp_path, recwarn):
    """from_pretrained returns eval mode and Lightning keeps the modes it finds: without camim setting train
    mode, fine-tuning from pretrained weights ran with dropout (and ResNet BatchNorm updates) switched off."""
    from camim.models import build_model
    from camim.pretraining.pretrain import _load_model
    from camim.training.api import resolve_run_config, train_run

    over = [*TINY, f"offline.pretrained_encoder={pretrained.output_dir}", "optim.epochs=1"]
    cfg = resolve_run_config("offline-tmr-cam-mi-dapt", over, tiny_mnre, tmp_path / "r")
    model = build_model(cfg.model, labels=["None", "a", "b", "c"])
    assert [n for n, m in model.named_modules() if not m.training] == []
    train_run("offline-bert-dapt", tiny_mnre, tmp_path / "run", overrides=over)
    assert not [w for w in recwarn if "eval mode at the start of training" in str(w.message)]
    # continued pretraining from a pretrained folder (--text-encoder) trains in train mode too
    cont = pretrain_config([*SETTINGS, f"text_encoder={pretrained.output_dir}"], from_scratch=False)
    _, mlm, _ = _load_model(cont, tiny_mnre, tmp_path / "work")
    assert all(m.training for m in mlm.modules())


def test_sigterm_ends_a_pretraining_in_terminated_naming_where_the_rerun_resumes(tiny_mnre, tmp_path):
    """Lightning's loops end on SIGTERM (a scheduler's preemption) with a status-less ``SystemExit``, which
    ``camim pretrain`` exited 0 on; it is :class:`Terminated` (exit 143) naming the last.ckpt the rerun takes."""
    from lightning.pytorch.callbacks import Callback

    from camim.errors import Terminated

    class Sigterm(Callback):  # what Lightning's SIGTERM handler does, in the second epoch
        def on_train_batch_end(self, trainer, *args):
            if trainer.current_epoch == 1:
                trainer._signal_connector.received_sigterm = True

    cfg, out = _scratch(["epochs=2"]), tmp_path / "enc"
    last = out / "checkpoints" / "last.ckpt"
    with pytest.raises(Terminated, match=rf"^run the same command again to resume from {last}$"):
        pretrain(cfg, tiny_mnre, out, callbacks=[Sigterm()])
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 7  # the first epoch
    assert pretrain(cfg, tiny_mnre, out).card["steps"] == 14


def test_a_seed_is_refused_unless_lightning_and_every_batch_masking_seed_take_it():
    """Lightning >= 2.5.3 raises a ValueError for a seed below 0 (a traceback; before, it seeded 0), and seed 10**9
    overflowed the torch generator of a batch's masks, ``(seed * 100003 + epoch) * 1000003 + first``."""
    top = 184461353  # with 20 epochs: (2**64 // 1000003 - 20) // 100003
    assert pretrain_config(from_scratch=True, seed=top, epochs=20).seed == top
    torch.Generator().manual_seed(_masking_seed(top, 19, 1_000_002))  # the largest masking seed of such a run
    with pytest.raises(ValueError, match="Overflow"):
        torch.Generator().manual_seed(_masking_seed(top + 1, 19, 1_000_002))
    for seed in (-1, top + 1, 10**9):
        with pytest.raises(CamimError, match=rf"^seed must be in \[0, {top}\] with epochs 20, got {seed}$"):
            pretrain_config(from_scratch=True, seed=seed, epochs=20)


def test_the_corpus_holds_each_distinct_text_once(tmp_path):
    """MNRE repeats a sentence once per entity pair: the corpus keeps it once (dedupe, default), and counts
    what it left out; dedupe=false keeps every sample's sentence."""
    data = write_tiny_mnre(tmp_path / "d", n_train=12, n_eval=4)
    lines = (data / "txt" / "ours_train.txt").read_text().splitlines()
    (data / "txt" / "ours_train.txt").write_text("\n".join([*lines, lines[0], lines[3], lines[0]]) + "\n")
    corpus, counts, _ = pretraining_corpus(_scratch(["sources=[text]"]), data)
    assert counts == {"text": 12, "text duplicates": 3} and len(corpus) == len(set(corpus)) == 12
    corpus, counts, _ = pretraining_corpus(_scratch(["sources=[text]", "dedupe=false"]), data)
    assert counts == {"text": 15} and len(corpus) == 15 and len(set(corpus)) == 12


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_the_sparse_masked_lm_loss_equals_the_dense_head_loss(arch):
    """masked_lm_loss runs the head on the masked positions only: same loss and gradients as model(**batch).loss
    (BERT's cls and RoBERTa's lm_head take the sparse path; DistilBERT's head falls back to the dense loss)."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    from camim.pretraining.pretrain import masked_lm_loss

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        arch, vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=40, dim=16, hidden_dim=32, n_layers=2, n_heads=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    model = AutoModelForMaskedLM.from_config(config)
    ids = torch.randint(5, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[0, 4], labels[1, 2], labels[2, 3] = ids[0, 1], ids[0, 4], ids[1, 2], ids[2, 3]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    dense = model(**batch).loss
    dense_grads = torch.autograd.grad(dense, list(model.parameters()), allow_unused=True)
    rows = []  # the shapes the vocabulary projection saw
    model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(tuple(i[0].shape)))
    sparse = masked_lm_loss(model, batch)
    sparse_grads = torch.autograd.grad(sparse, list(model.parameters()), allow_unused=True)
    # the loss by hand: mean cross-entropy of the 4 labelled positions of the dense logits
    logits = model(input_ids=ids, attention_mask=mask).logits
    picked = [(0, 1), (0, 4), (1, 2), (2, 3)]
    by_hand = -sum(torch.log_softmax(logits[i, j], -1)[ids[i, j]] for i, j in picked) / 4
    assert sparse.item() == pytest.approx(by_hand.item(), abs=1e-6)
    assert sparse.item() == pytest.approx(dense.item(), abs=1e-6)
    for d, s in zip(dense_grads, sparse_grads):
        if d is None:
            assert s is None or not s.any()
        else:
            torch.testing.assert_close(s, d, atol=1e-6, rtol=1e-5)
    assert rows[0] == ((4, 16) if arch != "distilbert" else (3, 9, 16))  # sparse: the 4 masked positions only
