"""``camim push MODEL REPO_ID``: publish a saved model folder on the Hugging Face Hub.

MODEL is a ``camim train`` run folder or its ``model/`` folder (anything ``model.save_pretrained`` wrote).
Before uploading, the model is loaded (a folder that does not load is refused) and its card ``README.md`` is
written again with ``REPO_ID`` in the usage example and, for a run folder, the run's ``config.yaml`` and
``metrics.json`` (``--keep-card`` uploads the card as it is). Then ``HfApi.create_repo(exist_ok=True)`` and
``HfApi.upload_folder`` upload the folder in one commit. The token is ``--token``, else ``$HF_TOKEN`` or the
one saved by ``hf auth login`` (huggingface_hub's own lookup).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from camim.errors import CamimError, first_line
from camim.runs import RunFolder


@dataclass
class PushResult:
    """Where the model went: the repo URL and the commit that holds it."""

    repo_id: str
    folder: Path
    repo_url: str
    commit_url: str | None


def _run_card(model_dir: Path):
    """The :class:`~camim.models.card.CardRun` of the run folder around ``model_dir`` (None without one)."""
    from camim.models.card import CardRun
    from camim.training.config import load_paper_results

    folder = RunFolder(model_dir.parent)
    config = folder.read_config()
    if config is None:
        return None
    # a metrics.json that is there but unreadable is an error here (its one line), not an unfinished run:
    # the card would publish a run without its scores
    metrics = folder.read_metrics() if folder.metrics_path.is_file() else {}
    return CardRun.of_run(config, metrics, load_paper_results())


def prepare_folder(model: str | Path, repo_id: str, keep_card: bool = False) -> Path:
    """The model folder of ``model``, checked by loading it, with its card rewritten for ``repo_id``."""
    from camim.inference.predictor import resolve_model_dir
    from camim.models import load_model
    from camim.models.card import write_model_card

    model_dir = resolve_model_dir(model)
    if model_dir is None:
        raise CamimError(
            f"{model}: no config.json here or in {Path(model) / 'model'}; not a saved camim model"
        )
    loaded = load_model(model_dir)  # refuse to publish a folder that does not load
    if not keep_card or not (model_dir / "README.md").is_file():
        write_model_card(
            model_dir,
            loaded.config.to_dict(),
            loaded.labels,
            loaded.required_modalities,
            _run_card(model_dir),
            model_id=repo_id,
        )
    return model_dir


def push_model(
    model: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    keep_card: bool = False,
) -> PushResult:
    """Upload a saved model folder (see the module docstring) to the model repo ``repo_id``."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise CamimError(f"repo id {repo_id!r} must be of the form OWNER/NAME")
    folder = prepare_folder(model, repo_id, keep_card=keep_card)
    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"Upload {folder.name} with camim push",
            ignore_patterns=[".*", "**/.*", "*.tmp"],
        )
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise CamimError(f"push to {repo_id} failed: {first_line(exc)}") from None
    return PushResult(repo_id, folder, str(repo_url), getattr(commit, "commit_url", None))


def register(subparsers) -> None:
    """Add ``camim push`` to the command line."""
    p = subparsers.add_parser(
        "push",
        help="upload a saved model (with its model card) to the Hugging Face Hub",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="a camim train run folder or its model/ folder")
    p.add_argument("repo_id", help="OWNER/NAME of the model repo (created when missing)")
    p.add_argument("--token", help="Hub token (default: $HF_TOKEN or the saved login)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to commit to (default: main)")
    p.add_argument("--message", help="commit message")
    p.add_argument("--keep-card", action="store_true", help="upload README.md as it is (no rewrite)")
    p.set_defaults(func=cmd_push)


def cmd_push(args: argparse.Namespace) -> int:
    result = push_model(
        args.model,
        args.repo_id,
        token=args.token,
        private=args.private,
        revision=args.revision,
        commit_message=args.message,
        keep_card=args.keep_card,
    )
    print(
        f"pushed {result.folder} to {result.repo_url}"
        + (f" ({result.commit_url})" if result.commit_url else "")
    )
    return 0
