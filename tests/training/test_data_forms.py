"""Training on data in the forms it really comes in (issue 18 §1): no captions, empty or missing splits, a
val-less run selected on the training loss, and the end-to-end run on an earlier MNRE release's form."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import pytest
import torch

from camim.errors import DataError
from camim.pretraining.offline import build_offline_encoder
from camim.training.api import evaluate_run, train_run
from camim.training.config import load_config
from camim.training.metrics import scores_from_confusion

from .conftest import CUES, NAMES, TINY, write_tiny_mnre

ONE_EPOCH = [*TINY, "optim.epochs=1"]


def write_older_release(root: Path, n_train: int = 32, n_eval: int = 12, seed: int = 0) -> Path:
    """An earlier MNRE release's form: integer img_ids without extension, ``none`` as the negative label, no
    rel2id file, no captions, no scores, no object dictionaries or phrases; one Python literal per line."""
    rng = random.Random(seed)
    relations = {"none": CUES["None"], **{r: c for r, c in CUES.items() if r != "None"}}
    (root / "txt").mkdir(parents=True)
    img = 553000
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        lines = []
        for i in range(n):
            rel = list(relations)[i % len(relations)]
            a, b = rng.sample(NAMES, 2)
            cue = rng.choice(relations[rel]).split()
            tokens = ["RT", "@news", ":", a, *cue, b, "today"]
            img += 1
            rec = {
                "token": tokens,
                "h": {"name": a, "pos": [3, 4]},
                "t": {"name": b, "pos": [4 + len(cue), 5 + len(cue)]},
                "img_id": img,
                "relation": rel,
            }
            lines.append(repr(rec))
        (root / "txt" / f"ours_{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_offline_bert_trains_one_epoch_on_an_older_release(tmp_path, caplog):
    """End to end: the text-only offline preset on integer ids, a ``none`` negative, no rel2id, no captions,
    no scores or objects."""
    data = write_older_release(tmp_path / "old")
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="camim.pretraining.offline"):
        result = train_run("offline-bert", data, out, overrides=ONE_EPOCH)
    assert any("vocabulary is built from the training text alone" in r.getMessage() for r in caplog.records)

    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics == json.loads(json.dumps(result.metrics))
    assert metrics["negative_label"] == {
        "name": "none",
        "origin": "inferred by name from the samples (no rel2id file)",
    }
    assert metrics["best_epoch"] == 1 and metrics["data_report"] == {}
    assert any("built from the training text alone" in n for n in metrics["notes"])
    for split in ("val", "test"):  # scored as MNRE is: `none` (id 0) excluded from micro P/R/F1
        s = metrics[split]
        labels = s["per_relation"]
        assert list(labels)[0] == "none" and sum(v["support"] for v in labels.values()) == 12
        again = scores_from_confusion(torch.tensor(s["confusion"]), negative_id=0)
        for k in ("accuracy", "precision", "recall", "f1"):
            assert s[k] == pytest.approx(again[k])
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Micro P/R/F1 exclude the negative label `none` (inferred by name from the samples" in report
    assert "Note: offline vocabulary built from the training text alone" in report
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["img_id"] for p in preds[:2]] == ["553045", "553046"]  # integer ids, as strings
    stamp = json.loads((out / "offline_encoder" / "camim_offline.json").read_text())
    assert stamp["vocab_captions"] is None
    vocab = (out / "offline_encoder" / "vocab.txt").read_text().split()
    assert "married" in vocab and "smiling" not in vocab  # text only: no caption words

    res = evaluate_run(out, data, split="val")
    assert res["negative_label"]["name"] == "none" and res["f1"] == pytest.approx(metrics["val"]["f1"])


def test_caption_presets_without_captions_name_the_command_that_makes_them(tmp_path):
    data = write_older_release(tmp_path / "old", n_train=8, n_eval=4)
    cfg = load_config("offline-bert", TINY)
    folder = build_offline_encoder(cfg.offline, data, tmp_path / "enc")  # text-only: built, no captions
    assert json.loads((folder / "camim_offline.json").read_text())["vocab_captions"] is None
    with pytest.raises(DataError) as err:
        build_offline_encoder(cfg.offline, data, tmp_path / "enc2", require_captions=True)
    assert "no caption file for source 'minicpm'" in str(err.value)
    assert f"`camim caption --data-dir {data} --split train --model MLLM" in str(err.value)
    with pytest.raises(DataError, match="make it with `camim caption --data-dir"):
        train_run("offline-tmr-cam-mi", data, tmp_path / "run", overrides=ONE_EPOCH)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_empty_or_missing_splits_are_refused_naming_split_and_file(tmp_path, capsys):
    data = write_tiny_mnre(tmp_path / "d", n_train=8, n_eval=4)
    val = data / "txt" / "ours_val.txt"
    val.write_text("\n")
    with pytest.raises(
        DataError, match=rf"{val}: the 'val' split has no samples; .*optim.select_on: train_loss"
    ):
        train_run("offline-bert", data, tmp_path / "r1", overrides=ONE_EPOCH)
    val.unlink()
    with pytest.raises(DataError, match="no sample file for split 'val'"):
        train_run("offline-bert", data, tmp_path / "r2", overrides=ONE_EPOCH)
    assert not (tmp_path / "r2" / "metrics.json").exists()

    train = data / "txt" / "ours_train.txt"
    good = train.read_text()
    train.write_text("{'token': ['a']}\n")
    with pytest.raises(DataError, match="the 'train' split has no samples"):
        train_run("offline-bert", data, tmp_path / "r3", overrides=[*ONE_EPOCH, "data.on_error=skip"])
    train.write_text(good)

    # camim evaluate on an empty split: the same one-line error (was a KeyError traceback)
    run = tmp_path / "r4"
    train_run("offline-bert", data, run, overrides=[*ONE_EPOCH, "optim.select_on=train_loss"])
    test = data / "txt" / "ours_test.txt"
    test.write_text("")
    from camim.cli import main

    assert main(["evaluate", "--model", str(run), "--data-dir", str(data), "--split", "test"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"camim: error: {test}: the 'test' split has no samples; give it samples"


def test_without_a_val_split_the_checkpoint_is_selected_on_the_training_loss(tmp_path):
    data = write_tiny_mnre(tmp_path / "d", n_train=16, n_eval=4)
    (data / "txt" / "ours_val.txt").unlink()
    out = tmp_path / "run"
    result = train_run("offline-bert", data, out, overrides=[*TINY, "optim.select_on=train_loss"])
    m = result.metrics
    assert m["val"] is None and m["selected_on"] == "train_loss" and m["test"]["per_relation"]
    losses = _epoch_losses(out)
    assert len(losses) == 2 and m["best_epoch"] == 1 + min(range(2), key=losses.__getitem__)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Selected checkpoint (lowest epoch training loss)" in report and "| val |" not in report
    with pytest.raises(Exception, match="optim.select_on: expected one of 'val_f1', 'train_loss'"):
        load_config("offline-bert", ["optim.select_on=val_loss"])
    shutil.rmtree(out)


def _epoch_losses(out: Path) -> list[float]:
    from camim.reports import read_run_logs

    return [r["train/loss_epoch"] for r in read_run_logs(out / "logs") if "train/loss_epoch" in r]
