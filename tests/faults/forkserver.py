"""A fork server for the SIGKILL harness: one Python process that imports camim and the libraries its commands
use (torch, Lightning, transformers, ...: about 9 s of CPU on the test machine) once, then forks a child per
command, which runs ``camim.cli.main(argv)`` exactly as ``python -m camim`` does and exits with its status.
Each child is a real process of its own, killed by its PID; starting it costs a fork instead of the imports,
so a random kill lands in the command's work rather than in its imports.

Protocol: one JSON request per line on stdin, one JSON answer per line on stdout::

    {"op": "spawn", "argv": [...], "env": {...}, "cwd": "...", "out": "...", "err": "...", "trace": null}
        -> {"pid": 1234}
    {"op": "wait", "pid": 1234, "timeout": 5.0}
        -> {"state": "exited", "rc": 0} | {"state": "killed", "signal": 9} | {"state": "running"}
    {"op": "exit"}

``env`` entries are set in the child (``null`` removes one). With ``trace`` (a file path) the child counts how
often it reaches each failpoint (:func:`camim.io.failpoint`) and writes ``{name: count}`` there at its end.

Run as ``python tests/faults/forkserver.py`` (it imports nothing of the tests); ``python tests/faults/forkserver.py
--trace FILE ARGS...`` runs ``camim ARGS`` once in this process with the failpoints counted.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback


def warm_imports() -> None:
    """Import what the commands import lazily, so that a forked child starts at once."""
    import torch

    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 gives a process started with python -m camim
    import camim.cli

    camim.cli.build_parser()  # every command module
    import lightning  # noqa: F401
    import matplotlib.pyplot  # noqa: F401 - the run reports
    import transformers
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast  # noqa: F401

    import camim.captioning.openai_backend  # noqa: F401
    import camim.captioning.runner  # noqa: F401
    import camim.inference.cli  # noqa: F401
    import camim.inference.predictor  # noqa: F401
    import camim.models.bert_re  # noqa: F401
    import camim.models.tmr  # noqa: F401
    import camim.preprocess.objects  # noqa: F401
    import camim.pretraining.pretrain  # noqa: F401
    import camim.reports  # noqa: F401
    import camim.speed.image_cache  # noqa: F401
    import camim.training.api  # noqa: F401
    import camim.zeroshot.run  # noqa: F401

    transformers.logging.set_verbosity_error()
    assert threading.active_count() == 1, "a thread started while importing: forking would not be safe"


def _trace_failpoints(path: str) -> None:
    """Count the failpoints this process reaches instead of acting on them; written to ``path`` at exit."""
    import camim.io

    counts: dict[str, int] = {}
    lock = threading.Lock()

    def reached(spec, name, before_kill, args) -> None:  # replaces camim.io's, looked up at each call
        with lock:
            counts[name] = counts.get(name, 0) + 1

    camim.io._failpoint_reached = reached
    os.environ["CAMIM_FAILPOINT"] = "trace"
    _at_exit.append(lambda: open(path, "w").write(json.dumps(counts)))


_at_exit: list = []


def _child(request: dict) -> None:
    """In the forked child: the environment, folder and output files of the request, then the command."""
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, key in ((1, "out"), (2, "err")):
            os.dup2(os.open(request[key], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for key, value in request.get("env", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.chdir(request.get("cwd") or os.getcwd())
        if request.get("trace"):
            _trace_failpoints(request["trace"])
        from camim.cli import main

        sys.argv = ["camim", *request["argv"]]
        code = main(request["argv"])
        for hook in _at_exit:
            hook()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - shown in the child's stderr file, as python -m camim would
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _wait(pid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                return {"state": "killed", "signal": os.WTERMSIG(status)}
            return {"state": "exited", "rc": os.WEXITSTATUS(status)}
        if time.monotonic() >= deadline:
            return {"state": "running"}
        time.sleep(0.005)


def serve() -> None:
    warm_imports()
    reply = sys.stdout
    print(json.dumps({"ready": os.getpid()}), file=reply, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "exit":
            break
        if request["op"] == "spawn":
            reply.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)
            answer = {"pid": pid}
        elif request["op"] == "wait":
            answer = _wait(request["pid"], float(request["timeout"]))
        else:
            answer = {"error": f"unknown op {request['op']!r}"}
        print(json.dumps(answer), file=reply, flush=True)


def traced(path: str, argv: list[str]) -> int:
    """``camim argv`` in this process, counting its failpoints into ``path`` (a reference run under --exec)."""
    _trace_failpoints(path)
    from camim.cli import main

    code = main(argv)
    for hook in _at_exit:
        hook()
    return code


if __name__ == "__main__":
    if sys.argv[1:2] == ["--trace"]:
        sys.exit(traced(sys.argv[2], sys.argv[3:]))
    serve()
