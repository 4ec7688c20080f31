"""DDP on CPU (gloo): the metric's state is summed over processes, and ``camim train`` with two processes
writes every test sample exactly once (final validation and test on rank 0, one device)."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys

import pytest
import torch

from camim.training.api import evaluate_run
from camim.training.metrics import MREMetrics

from .conftest import TINY, write_tiny_mnre

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric_rank(rank: int, world: int, port: int, preds, gold, queue) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        metric = MREMetrics(5, negative_id=0)
        metric.update(preds[rank::world], gold[rank::world])  # each rank sees its shard only
        queue.put((rank, metric.compute(), metric.confusion_matrix().tolist()))
    finally:
        torch.distributed.destroy_process_group()


def test_metric_state_is_summed_across_two_processes():
    g = torch.Generator().manual_seed(0)
    gold = torch.randint(0, 5, (101,), generator=g)  # odd: the shards differ in size
    preds = torch.where(torch.rand(101, generator=g) < 0.5, gold, torch.randint(0, 5, (101,), generator=g))
    single = MREMetrics(5, negative_id=0)
    single.update(preds, gold)

    ctx = multiprocessing.get_context("fork")
    queue, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_metric_rank, args=(r, 2, port, preds, gold, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for _, scores, confusion in results:  # every rank computes the global scores
        assert confusion == single.confusion.tolist()
        assert scores == pytest.approx(single.compute())


def test_cli_experiment_with_ddp_on_two_cpu_processes(tmp_path):
    """Two seeds under DDP: each fit sets the process group up again after the previous run tore it down."""
    data = write_tiny_mnre(tmp_path / "data", n_train=48, n_eval=15)  # 15: DistributedSampler would pad
    out = tmp_path / "exp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(_free_port())}
    cmd = [sys.executable, "-m", "camim", "experiment", "--preset", "offline-bert", "--seeds", "1", "2"]
    cmd += ["--data-dir", str(data), "--output", str(out)]
    for item in [*TINY, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("offline-bert over seeds [1, 2]") == 1, proc.stdout  # rank 0 reports, once

    f1s = []
    for seed in (1, 2):
        run = out / f"seed{seed}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["global_step"] == 2 * 3  # 2 epochs x (48 samples / 2 ranks / batch 8)
        for split in ("val", "test"):
            assert sum(map(sum, metrics[split]["confusion"])) == 15, (seed, split)  # none repeated or lost
        lines = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
        assert [r["id"] for r in lines] == list(range(15))
        again = evaluate_run(run / "model", data)  # one process, the saved safetensors model
        assert again["confusion"] == metrics["test"]["confusion"]
        f1s.append(metrics["test"]["f1"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["f1"]["mean"] == pytest.approx(sum(f1s) / 2)
