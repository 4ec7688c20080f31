"""End-to-end training on tiny data written by the tests (offline presets with tiny encoders)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from camim.cli import main
from camim.data import MNREDataset
from camim.errors import CamimError
from camim.training.api import evaluate_run, train_run

from .conftest import ISSUE18_BAD_SETTINGS, TINY


class Kill(L.Callback):
    """Simulates a crash once ``global_step`` reaches ``at`` (mid-epoch)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.at:
            raise RuntimeError("simulated kill")


@pytest.fixture(scope="module")
def reference_run(tiny_mnre, tmp_path_factory):
    """offline-bert, tiny, 2 epochs x 6 steps, uninterrupted."""
    out = tmp_path_factory.mktemp("ref")
    return train_run("offline-bert", tiny_mnre, out, overrides=TINY)


def test_run_folder_contents(reference_run, tiny_mnre):
    out = reference_run.output_dir
    for name in (
        "config.yaml",
        "metrics.json",
        "predictions.jsonl",
        "report.md",
        "curves.png",
        "confusion.png",
        "per_relation_f1.png",
        "model/model.safetensors",
        "model/config.json",
        "checkpoints/last.ckpt",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"accuracy", "precision", "recall", "f1", "per_relation", "confusion"}
    assert 0.0 <= metrics["test"]["f1"] <= 100.0
    assert sum(map(sum, metrics["test"]["confusion"])) == 16
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == list(range(16))
    gold = [ex.relation for ex in MNREDataset(tiny_mnre, "test", caption_source=None, modalities=())]
    assert [r["gold"] for r in lines] == gold
    for r in lines:
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["predicted"] == max(r["probabilities"], key=r["probabilities"].get)
    # accuracy in metrics.json agrees with the predictions file
    acc = 100 * sum(r["gold"] == r["predicted"] for r in lines) / len(lines)
    assert metrics["test"]["accuracy"] == pytest.approx(acc)
    assert "![confusion matrix](confusion.png)" in (out / "report.md").read_text()


def test_training_lowers_the_loss(reference_run):
    rows = (reference_run.output_dir / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    col = header.index("train/loss_epoch")
    epoch_losses = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert len(epoch_losses) == 2
    assert epoch_losses[1] < epoch_losses[0]


def test_the_logged_learning_rate_follows_the_linear_warmup_and_decay(reference_run):
    # 2 epochs x 6 steps, warmup_ratio 0.1 -> int(1.2) = 1 warmup step: step k logs (before its scheduler
    # step) 3e-3 * (0 at k = 0, else (12 - k) / 11); logged as a host tensor (no per-step GPU copy)
    rows = (reference_run.output_dir / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    col, step = header.index("train/lr"), header.index("step")
    logged = {int(r.split(",")[step]): float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]}
    expected = {k: 3e-3 * (0.0 if k == 0 else (12 - k) / 11) for k in range(12)}
    assert logged.keys() == expected.keys()
    assert all(logged[k] == pytest.approx(expected[k], rel=1e-6, abs=1e-12) for k in expected)


def test_the_learning_rate_is_logged_as_a_host_tensor(tiny_mnre, tmp_path, monkeypatch):
    """On a GPU, a float would be copied to a new GPU tensor every step, a copy that waits for the GPU."""
    from camim.training.module import MRELightningModule

    seen = []
    log = MRELightningModule.log

    def spy(self, name, value, *args, **kwargs):
        if name == "train/lr":
            seen.append(value)
        return log(self, name, value, *args, **kwargs)

    monkeypatch.setattr(MRELightningModule, "log", spy)
    train_run("offline-bert", tiny_mnre, tmp_path / "run", overrides=[*TINY, "optim.epochs=1"])
    assert len(seen) == 6
    assert all(
        isinstance(v, torch.Tensor) and v.device.type == "cpu" and v.dtype == torch.float32 for v in seen
    )


def test_saved_model_reloads_with_same_predictions(reference_run, tiny_mnre):
    from camim.models import load_model

    model = load_model(reference_run.model_dir)
    ds = MNREDataset(tiny_mnre, "test", caption_source=None, modalities=model.required_modalities)
    with torch.no_grad():
        probs = torch.softmax(model(model.processor([ds[i] for i in range(len(ds))])).logits, -1)
    lines = [json.loads(x) for x in (reference_run.output_dir / "predictions.jsonl").read_text().splitlines()]
    expected = torch.tensor([[r["probabilities"][n] for n in model.labels] for r in lines])
    assert torch.allclose(probs, expected, atol=1e-5)
    # evaluate_run re-scores the saved model to the same metrics
    res = evaluate_run(reference_run.output_dir, tiny_mnre, split="test")
    assert res["f1"] == pytest.approx(reference_run.metrics["test"]["f1"])
    assert res["confusion"] == reference_run.metrics["test"]["confusion"]
    val = evaluate_run(reference_run.model_dir, tiny_mnre, split="val")
    assert val["f1"] == pytest.approx(reference_run.metrics["val"]["f1"]) and val["split"] == "val"


class _SigtermAtFirstTestBatch(L.Callback):
    """What Lightning's SIGTERM handler does (``received_sigterm``), after the first test batch."""

    def on_test_batch_end(self, trainer, *args):
        trainer._signal_connector.received_sigterm = True


class _CtrlCAtFirstTestBatch(L.Callback):
    def on_test_batch_end(self, trainer, *args):
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    "stop, status, word",
    [(_SigtermAtFirstTestBatch, 143, "terminated"), (_CtrlCAtFirstTestBatch, 130, "interrupted")],
)
def test_sigterm_or_ctrl_c_in_camim_evaluate_prints_one_line_and_exits_143_or_130(
    reference_run, tiny_mnre, monkeypatch, capsys, stop, status, word
):
    """Lightning's test loop ends on SIGTERM with a status-less ``SystemExit`` (``SIGTERMException``), and on
    Ctrl-C in ``sys.exit(1)``: ``camim evaluate`` stopped by a scheduler or ``docker stop`` exited 0 printing
    nothing, read as a finished scoring; Ctrl-C exited 1."""
    import camim.training.api as api

    trainer = api._trainer
    monkeypatch.setattr(
        api, "_trainer", lambda cfg, out, cbs, *a, **k: trainer(cfg, out, [*cbs, stop()], *a, **k)
    )
    argv = [
        "evaluate",
        "--model",
        str(reference_run.output_dir),
        "--data-dir",
        str(tiny_mnre),
        "--batch-size",
        "1",
    ]
    assert main(argv) == status
    assert capsys.readouterr().err.splitlines() == [
        f"camim: {word}; nothing was written; run the same command again"
    ]


def test_resume_after_kill_gives_identical_weights_and_metrics(reference_run, tiny_mnre, tmp_path):
    out = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_run("offline-bert", tiny_mnre, out, overrides=TINY, callbacks=[Kill(at=8)])  # mid epoch 2
    assert (out / "checkpoints" / "last.ckpt").is_file() and not (out / "metrics.json").exists()
    resumed = train_run("offline-bert", tiny_mnre, out, overrides=TINY)
    assert resumed.metrics["global_step"] == reference_run.metrics["global_step"] == 12
    a = load_file(reference_run.model_dir / "model.safetensors")
    b = load_file(resumed.model_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # same seed, same data: identical metrics (the resumed run is a second run with the reference's seed)
    assert resumed.metrics["test"] == reference_run.metrics["test"]
    assert resumed.metrics["val"] == reference_run.metrics["val"]
    # the curves of the resumed run join both logs: every step once, and the same losses as the reference
    from camim.reports import read_run_logs

    joined = {r["step"]: r["train/loss_step"] for r in read_run_logs(out / "logs") if "train/loss_step" in r}
    ref = {
        r["step"]: r["train/loss_step"]
        for r in read_run_logs(reference_run.output_dir / "logs")
        if "train/loss_step" in r
    }
    assert sorted(joined) == list(range(12)) and joined == pytest.approx(ref)


def _killed_in_epoch_3(tiny_mnre, out, overrides) -> tuple[list[str], dict]:
    """offline-bert killed at the start of epoch 3 (6 steps an epoch): its checkpoint files and last.ckpt."""
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_run("offline-bert", tiny_mnre, out, overrides=overrides, callbacks=[Kill(at=12)])
    ckpts = out / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    return sorted(p.name for p in ckpts.iterdir()), last


def test_last_ckpt_is_written_after_an_epoch_that_does_not_improve_dev_f1(tiny_mnre, tmp_path):
    """Lightning 2.6 writes last.ckpt only beside a new best checkpoint: killed in epoch 3 after a second epoch no
    better than the first, the run resumed from epoch 1 and trained epoch 2 again. lr 1e-12 keeps dev F1 flat, so
    epoch 2 (index 1) ties epoch 1 and the first is kept (the released ``>``)."""
    out = tmp_path / "flat"
    names, last = _killed_in_epoch_3(tiny_mnre, out, [*TINY, "optim.epochs=3", "optim.lr=1e-12"])
    assert names == ["best-epoch0.ckpt", "last.ckpt"]
    assert (last["epoch"], last["global_step"]) == (1, 12)


def test_last_ckpt_is_written_after_an_epoch_that_does_not_lower_the_training_loss(tiny_mnre, tmp_path):
    """``optim.select_on: train_loss`` saves at the training epoch's end (no validation runs), under the same
    Lightning 2.6 rule: killed in epoch 3, last.ckpt was epoch 1's. lr 1 makes epoch 2's loss the higher."""
    from camim.reports import read_run_logs

    out = tmp_path / "loss"
    rising = [*TINY, "optim.select_on=train_loss", "optim.epochs=3", "optim.lr=1"]
    names, last = _killed_in_epoch_3(tiny_mnre, out, rising)
    losses = [r["train/loss_epoch"] for r in read_run_logs(out / "logs") if "train/loss_epoch" in r]
    assert len(losses) == 2 and losses[1] > losses[0]  # epoch 2 did not improve
    assert names == ["best-epoch0.ckpt", "last.ckpt"]
    assert (last["epoch"], last["global_step"]) == (1, 12)


def test_an_empty_last_checkpoint_starts_the_run_afresh_with_a_warning(
    reference_run, tiny_mnre, tmp_path, caplog
):
    """A last.ckpt that a power loss left empty (written before atomic writes were fsynced) crashed the
    resume; now the run trains from its first step, to the uninterrupted run's weights and metrics."""
    out = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_run("offline-bert", tiny_mnre, out, overrides=TINY, callbacks=[Kill(at=8)])
    (out / "checkpoints" / "last.ckpt").write_bytes(b"")
    with caplog.at_level("WARNING", logger="camim.runs"):
        rerun = train_run("offline-bert", tiny_mnre, out, overrides=TINY)
    assert any(r.getMessage().endswith("is empty (cut short by a power loss); the run starts again from its "
                                       "first step") for r in caplog.records)  # fmt: skip
    assert rerun.metrics["global_step"] == 12 and rerun.metrics["test"] == reference_run.metrics["test"]
    a, b = (
        load_file(reference_run.model_dir / "model.safetensors"),
        load_file(rerun.model_dir / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_other_run_in_folder_is_refused(reference_run, tiny_mnre):
    with pytest.raises(CamimError, match="different run"):
        train_run("offline-bert", tiny_mnre, reference_run.output_dir, overrides=[*TINY, "optim.lr=1e-3"])


def test_cli_evaluate_json(reference_run, tiny_mnre, capsys):
    rc = main(["evaluate", "--model", str(reference_run.model_dir), "--data-dir", str(tiny_mnre), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["f1"] == pytest.approx(reference_run.metrics["test"]["f1"])
    assert res["num_samples"] == 16


def test_cli_train_error_is_one_line(tiny_mnre, tmp_path, capsys):
    rc = main(
        ["train", "--config", "no-such-preset", "--data-dir", str(tiny_mnre), "--output", str(tmp_path)]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "unknown preset" in err and "Traceback" not in err


# ------------------------------------------- issue 18 §2/§3: checked before the run folder is touched


@pytest.mark.parametrize("override, message", ISSUE18_BAD_SETTINGS)
def test_cli_train_refuses_a_bad_setting_in_one_line_before_creating_the_folder(
    override, message, tiny_mnre, tmp_path, capsys
):
    out = tmp_path / "run"
    args = ["train", "--config", "offline-tmr-cam-mi", "--data-dir", str(tiny_mnre), "--output", str(out)]
    assert main([*args, "--set", override]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"camim: error: {message}") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def _stamps(folder) -> dict:
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_settings_leave_an_existing_run_folder_untouched(reference_run, tiny_mnre, capsys):
    """An unknown model key (or another run's settings) is refused before config.yaml is written and before
    offline_encoder/ is rebuilt (it was rebuilt first, then refused, before)."""
    out = reference_run.output_dir
    before = _stamps(out)
    args = ["train", "--config", "offline-bert", "--data-dir", str(tiny_mnre), "--output", str(out)]
    for item in TINY:
        args += ["--set", item]
    assert main([*args, "--set", "model.colour=red"]) == 1
    assert "model.colour: unknown key" in capsys.readouterr().err
    # another run: a different vocabulary size would rebuild the encoder folder if it came first
    assert main([*args, "--set", "offline.vocab_size=150"]) == 1
    assert "differs in offline.vocab_size" in capsys.readouterr().err
    assert _stamps(out) == before


def test_run_folder_config_is_fully_resolved_and_reloads_equal(reference_run, tiny_mnre):
    from camim.training.api import resolve_run_config
    from camim.training.config import load_config

    out = reference_run.output_dir
    saved = load_config(out / "config.yaml")
    assert saved == resolve_run_config("offline-bert", TINY, tiny_mnre, out)
    assert saved.model.text_encoder == str((out / "offline_encoder").resolve())  # offline.model_keys applied
    assert saved.data.data_dir == str(tiny_mnre)


def test_finished_run_without_checkpoints_is_not_retrained_unless_overwrite(tiny_mnre, tmp_path, capsys):
    import shutil

    out = tmp_path / "finished"
    small = [*TINY, "optim.epochs=1", "data.train_limit=16", "data.eval_limit=8"]
    train_run("offline-bert", tiny_mnre, out, overrides=small)
    shutil.rmtree(out / "checkpoints")
    before = _stamps(out)
    with pytest.raises(CamimError, match="finished run whose checkpoints/ are gone.*--overwrite"):
        train_run("offline-bert", tiny_mnre, out, overrides=small)
    assert _stamps(out) == before
    args = ["train", "--config", "offline-bert", "--data-dir", str(tiny_mnre), "--output", str(out)]
    for item in small:
        args += ["--set", item]
    assert main(args) == 1 and "or --overwrite to replace that run" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "metrics.json").stat().st_mtime_ns > before[Path("metrics.json")]
    assert (out / "offline_encoder" / "camim_offline.json").stat().st_mtime_ns == before[
        Path("offline_encoder") / "camim_offline.json"
    ]  # same settings: the encoder is kept


class CountConversions(L.Callback):
    """Counts Lightning's tensor-to-number conversions of logged metrics inside training batches (each one, on a
    GPU, a copy that waits for the queue), and keeps the progress bar."""

    def __init__(self, monkeypatch):
        from lightning.pytorch.trainer.connectors.logger_connector import result

        self.in_batch, self.conversions, self.bar = False, 0, None
        convert = result.convert_tensors_to_scalars

        def counting(value):
            self.conversions += self.in_batch and isinstance(value, torch.Tensor)
            return convert(value)

        monkeypatch.setattr(result, "convert_tensors_to_scalars", counting)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.in_batch, self.bar = True, trainer.progress_bar_callback

    def on_validation_start(
        self, trainer, pl_module
    ):  # a batch's conversions come after its hooks: stop here
        self.in_batch = False


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "speed.fast"])
def test_speed_fast_runs_convert_no_step_metric_per_batch(tiny_mnre, tmp_path, monkeypatch, fast):
    """Lightning converts prog_bar step metrics to numbers after every batch; a speed.fast run logs none and
    its bar (Lightning's own class) reads the step loss itself every log_every_n_steps batches."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    from camim.training.progress import ThrottledRichProgressBar, ThrottledTQDMProgressBar

    count = CountConversions(monkeypatch)
    monkeypatch.setattr(
        "camim.trainer.on_terminal", lambda *a: True
    )  # the bar is a terminal's (a log gets lines)
    overrides = [*TINY, "optim.epochs=1", "trainer.progress_bar=true", "trainer.log_every_n_steps=100"]
    train_run("offline-bert", tiny_mnre, tmp_path / "run", overrides=[*overrides, f"speed.fast={str(fast).lower()}"],
              callbacks=[count])  # fmt: skip
    if fast:
        assert count.conversions == 0
        assert isinstance(count.bar, (ThrottledRichProgressBar, ThrottledTQDMProgressBar))
        assert count.bar.every == 100 and isinstance(
            count.bar._loss, float
        )  # read at the first and last batch
    else:
        assert count.conversions >= 6  # the step loss, after each of the 6 batches
        assert type(count.bar) in (RichProgressBar, TQDMProgressBar)
