"""The lent-GPU pack and driver of issue 37's MiniLM grids (benchmarks/device_pack.py, gpu_minilm.py), without
training: the fp16 copy (fp16 tensors, an fp32 model of the rounded values, the tokenizer along, skipped when
up to date, weights beyond fp16 refused), the run plan (priority order, the grids' own folders and overrides,
the twin that is copied), the epoch times read from a run's epoch lines and the budget's start rule."""

from __future__ import annotations

import argparse
import json
import tarfile
import threading
from types import SimpleNamespace

import pytest
from tests.factories import TINY_BERT, bert_folder

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat"]


@pytest.fixture
def tiny_encoder(tmp_path):
    """A tiny random BertModel folder whose config names no dtype (as the bundled MiniLM's does not)."""
    pytest.importorskip("transformers")
    folder = bert_folder(tmp_path / "src", VOCAB, weights=True, **TINY_BERT)
    config = json.loads((folder / "config.json").read_text())
    config.pop("dtype", None), config.pop("torch_dtype", None)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_fp16_copy_holds_fp16_tensors_loads_as_fp32_rounded_values_with_its_tokenizer(
    bench, tmp_path, tiny_encoder
):
    import torch
    from safetensors.torch import load_file

    from camim.models.encoders import load_text_encoder, load_tokenizer

    pack = bench("device_pack")
    dest = tmp_path / "fp16"
    record = pack.fp16_copy(tiny_encoder, dest, "a" * 64)
    source = load_file(str(tiny_encoder / "model.safetensors"))
    copied = load_file(str(dest / "model.safetensors"))
    assert set(copied) == set(source) and {t.dtype for t in copied.values()} == {torch.float16}
    worst = max(float((t.half().float() - t).abs().max()) for t in source.values())
    assert record["max_abs_rounding"] == worst > 0 and record["skipped"] is False
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(record["tokenizer_files"])
    model = load_text_encoder(str(dest))  # transformers 5 would build fp16 without the config's dtype
    params = dict(model.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.float32}
    emb = "embeddings.word_embeddings.weight"
    assert torch.equal(params[emb], source[emb].half().float())
    assert load_tokenizer(str(dest))("the cat sat")["input_ids"] == [2, 5, 6, 7, 3]
    again = pack.fp16_copy(tiny_encoder, dest, "a" * 64)
    assert again["skipped"] is True and again["sha256"] == record["sha256"]
    assert pack.fp16_copy(tiny_encoder, dest, "b" * 64)["skipped"] is False  # another source: written again


def test_fp16_copy_refuses_a_weight_beyond_fp16(bench, tmp_path, tiny_encoder):
    from safetensors.torch import load_file, save_file

    from camim.errors import CamimError

    tensors = load_file(str(tiny_encoder / "model.safetensors"))
    tensors["embeddings.LayerNorm.weight"][3] = 7e4  # fp16's largest is 65504
    save_file(tensors, str(tiny_encoder / "model.safetensors"))
    with pytest.raises(CamimError, match="embeddings.LayerNorm.weight exceeds fp16's range"):
        bench("device_pack").fp16_copy(tiny_encoder, tmp_path / "fp16", "a" * 64)


def test_plan_runs_the_grids_runs_in_priority_order_and_copies_the_twin(bench, tmp_path):
    gm = bench("gpu_minilm")
    priority = (*gm.PRIORITY[:2], ("no-such-grid", None, (1,)), gm.PRIORITY[3])
    runs, skipped = gm.plan(tmp_path / "runs", str(tmp_path / "data"), ["model.text_encoder=/x"], priority)
    assert skipped == ["no-such-grid: not in grids.yaml (yet)"]
    first = [(r.label, r.seed, r.kind) for r in runs[:4]]
    assert first == [("bert", 1, "text"), ("tmr-cam-mi", 1, "caption"), ("tmr-cam-mi-shuffled", 1, "caption"),
                     ("bert", 2, "text")]  # fmt: skip
    assert [(r.label, r.seed) for r in runs[9:12]] == [("tmr", 1), ("tmr", 2), ("tmr", 3)]
    assert [r.label for r in runs[12:]] == [f"{x}/tmr-cam-mi" for x in
                                            ("blip2", "instruct", "llavanext", "qwenvl", "cogvlm", "minicpm")]  # fmt: skip
    shuffled = runs[2]
    assert shuffled.folder == tmp_path / "runs" / "minilm-table1" / "tmr-cam-mi-shuffled" / "seed1"
    assert shuffled.job.overrides == ("data.caption_shuffle_seed=7", "model.text_encoder=/x", "optim.seed=1")
    assert shuffled.epochs == 6 and shuffled.twin is None
    minicpm = runs[-1]
    assert (
        minicpm.folder.parent.name == "minicpm_tmr-cam-mi" and minicpm.twin is runs[1] and minicpm.job is None
    )
    assert all(r.twin is None for r in runs[:-1])


def test_the_precision_grids_bf16_row_is_table1s_text_run_and_its_fp32_row_trains(bench, tmp_path):
    gm = bench("gpu_minilm")
    runs, skipped = gm.plan(tmp_path / "runs", str(tmp_path / "data"), ["model.text_encoder=/x"], gm.PRIORITY)
    assert skipped == [] and len(runs) == 12 + 2 + 6
    bf16, fp32 = [r for r in runs if r.grid == "minilm-precision"]
    assert (bf16.label, bf16.twin, bf16.job) == ("bert-bf16", runs[0], None)  # minilm-table1 bert seed 1
    assert (runs[0].grid, runs[0].label, runs[0].seed) == ("minilm-table1", "bert", 1)
    assert fp32.twin is None and fp32.kind == "text"
    assert fp32.job.overrides == ("speed.bf16=false", "model.text_encoder=/x", "optim.seed=1")


def _driver(gm, tmp_path, runs, estimate=None):
    args = argparse.Namespace(out=tmp_path / "out", runs=tmp_path / "runs", jobs=2, threads=1, budget_s=100.0,
                              started_at=gm.time.time(), estimate=estimate or {}, fallback=[])  # fmt: skip
    args.out.mkdir()
    return gm.Driver(args, runs, {})


def _epoch_line(epoch: int, of: int) -> str:
    """The line camim.trainer.EpochLines prints for ``epoch`` of ``of`` (a run's log, which the driver reads)."""
    import io

    from camim.trainer import EpochLines

    out = io.StringIO()
    lines = EpochLines("train/loss", "val/f1", stream=out, clock=lambda: 100.0)
    trainer = SimpleNamespace(max_epochs=of, current_epoch=epoch - 1, global_step=766 * epoch,
                              callback_metrics={"train/loss_epoch": 1.2, "val/f1": 41.2}, checkpoint_callback=None)  # fmt: skip
    lines.on_train_start(trainer, None)
    lines.on_train_epoch_end(trainer, None)
    lines.on_train_end(trainer, None)
    return out.getvalue().strip()


def test_epoch_times_steady_epoch_and_the_budget_rule(bench, tmp_path):
    gm = bench("gpu_minilm")
    assert gm.EPOCH_LINE.match(_epoch_line(epoch=2, of=4)).groups() == ("2", "4")  # what a run prints
    text = gm.Run("minilm-table1", "bert", 1, tmp_path / "runs/minilm-table1/bert/seed1", "text", 6)
    text.status, text.started, text.epoch_lines = "running", 100.0, [(1, 130.0), (2, 140.0), (3, 151.0)]
    assert gm.epoch_times(text) == [30.0, 10.0, 11.0]
    entry = gm.describe(text)
    assert (entry["first_epoch_s"], entry["steady_epoch_s"], entry["warmup_s"]) == (30.0, 10.5, 19.5)
    cap = gm.Run(
        "minilm-table1", "tmr", 1, tmp_path / "runs/minilm-table1/tmr/seed1", "caption", 6, job="job"
    )
    d = _driver(gm, tmp_path, [text, cap])
    assert d.estimate("text") == 30.0 + 11.0 * 5  # the first epoch and the last one's time for the 5 others
    assert d.estimate("caption") is None and d.next_run() is cap  # not measured yet: it starts
    d.args.estimate = {"caption": 200.0}  # over the ~85 s left: not started
    assert d.next_run() is None
    cap.status, cap.started, cap.ended = "finished", 0.0, 40.0
    assert d.estimate("caption") == 40.0


def test_no_run_starts_once_the_stop_time_has_come(bench, tmp_path):
    """A kind without an estimate starts while time is left, not after the deadline (it would be stopped at once,
    and reported as stopped after 0 epochs instead of not started)."""
    gm = bench("gpu_minilm")
    run = gm.Run(
        "minilm-table1", "tmr", 1, tmp_path / "runs/minilm-table1/tmr/seed1", "caption", 6, job="job"
    )
    d = _driver(gm, tmp_path, [run])
    assert d.estimate("caption") is None and d.next_run() is run
    d.stop_at = gm.time.time() - 1
    assert d.next_run() is None


def test_a_run_failing_before_its_first_epoch_is_retried_once_with_the_fallback(bench, tmp_path):
    from camim.experiments.worker import RunJob

    gm = bench("gpu_minilm")
    runs = [gm.Run("minilm-table1", "bert", s, tmp_path / f"runs/b/seed{s}", "text", 6,
                   job=RunJob("bert", s, "minilm-bert", "d", "o", (f"optim.seed={s}",))) for s in (1, 2, 3, 4)]  # fmt: skip
    d = _driver(gm, tmp_path, runs)
    d.args.fallback = ["speed.foreach_casts=false"]

    def fails(run):  # a run process that exited 1 before any epoch line
        run.status, run.started, run.fallback = "running", 1.0, d.fallback_on
        run.process, run.reader = SimpleNamespace(returncode=1), threading.Thread(target=lambda: None)
        run.reader.start()
        d.finish(run)

    fails(runs[0])
    assert (
        runs[0].status == "queued"
        and d.fallback_on
        and "queued again with speed.foreach_casts=false" in runs[0].note
    )
    assert d.job_for(runs[1]).overrides == ("optim.seed=2", "speed.foreach_casts=false")
    fails(runs[0])  # its retry, with the fallback: failed for good
    assert runs[0].status == "failed" and runs[0].fallback
    fails(runs[1])
    assert d.next_run() is runs[2] and not d.hopeless()  # two failures: still trying
    fails(runs[2])
    assert d.hopeless() and d.next_run() is None


def test_a_run_whose_output_is_not_utf8_is_still_read_to_its_end(bench, tmp_path, monkeypatch):
    """The run's process writes a byte that is not UTF-8 before its epoch line: the reader replaces it and goes
    on (one that died there would miss the epoch line and leave the run blocked once the pipe is full)."""
    from camim.experiments.worker import RunJob

    gm = bench("gpu_minilm")
    child = tmp_path / "child.py"
    child.write_text(
        "import sys\nsys.stdout.buffer.write(b'caption \\xff\\xfe\\n')\n"
        "print('epoch 1/2: 3 steps, train loss 1.0000', flush=True)\nprint('camim run bert seed 1: done')\n"
    )
    monkeypatch.setattr(gm, "__file__", str(child))
    run = gm.Run("minilm-table1", "bert", 1, tmp_path / "runs/b/seed1", "text", 2,
                 job=RunJob("bert", 1, "minilm-bert", "d", "o", ("optim.seed=1",)))  # fmt: skip
    d = _driver(gm, tmp_path, [run])
    d.start(run)
    run.process.wait(30)
    d.finish(run)
    assert [e for e, _ in run.epoch_lines] == [1]
    assert list(run.tail)[:2] == ["caption \ufffd\ufffd", "epoch 1/2: 3 steps, train loss 1.0000"]


def test_an_error_in_the_driver_kills_the_runs_still_going(bench, tmp_path, monkeypatch):
    """A run's process does not outlive a driver that failed (it would train on into gpu_check's timings)."""
    from camim.experiments.worker import RunJob

    gm = bench("gpu_minilm")
    child = tmp_path / "child.py"
    child.write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setattr(gm, "__file__", str(child))
    run = gm.Run("minilm-table1", "bert", 1, tmp_path / "runs/b/seed1", "text", 2,
                 job=RunJob("bert", 1, "minilm-bert", "d", "o", ("optim.seed=1",)))  # fmt: skip
    d = _driver(gm, tmp_path, [run])

    calls = []

    def broken():  # the loop's second round, once the run has started
        calls.append(1)
        if len(calls) > 1:
            raise OSError("No space left on device")

    monkeypatch.setattr(d, "copy_twins", broken)
    try:
        with pytest.raises(OSError, match="No space left"):
            d.drive()
        assert run.process.poll() is not None  # killed, not left sleeping
    finally:
        if run.process is not None and run.process.poll() is None:
            run.process.kill()


def test_a_cuda_error_before_any_run_is_one_line(bench, tmp_path, monkeypatch, capsys):
    gm = bench("gpu_minilm")

    def cuda_broken(args):
        raise RuntimeError(
            "CUDA error: no kernel image is available for execution on the device\nCUDA kernel errors"
        )

    monkeypatch.setattr(gm, "preflight", cuda_broken)
    argv = [
        "--data-dir",
        "d",
        "--encoder",
        str(tmp_path),
        "--runs",
        str(tmp_path / "r"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert gm.main(argv) == 1
    err = capsys.readouterr().err
    assert err == "gpu_minilm: error: CUDA error: no kernel image is available for execution on the device\n"


def test_a_pack_record_without_its_sha256_is_refused_naming_the_file(bench, tmp_path):
    from camim.errors import CamimError

    gm = bench("gpu_minilm")
    (tmp_path / "PACK.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    args = argparse.Namespace(accelerator="cpu", encoder=tmp_path)
    with pytest.raises(CamimError, match=r"model.safetensors: sha256 differs from PACK.json"):
        gm.preflight(args)


def test_the_script_unpacks_the_packed_data_without_an_xz_program(bench, tmp_path):
    """gpu_minilm.sh unpacks device_pack.py's archive with Python alone (a PATH without xz, which `tar -J`
    needs), once per machine, then hands over to gpu_minilm.py (a stub here) with the unpacked folder."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.benchmarks.conftest import BENCHMARKS

    root = tmp_path / "repo"
    (root / "benchmarks").mkdir(parents=True)
    shutil.copy(BENCHMARKS / "gpu_minilm.sh", root / "benchmarks")
    (root / "benchmarks" / "gpu_minilm.py").write_text("import sys\nprint(' '.join(sys.argv[1:5]))\n")
    (root / ".device" / "minilm-fp16").mkdir(parents=True)
    (root / ".device" / "minilm-fp16" / "PACK.json").write_text("{}")
    mnre = tmp_path / "mnre"
    (mnre / "txt").mkdir(parents=True)
    (mnre / "txt" / "ours_val.txt").write_text("a line\n")
    bench("device_pack").pack_data(mnre, root / ".device" / "mnre.tar.xz")
    tools = tmp_path / "bin"  # what the script runs from PATH, and no xz
    tools.mkdir()
    for name in ("cmp", "cp", "date", "dirname", "mkdir", "tar"):
        (tools / name).symlink_to(shutil.which(name))
    data = tmp_path / "data"
    env = {
        "PATH": str(tools),
        "PYTHON": sys.executable,
        "CAMIM_MNRE_DIR": str(data),
        "HOME": os.environ["HOME"],
    }
    for _ in range(2):  # the second call finds it unpacked
        proc = subprocess.run([shutil.which("bash"), str(root / "benchmarks" / "gpu_minilm.sh"), str(tmp_path / "out")],
                              env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"--data-dir {data} --encoder {root / '.device' / 'minilm-fp16'}"
    assert (data / "txt" / "ours_val.txt").read_text() == "a line\n"


def test_the_tarball_and_the_table_hold_the_finished_runs_in_the_grid_layout(bench, tmp_path):
    gm = bench("gpu_minilm")
    folder = tmp_path / "runs" / "minilm-table2" / "minicpm_tmr-cam-mi" / "seed1"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("name: x\n")
    (folder / "metrics.json").write_text('{"test": {"f1": 50.0}}')
    run = gm.Run("minilm-table2", "minicpm/tmr-cam-mi", 1, folder, "caption", 6, status="copied")
    gm.tar_runs(tmp_path / "t.tar.gz", tmp_path / "runs", [run])
    with tarfile.open(tmp_path / "t.tar.gz") as tar:
        assert tar.getnames() == [
            f"minilm-table2/minicpm_tmr-cam-mi/seed1/{n}" for n in ("config.yaml", "metrics.json")
        ]
    row = gm.table({"device": "d", "encoder": "e", "runs": [gm.describe(run)]}).splitlines()[-1]
    assert row == "| minilm-table2/minicpm_tmr-cam-mi/seed1 | copied | - | - | - | 0 | - | - | 50.00 |"
