"""The seven commands of the SIGKILL harness (:mod:`tests.faults.harness`), each on tiny inputs: the training
tests' MNRE folder and TINY encoders (train, pretrain, predict), the speed tests' drawn world (cache-images),
drawn images and the loopback chat server (caption, zero-shot), the preprocessing tests' tiny OWL-ViT
(prepare objects). :func:`build` lays the inputs out once under a root folder; each scenario then says how a
fresh work folder starts, the command line, what its outputs are (normalised: the time a record was made, the
order a concurrent writer finished in, and the counts of what was resumed are left out) and what must hold.
"""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack
from pathlib import Path

from tests.faults.harness import (
    Launcher,
    Scenario,
    jsonl_lines,
    keyed_records,
    sha256,
    stray_temporaries,
)

COMMANDS = ("train", "pretrain", "cache-images", "caption", "zero-shot", "predict", "prepare")

TRAIN_SETTINGS = ["optim.epochs=4", "data.train_limit=24", "data.eval_limit=8"]
# the compact BERT of TINY (its offline.* keys), as pretraining settings
PRETRAIN_SETTINGS = ["epochs=3", "batch_size=8", "train_limit=24", "progress_bar=false", "max_length=32"]
CAPTION_IMAGES = 24
PREPARE_SAMPLES = 8
SERVER_DELAY = 0.02  # seconds per chat request: a run long enough to be killed inside


def _sets(settings: list[str]) -> list[str]:
    return [x for s in settings for x in ("--set", s)]


# ------------------------------------------------------------------------------------------ train
def train(inputs: Path) -> Scenario:
    from tests.training.conftest import TINY

    def argv(work: Path) -> list[str]:
        return [
            "train",
            "--config",
            "offline-tmr-cam-mi",
            "--data-dir",
            str(inputs / "mnre"),
            "--output",
            str(work / "run"),
            *_sets([*TINY, *TRAIN_SETTINGS]),
        ]

    def outputs(work: Path) -> dict:
        run = work / "run"
        metrics = json.loads((run / "metrics.json").read_text())
        return {
            "metrics.json": {
                k: metrics[k] for k in ("val", "test", "best_epoch", "best_checkpoint", "global_step")
            },
            "predictions.jsonl": jsonl_lines(run / "predictions.jsonl")[0],
            "model/model.safetensors": sha256(run / "model" / "model.safetensors"),
            "model/config.json": (run / "model" / "config.json").read_text(),
            "config.yaml": (run / "config.yaml").read_text(),
            "checkpoints/": sorted(p.name for p in (run / "checkpoints").iterdir()),
        }

    def problems(work: Path) -> list[str]:
        return jsonl_lines(work / "run" / "predictions.jsonl")[1] + stray_temporaries(work)

    return Scenario("train", lambda work: None, argv, outputs, problems)


# ------------------------------------------------------------------------------------------ pretrain
def pretrain(inputs: Path) -> Scenario:
    from tests.training.conftest import TINY

    def argv(work: Path) -> list[str]:
        return [
            "pretrain",
            "--data-dir",
            str(inputs / "mnre"),
            "--output",
            str(work / "enc"),
            "--from-scratch",
            *_sets([*(o for o in TINY if o.startswith("offline.")), *PRETRAIN_SETTINGS]),
        ]

    def outputs(work: Path) -> dict:
        enc = work / "enc"
        card = json.loads((enc / "camim_pretrain.json").read_text())
        card.pop("seconds_this_session")
        return {
            "camim_pretrain.json": card,
            "model.safetensors": sha256(enc / "model.safetensors"),
            **{
                name: (enc / name).read_text()
                for name in ("config.json", "tokenizer.json", "camim_offline.json")
            },
            "files": sorted(p.name for p in enc.iterdir()),
        }

    return Scenario("pretrain", lambda work: None, argv, outputs, stray_temporaries)


# ------------------------------------------------------------------------------------------ cache-images
def cache_images(inputs: Path) -> Scenario:
    def argv(work: Path) -> list[str]:
        return [
            "cache-images",
            str(inputs / "world"),
            "--output",
            str(work / "cache"),
            "--splits",
            "train",
            "--image-size",
            "32",
        ]

    def outputs(work: Path) -> dict:
        folder = work / "cache" / "train"
        return {
            "pixels.u8": sha256(folder / "pixels.u8"),
            "index.json": json.loads((folder / "index.json").read_text()),
        }

    def problems(work: Path) -> list[str]:
        from camim.speed.image_cache import ImageCache

        cache = ImageCache(work / "cache" / "train")
        return (
            cache.verify()
            + ([] if cache.complete else ["the cache is not complete"])
            + stray_temporaries(work)
        )

    return Scenario("cache-images", lambda work: None, argv, outputs, problems)


# ------------------------------------------------------------------------------------------ caption
def caption(inputs: Path, base_url: str) -> Scenario:
    def argv(work: Path) -> list[str]:
        return [
            "caption",
            "--images",
            str(inputs / "images"),
            "--backend",
            "openai",
            "--base-url",
            base_url,
            "--model",
            "fake-vlm",
            "--output",
            str(work / "captions.jsonl"),
            "--concurrency",
            "2",
            "--no-progress",
        ]

    def records(work: Path) -> tuple[list, list[str]]:
        return keyed_records(work / "captions.jsonl", lambda r: [r["img_id"], r["model"], r["prompt_hash"]])

    def problems(work: Path) -> list[str]:
        from camim.data.captions import read_captions

        found, issues = records(work)
        if len(found) != CAPTION_IMAGES:
            issues.append(f"{len(found)} captions for {CAPTION_IMAGES} images")
        try:
            read_captions(work / "captions.jsonl")  # as training reads it: strictly
        except Exception as exc:  # noqa: BLE001 - reported as the trial's problem
            issues.append(f"the data layer refuses the file: {exc}")
        return issues + stray_temporaries(work)

    return Scenario(
        "caption", lambda work: None, argv, lambda work: {"captions.jsonl": records(work)[0]}, problems
    )


# ------------------------------------------------------------------------------------------ zero-shot
def zero_shot(inputs: Path, base_url: str) -> Scenario:
    def argv(work: Path) -> list[str]:
        return [
            "zero-shot",
            "--data-dir",
            str(inputs / "zs"),
            "--split",
            "test",
            "--output",
            str(work / "zs"),
            "--backend",
            "openai",
            "--base-url",
            base_url,
            "--model",
            "fake-vlm",
            "--concurrency",
            "2",
            "--no-progress",
        ]

    def answers(work: Path) -> tuple[list, list[str]]:
        return keyed_records(
            work / "zs" / "answers.jsonl", lambda r: [r["img_id"], r["model"], r["prompt_hash"]]
        )

    def outputs(work: Path) -> dict:
        run = work / "zs"
        metrics = json.loads((run / "metrics.json").read_text())
        return {
            "metrics.json": {k: metrics[k] for k in ("test", "answers", "num_samples", "complete")},
            "predictions.jsonl": jsonl_lines(run / "predictions.jsonl")[0],
            "config.yaml": (run / "config.yaml").read_text(),
            "answers.jsonl": answers(work)[0],
        }

    def problems(work: Path) -> list[str]:
        return answers(work)[1] + jsonl_lines(work / "zs" / "predictions.jsonl")[1] + stray_temporaries(work)

    return Scenario("zero-shot", lambda work: None, argv, outputs, problems)


# ------------------------------------------------------------------------------------------ predict
def predict(inputs: Path) -> Scenario:
    def argv(work: Path) -> list[str]:
        return [
            "predict",
            "--model",
            str(inputs / "model_run"),
            "--input",
            str(inputs / "mnre" / "txt" / "ours_test.txt"),
            "--output",
            str(work / "predictions.jsonl"),
            "--batch-size",
            "2",
        ]

    def problems(work: Path) -> list[str]:
        rows, issues = jsonl_lines(work / "predictions.jsonl")
        lines = [r.get("line") for r in rows]
        if len(set(lines)) != len(lines):
            issues.append("predictions.jsonl: an input line predicted twice")
        if any("error" in r for r in rows):
            issues.append("predictions.jsonl: a line failed")
        return issues + stray_temporaries(work)

    return Scenario(
        "predict",
        lambda work: None,
        argv,
        lambda work: {"predictions.jsonl": jsonl_lines(work / "predictions.jsonl")[0]},
        problems,
    )


# ------------------------------------------------------------------------------------------ prepare
def prepare(inputs: Path) -> Scenario:
    def setup(work: Path) -> None:
        shutil.copytree(inputs / "prepare", work / "data")

    def argv(work: Path) -> list[str]:
        return [
            "prepare",
            "objects",
            "--data-dir",
            str(work / "data"),
            "--split",
            "train",
            "--model",
            str(inputs / "owlvit"),
            "--threshold",
            "0",
            "--max-objects",
            "2",
            "--images",
            "original",
            "--device",
            "cpu",
            "--no-progress",
        ]

    def outputs(work: Path) -> dict:
        data = work / "data"
        return {
            "mre_train_dict.json": json.loads((data / "txt" / "mre_train_dict.json").read_text()),
            "phrase_text_train.json": json.loads((data / "txt" / "phrase_text_train.json").read_text()),
            "crops": {p.name: sha256(p) for p in sorted((data / "img_vg" / "train" / "crops").iterdir())},
            "progress": jsonl_lines(data / "progress" / "objects_train.jsonl")[0],
        }

    def problems(work: Path) -> list[str]:
        return jsonl_lines(work / "data" / "progress" / "objects_train.jsonl")[1] + stray_temporaries(work)

    return Scenario("prepare", setup, argv, outputs, problems)


# ------------------------------------------------------------------------------------------ inputs
def build(
    root: Path, launcher: Launcher, stack: ExitStack, names: list[str] | None = None
) -> dict[str, Scenario]:
    """The scenarios ``names`` (default: all), their inputs written under ``root`` (once: a folder that exists
    is reused) and their chat servers started in ``stack``."""
    from camim.captioning.testing import FakeChatServer

    names = list(names or COMMANDS)
    root.mkdir(parents=True, exist_ok=True)
    _inputs(root, names, launcher)
    built = {}
    for name in names:
        if name == "caption":
            server = stack.enter_context(_quiet(FakeChatServer(delay=SERVER_DELAY)))
            built[name] = caption(root, server.base_url)
        elif name == "zero-shot":
            from tests.zeroshot.conftest import examples, gold_script

            script = gold_script(examples(root / "zs"))
            server = stack.enter_context(_quiet(FakeChatServer(delay=SERVER_DELAY, script=script)))
            built[name] = zero_shot(root, server.base_url)
        else:
            built[name] = {
                "train": train,
                "pretrain": pretrain,
                "cache-images": cache_images,
                "predict": predict,
                "prepare": prepare,
            }[name](root)
    return built


def _quiet(server):
    """The server without the traceback http.server prints for each connection a killed client cut."""
    server._server.handle_error = lambda request, address: None
    return server


def _inputs(root: Path, names: list[str], launcher: Launcher) -> None:
    from tests.training.conftest import write_tiny_mnre

    if {"train", "pretrain", "predict"} & set(names) and not (root / "mnre").exists():
        write_tiny_mnre(root / "mnre")
    if "predict" in names and not (root / "model_run" / "metrics.json").exists():
        _train_model(root, launcher)
    if "cache-images" in names and not (root / "world").exists():
        from camim.synthetic import WorldConfig, generate_world

        generate_world(root / "world", WorldConfig(train=60, val=1, test=1, image_size=64, generated_size=48))
    if "caption" in names and not (root / "images").exists():
        from tests.captioning.conftest import draw_images

        draw_images(root / "images", CAPTION_IMAGES)
    if "zero-shot" in names and not (root / "zs").exists():
        from tests.zeroshot.conftest import write_images

        write_tiny_mnre(root / "zs", n_train=48, n_eval=16)
        write_images(root / "zs", "test", [f"test_{i}.jpg" for i in range(12)])
        (root / "zs" / "img_org" / "test" / "test_3.jpg").write_bytes(b"not a jpeg")  # sent text-only
    if "prepare" in names and not (root / "prepare").exists():
        _prepare_inputs(root)


def _train_model(root: Path, launcher: Launcher) -> None:
    """The model ``camim predict`` loads: the train scenario's run, uninterrupted."""
    scenario = train(root)
    work = root / "model_train"
    work.mkdir(exist_ok=True)
    outcome = launcher.run(scenario.argv(work), work)
    if outcome.state != "exited" or outcome.rc != 0:
        raise RuntimeError(f"training the model for predict failed: {outcome.stderr[-2000:]}")
    shutil.rmtree(root / "model_run", ignore_errors=True)
    (work / "run").rename(root / "model_run")


def _prepare_inputs(root: Path) -> None:
    """The preprocessing tests' data folder with ``PREPARE_SAMPLES`` samples on as many drawn images, and
    their tiny OWL-ViT."""
    from tests.preprocess.conftest import SAMPLES, _owl, draw

    data = root / "prepare"
    (data / "txt").mkdir(parents=True)
    (data / "img_org" / "train").mkdir(parents=True)
    lines = []
    for i in range(PREPARE_SAMPLES):
        sample = {**SAMPLES[i % len(SAMPLES)], "img_id": f"{i}.jpg"}
        lines.append(repr(sample))
        draw(i).save(data / "img_org" / "train" / f"{i}.jpg")
    (data / "txt" / "ours_train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "owlvit").mkdir()
    _owl(root / "owlvit", 1)
