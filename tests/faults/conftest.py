"""The SIGKILL harness for the tests: one fork server, the seven commands' inputs and their uninterrupted
runs, built once per session."""

from __future__ import annotations

import os

import pytest
from tests.faults.harness import Launcher, Reference, reference_run, scenarios


@pytest.fixture(scope="session")
def launcher():
    if not hasattr(os, "fork"):
        pytest.skip("the SIGKILL harness forks its commands from a fork server (POSIX only)")
    with Launcher(timeout=120) as started:
        yield started


@pytest.fixture(scope="session")
def commands(launcher, tmp_path_factory):
    """name -> Scenario, with the chat servers of caption and zero-shot running on 127.0.0.1."""
    with scenarios(tmp_path_factory.mktemp("kill_inputs"), launcher) as built:
        yield built


@pytest.fixture(scope="session")
def work_root(tmp_path_factory):
    return tmp_path_factory.mktemp("kill_work")


@pytest.fixture(scope="session")
def reference(commands, launcher, work_root):
    """name -> the command's uninterrupted run (made on first use)."""
    made: dict[str, Reference] = {}

    def get(name: str) -> Reference:
        if name not in made:
            made[name] = reference_run(commands[name], launcher, work_root / name)
        return made[name]

    return get
