"""speed.keep_freed_memory (camim.speed.memory): freed memory stays in the heap for reuse (glibc), a switch
on by default for CPU runs that changes nothing computed (run-neutral), applied by TrainingSpeed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from torch import nn

from camim.speed import memory
from camim.speed.config import SpeedConfig
from camim.training.config import RUN_NEUTRAL_KEYS, load_config
from camim.typed import differing_keys

glibc = pytest.mark.skipif(memory._glibc() is None, reason="needs Linux with glibc (mallopt, mallinfo2)")

# a fresh process (malloc settings are process-wide): mmap'd and free heap bytes, in MiB, while a 64 MiB tensor
# is held and after it is freed, with glibc's defaults, after keep_freed_memory() and after release
PROBE = r"""
import ctypes, json, torch
from camim.speed import memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
def mib(): i = libc.mallinfo2(); return {"mmapped": i.hblkhd >> 20, "free_heap": i.fordblks >> 20}
def cycle():
    t = torch.ones(64 << 18)  # 64 MiB of float32
    held = mib(); del t
    return {"held": held, "freed": mib()}
out = {"default": cycle(), "applied": memory.keep_freed_memory()}
out["keep"] = cycle()
out["released"] = memory.release_freed_memory()
out["after_release"] = cycle()
print(json.dumps(out))
"""


@glibc
def test_a_freed_large_tensor_stays_in_the_heap_only_with_the_switch():
    out = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                    check=True, timeout=120).stdout)  # fmt: skip
    default, keep, after = out["default"], out["keep"], out["after_release"]
    # glibc's default: an mmap'd chunk, unmapped when freed (the next step faults its pages in again)
    assert default["held"]["mmapped"] - default["freed"]["mmapped"] >= 64
    assert out["applied"] is True
    # kept: from the heap, not mmap'd; once freed its 64 MiB are free heap memory, mapped, for the next step
    assert keep["held"]["mmapped"] == keep["freed"]["mmapped"] == default["freed"]["mmapped"]
    assert keep["freed"]["free_heap"] >= 64
    # back to the defaults: mmap'd again
    assert out["released"] is True
    assert after["held"]["mmapped"] - after["freed"]["mmapped"] >= 64


def test_the_switch_is_on_for_cpu_runs_needs_no_fast_step_and_can_be_turned_off():
    assert SpeedConfig().resolved("cpu").keep_freed_memory is True
    assert SpeedConfig(keep_freed_memory=False).resolved("cpu").keep_freed_memory is False
    assert (
        SpeedConfig(fast=False, keep_freed_memory=True).keep_freed_memory is True
    )  # no "needs fast" refusal


def test_the_switch_is_run_neutral_so_a_run_folder_written_before_it_existed_resumes():
    """Where memory comes from changes nothing computed: a run set either way (or recorded before the key
    existed) is the same run for the resume and reuse checks."""
    on = load_config("minilm-bert").to_dict()
    off = load_config("minilm-bert", ["speed.keep_freed_memory=false"]).to_dict()
    older = {**on, "speed": {k: v for k, v in on["speed"].items() if k != "keep_freed_memory"}}
    assert differing_keys(on, off) == ["speed.keep_freed_memory"]
    assert differing_keys(on, off, ignore=RUN_NEUTRAL_KEYS) == []
    assert differing_keys(older, off, ignore=RUN_NEUTRAL_KEYS) == []


def test_training_speed_applies_it_on_the_cpu_and_reports_it(monkeypatch):
    from camim.speed import training

    calls = []
    monkeypatch.setattr(training, "keep_freed_memory", lambda: calls.append(1) or True)
    assert training.TrainingSpeed(SpeedConfig(), nn.Linear(2, 2), "cpu").report()["kept_freed_memory"] is True
    assert len(calls) == 1
    off = training.TrainingSpeed(SpeedConfig(keep_freed_memory=False), nn.Linear(2, 2), "cpu").report()
    assert off["kept_freed_memory"] is False and off["notes"] == [] and len(calls) == 1
    monkeypatch.setattr(training, "keep_freed_memory", lambda: False)  # not glibc: said, nothing changed
    asked = training.TrainingSpeed(SpeedConfig(keep_freed_memory=True), nn.Linear(2, 2), "cpu").report()
    assert asked["kept_freed_memory"] is False
    assert asked["notes"] == ["speed.keep_freed_memory is off: the C library is not glibc (nothing changed)"]
