"""``camim push``: the model card a training run leaves, and the upload (HfApi.create_repo / upload_folder
replaced by fakes that bind the real signatures, copy what they are given into a local "remote" folder, and
that the predictor then downloads from)."""

from __future__ import annotations

import fnmatch
import inspect
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import HfApi, RepoUrl
from tests.training.conftest import TINY, write_tiny_mnre

from camim.cli import main
from camim.models.card import read_front_matter
from camim.training.api import train_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = write_tiny_mnre(tmp_path_factory.mktemp("data"))
    # named after the paper's BERT row so that the card carries a paper row (the lookup is by preset name)
    return train_run("offline-bert", data, tmp_path_factory.mktemp("run"), overrides=[*TINY, "name=bert"])


CREATE_REPO = inspect.signature(HfApi.create_repo)  # the real signatures, taken before any patching
UPLOAD_FOLDER = inspect.signature(HfApi.upload_folder)


class FakeHub:
    """Records the calls; ``upload_folder`` copies the folder (minus ignored files) into ``remote``."""

    def __init__(self, remote: Path, fail_with: Exception | None = None):
        self.remote, self.fail_with, self.calls = remote, fail_with, []

    def install(self, monkeypatch) -> None:
        hub = self

        def create_repo(api, *args, **kwargs):
            bound = CREATE_REPO.bind(api, *args, **kwargs)  # a wrong argument fails
            hub.calls.append(("create_repo", dict(bound.arguments), api.token))
            return RepoUrl(f"https://huggingface.co/{bound.arguments['repo_id']}")

        def upload_folder(api, *args, **kwargs):
            arguments = dict(UPLOAD_FOLDER.bind(api, *args, **kwargs).arguments)
            hub.calls.append(("upload_folder", arguments, api.token))
            if hub.fail_with is not None:
                raise hub.fail_with
            folder = Path(arguments["folder_path"])
            ignore = arguments.get("ignore_patterns") or []
            for path in folder.rglob("*"):
                rel = path.relative_to(folder).as_posix()
                if path.is_file() and not any(fnmatch.fnmatch(rel, p) for p in ignore):
                    (hub.remote / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, hub.remote / rel)
            url = f"https://huggingface.co/{arguments['repo_id']}/commit/0123abc"
            return SimpleNamespace(commit_url=url)

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def test_a_training_run_saves_a_model_card(run):
    text = (run.model_dir / "README.md").read_text()
    meta = read_front_matter(text)
    test = json.loads((run.output_dir / "metrics.json").read_text())["test"]
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {k: round(test[k], 2) for k in ("accuracy", "precision", "recall", "f1")}
    assert "| paper (Table 1: BERT (2019)) | 74.42 | 58.58 | 60.25 | 59.40 |" in text
    assert "vocab_size: 300" in text  # the resolved config of the run (offline.vocab_size from TINY)


def test_push_uploads_the_loaded_folder_with_a_card_for_the_repo(run, monkeypatch, tmp_path, capsys):
    hub = FakeHub(tmp_path / "remote")
    hub.install(monkeypatch)
    (run.model_dir / "model.safetensors.tmp").write_text("left over")  # not uploaded
    assert main(["push", str(run.output_dir), "me/tiny-bert", "--token", "hf_test", "--private"]) == 0
    assert "pushed" in capsys.readouterr().out
    (create, created, token1), (upload, uploaded, token2) = hub.calls
    assert (create, upload, token1, token2) == ("create_repo", "upload_folder", "hf_test", "hf_test")
    assert created["repo_id"] == "me/tiny-bert" and created["private"] is True and created["exist_ok"] is True
    assert Path(uploaded["folder_path"]) == run.model_dir and uploaded["repo_type"] == "model"
    remote = hub.remote
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in remote.iterdir()
    }
    assert not (remote / "model.safetensors.tmp").exists()
    card = (remote / "README.md").read_text()
    assert 'Predictor.from_pretrained("me/tiny-bert")' in card  # rewritten for the repo
    assert read_front_matter(card)["model-index"][0]["name"] == "bert"

    # what was uploaded loads through the hub path of Predictor.from_pretrained and predicts as the original
    import huggingface_hub

    from camim.inference import Predictor

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, revision=None: str(remote))
    post = ("Anna married Bob today", "Anna", "Bob")
    hub_result = Predictor.from_pretrained("me/tiny-bert").predict(*post)
    local_result = Predictor.from_pretrained(run.output_dir).predict(*post)
    assert hub_result.relation == local_result.relation
    assert hub_result.probability == pytest.approx(local_result.probability, abs=1e-6)


def test_push_failures_are_one_line_errors(run, monkeypatch, tmp_path, capsys):
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    url = "https://huggingface.co/api/models/me/x/commit/main"
    denied = HfHubHTTPError(
        f"401 Client Error: Unauthorized for url: {url}\nInvalid username or password.",
        response=httpx.Response(401, request=httpx.Request("POST", url)),
    )
    hub = FakeHub(tmp_path / "remote", fail_with=denied)
    hub.install(monkeypatch)
    assert main(["push", str(run.model_dir), "me/x", "--keep-card"]) == 1
    err = capsys.readouterr().err
    assert err == f"camim: error: push to me/x failed: 401 Client Error: Unauthorized for url: {url}\n"

    hub.calls.clear()
    assert main(["push", str(tmp_path), "me/x"]) == 1
    assert "not a saved camim model" in capsys.readouterr().err
    assert main(["push", str(run.model_dir), "not-a-repo-id"]) == 1
    assert "must be of the form OWNER/NAME" in capsys.readouterr().err
    assert hub.calls == []  # nothing was sent for a folder or id that is not valid


def test_a_push_failure_with_an_empty_message_names_its_type(run, monkeypatch, tmp_path, capsys):
    FakeHub(tmp_path / "remote", fail_with=OSError()).install(monkeypatch)
    assert main(["push", str(run.model_dir), "me/x", "--keep-card"]) == 1
    assert capsys.readouterr().err == "camim: error: push to me/x failed: OSError\n"


def test_keep_card_uploads_the_card_as_it_is(run, monkeypatch, tmp_path):
    hub = FakeHub(tmp_path / "remote")
    hub.install(monkeypatch)
    card = run.model_dir / "README.md"
    card.write_text("---\nlibrary_name: camim\n---\n# my own words\n")
    assert main(["push", str(run.model_dir), "me/y", "--keep-card"]) == 0
    assert (hub.remote / "README.md").read_text() == card.read_text()


def test_a_run_folder_with_bad_metrics_or_config_is_a_one_line_error(run, monkeypatch, tmp_path, capsys):
    hub = FakeHub(tmp_path / "remote")
    hub.install(monkeypatch)
    copy = tmp_path / "run"
    shutil.copytree(run.output_dir, copy)
    (copy / "metrics.json").write_text("[]\n")
    assert main(["push", str(copy), "me/z"]) == 1
    assert "metrics.json: not a run's metrics (expected a JSON object)" in capsys.readouterr().err
    (copy / "metrics.json").write_text('{"test": \n')
    assert main(["push", str(copy), "me/z"]) == 1
    assert "metrics.json:2: not valid JSON" in capsys.readouterr().err
    shutil.copy2(run.output_dir / "metrics.json", copy / "metrics.json")
    (copy / "config.yaml").write_text("name: bert\nmodel: [\n")
    assert main(["push", str(copy), "me/z"]) == 1
    assert "config.yaml:3: invalid YAML" in capsys.readouterr().err
    assert hub.calls == []
