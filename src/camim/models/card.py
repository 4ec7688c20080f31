"""The model card (``README.md``) that ``save_pretrained`` writes beside the weights.

It follows the Hugging Face model-card format: YAML front matter (``library_name``, ``tags``, ``datasets``,
``metrics`` and, when the model has test scores, a ``model-index`` with them) and a markdown body saying
what the model is, which modalities it reads, its labels, its test metrics beside the paper's row (when its
preset is a row of the paper), the preset and resolved config of its run, and how to load and run it. A
folder with this card is ready for ``huggingface_hub.upload_folder`` (``camim push``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from camim.data.descriptions import relation_descriptions
from camim.io import atomic_write_text
from camim.models.config import ModelConfig
from camim.models.registry import model_class
from camim.runs import SCORE_KEYS, format_score

_SCORE_NAMES = {
    "accuracy": "accuracy",
    "precision": "micro precision",
    "recall": "micro recall",
    "f1": "micro-F1",
}
_MODALITY_TEXT = {
    "caption": "an MLLM caption of the image (§3.1.2)",
    "image": "the post's image",
    "objects": "object crops of the image (visual grounding)",
    "generated_image": "an image generated from the text (TMR's back-translation image)",
    "generated_objects": "object boxes on the generated image",
    "scores": "TMR's text-image correlation scores",
    "phrase": "grounding phrases of the post",
}
_PAPER = "CAMIM: Caption-Aware Multimodal Relation Extraction with Mutual Information Maximization (Zhang et al., ACM MM 2024)"


@dataclass
class CardRun:
    """What a training run adds to the card: the resolved run config, its metrics (``{"val": scores,
    "test": scores}``, percent), and the paper's row for comparison (``{"row": name, "source": where,
    "accuracy", "precision", "recall", "f1"}``) when the preset is one of the paper's rows."""

    config: dict
    metrics: dict = field(default_factory=dict)
    paper: dict | None = None

    @classmethod
    def of_run(
        cls, config: Mapping[str, Any], results: Mapping[str, Any], paper_results: Mapping[str, Any]
    ) -> CardRun:
        """The card part of a run from its resolved ``config`` (a dict) and its ``results`` (``metrics.json``
        or ``{"val": ..., "test": ...}``: the four scores of each split are kept, per-relation details and
        unscored splits dropped), with the paper's row (:func:`paper_row`) from ``paper_results``."""
        scores = {}
        for split in ("val", "test"):
            result = results.get(split) or {}
            kept = {k: result[k] for k in SCORE_KEYS if k in result}
            if kept:
                scores[split] = kept
        return cls(dict(config), scores, paper_row(config, paper_results))


def paper_row(config: Mapping[str, Any], paper_results: Mapping[str, Any]) -> dict | None:
    """The paper's scores for the preset of ``config`` (its ``name``) read with its caption source: the
    Table 2 entry when the paper ran that preset with that source, else the preset's Table 1 row, else
    ``None`` (custom or offline presets)."""
    name = config.get("name")
    source = (config.get("data") or {}).get("caption_source")
    source = "qwenvl" if source == "caption" else source  # the data layer's two names of QWenVL-Plus captions
    entry = (paper_results.get("table2") or {}).get(source) or {}
    if isinstance(entry.get(name), dict):
        row = {k: entry[name].get(k) for k in SCORE_KEYS}
        return {"row": f"{name} with {entry.get('mllm', source)} captions", "source": "Table 2", **row}
    entry = (paper_results.get("table1") or {}).get(name)
    if isinstance(entry, dict):
        return {"row": entry.get("row", name), "source": "Table 1", **{k: entry.get(k) for k in SCORE_KEYS}}
    return None


def _describe(config: ModelConfig) -> str:
    """What the model is: its extractor's ``summary`` and the switches its ``capabilities`` give effect."""
    parts = [model_class(config.name).summary or config.name]
    if config.uses_cam:
        parts.append(f"with the Caption-Aware Module (CAM, level `{config.cam}`, §3.2)")
    if config.uses_mi:
        parts.append(
            f"trained with the mutual-information loss (InfoNCE on `{config.mi_pair}`, "
            f"alpha {config.mi_alpha}, §3.4.2)"
        )
    if config.visual_mode == "text-caption" and "text-caption" in config.capabilities.visual_modes:
        parts.append("in text-caption mode (text and captions only, no images)")
    return ", ".join(parts)


def _front_matter(config: ModelConfig, run: CardRun | None) -> str:
    name = config.name
    tags = ["camim", "relation-extraction", "multimodal-relation-extraction", "mnre", name]
    if config.uses_cam:
        tags.append("caption-aware")
    if config.uses_mi:
        tags.append("mutual-information")
    meta: dict[str, Any] = {
        "library_name": "camim",
        "language": ["en"],
        "tags": list(dict.fromkeys(tags)),
        "datasets": ["mnre"],
        "metrics": ["accuracy", "precision", "recall", "f1"],
    }
    test = (run.metrics.get("test") if run else None) or {}
    if any(test.get(k) is not None for k in SCORE_KEYS):
        preset = run.config.get("name") or name
        meta["model-index"] = [
            {
                "name": preset,
                "results": [
                    {
                        "task": {"type": "relation-extraction", "name": "Multimodal relation extraction"},
                        "dataset": {"type": "mnre", "name": "MNRE", "split": "test"},
                        "metrics": [
                            {"type": k, "value": round(float(test[k]), 2), "name": f"test {_SCORE_NAMES[k]}"}
                            for k in SCORE_KEYS
                            if test.get(k) is not None
                        ],
                    }
                ],
            }
        ]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def model_card(
    model_config: Mapping[str, Any],
    labels: Sequence[str],
    modalities: set[str] | Sequence[str],
    run: CardRun | None = None,
    model_id: str = "path/to/this/folder",
) -> str:
    """The card text. ``model_config`` is the model's ``config.json`` content (without labels),
    ``modalities`` its ``required_modalities``, ``model_id`` what the usage example loads (the folder, or
    the hub repo id once pushed)."""
    config = ModelConfig.from_dict(dict(model_config))
    run_cfg = run.config if run else {}
    preset = run_cfg.get("name")
    title = f"camim `{preset}`" if preset else f"camim `{config.name}` relation extractor"
    lines = [_front_matter(config, run), f"# {title}", ""]
    if run_cfg.get("description"):
        lines += [f"{run_cfg['description']}.".replace("..", "."), ""]
    lines += [
        f"A relation extractor for MNRE-style social-media posts: given a post, two entity mentions in it (head "
        f"and tail) and the inputs listed below, it predicts their relation among {len(labels)} labels. "
        f"It is {_describe(config)}, built and trained with "
        f"camim, a toolkit that implements *{_PAPER}*.",
        "",
        *_inputs_section(modalities),
        *_results_section(run),
        *_labels_section(labels),
        *_usage_section(modalities, model_id),
    ]
    if run_cfg:
        lines += [
            "## Training configuration",
            "",
            f"Preset `{preset}`"
            + (f" (paper row: {run_cfg['paper_row']})" if run_cfg.get("paper_row") else "")
            + "; the full resolved configuration of the run (`camim train --config FILE` reruns it):",
            "",
            *_yaml_block(run_cfg),
        ]
    lines += ["## Model configuration", "", *_yaml_block(dict(model_config))]
    lines += ["## Citation", "", f"{_PAPER}. Authors' code: https://github.com/zefanZhang-cn/CAMIM.", ""]
    return "\n".join(lines)


def _yaml_block(mapping: Mapping[str, Any]) -> list[str]:
    return ["```yaml", yaml.safe_dump(dict(mapping), sort_keys=False, allow_unicode=True).rstrip(), "```", ""]


def _inputs_section(modalities: set[str] | Sequence[str]) -> list[str]:
    lines = ["## Inputs", "", "- the post text with the head and tail entity marked (always)"]
    lines += [f"- {_MODALITY_TEXT.get(m, m)} (`{m}`)" for m in sorted(modalities)]
    if not modalities:
        lines.append("- nothing else: the model reads text only")
    elif "caption" in modalities:
        lines += [
            "",
            "A missing caption is generated when the predictor has a captioner, otherwise the model runs in its "
            "documented no-caption mode and the result says so.",
        ]
    return [*lines, ""]


def _results_section(run: CardRun | None) -> list[str]:
    """The run's test (and val) scores beside the paper's row, or a line saying there are none."""
    test = (run.metrics.get("test") if run else None) or {}
    if not test:
        return [
            "## Results",
            "",
            "No evaluation was recorded with this model (it was saved outside `camim train`).",
            "",
        ]

    def row(name: str, scores: Mapping[str, Any]) -> str:
        return f"| {name} | " + " | ".join(format_score(scores.get(k)) for k in SCORE_KEYS) + " |"

    lines = [
        "## Results",
        "",
        f"| | {' | '.join(_SCORE_NAMES[k] for k in SCORE_KEYS)} |",
        "|---|---|---|---|---|",
    ]
    lines.append(row("this model, test", test))
    if run.metrics.get("val"):
        lines.append(row("this model, val", run.metrics["val"]))
    if run.paper:
        lines.append(row(f"paper ({run.paper.get('source')}: {run.paper.get('row')})", run.paper))
    lines += [
        "",
        "Percent. Micro precision, recall and F1 exclude the negative label (`None`), as MNRE is scored; "
        "accuracy counts every sample. Scores are of the checkpoint selected by dev micro-F1, on the run's "
        "own test split.",
    ]
    if not run.paper:
        lines += [
            "",
            "This preset is not a row of the paper; its numbers are not comparable with the paper's.",
        ]
    return [*lines, ""]


def _labels_section(labels: Sequence[str]) -> list[str]:
    descriptions = relation_descriptions(labels) or {}
    lines = ["## Labels", "", "| id | label | meaning |", "|---|---|---|"]
    lines += [f"| {i} | `{name}` | {descriptions.get(name, '')} |" for i, name in enumerate(labels)]
    return [*lines, ""]


def _usage_section(modalities: set[str] | Sequence[str], model_id: str) -> list[str]:
    caption_arg = "    caption=None,  # the image's caption; None: a configured captioner writes it, else no-caption mode"
    return [
        "## How to use",
        "",
        "```bash",
        "pip install camim",
        "```",
        "",
        "```python",
        "from camim.inference import Predictor",
        "",
        f'predictor = Predictor.from_pretrained("{model_id}")  # a local folder or a Hugging Face Hub id',
        "result = predictor.predict(",
        '    "Tennis star Rafael Nadal gets engaged to Mery Perello",',
        '    head="Rafael Nadal",',
        '    tail="Mery Perello",',
        *(['    image="post.jpg",'] if "image" in modalities else []),
        *([caption_arg] if "caption" in modalities else []),
        ")",
        "print(result.relation, result.probability, result.notes)",
        "```",
        "",
        "From the command line (JSONL posts in, JSONL predictions out):",
        "",
        "```bash",
        f"camim predict --model {model_id} --input posts.jsonl --output predictions.jsonl",
        "```",
        "",
        "The weights are `model.safetensors`; `config.json` holds the model configuration and the labels, "
        "`encoders/` the backbone configurations, and the tokenizer files sit beside them "
        "(`camim.models.load_model(folder)` rebuilds the `torch.nn.Module` offline).",
        "",
    ]


def write_model_card(
    directory: str | Path,
    model_config: Mapping[str, Any],
    labels: Sequence[str],
    modalities: set[str] | Sequence[str],
    run: CardRun | None = None,
    model_id: str | None = None,
) -> Path:
    """Write ``README.md`` (the card) into ``directory``; ``model_id`` defaults to the folder's path."""
    text = model_card(model_config, labels, modalities, run, model_id or str(directory))
    return atomic_write_text(Path(directory) / "README.md", text)


def read_front_matter(text: str) -> dict:
    """The YAML front matter of a card (``{}`` when it has none)."""
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---\n", 4)
    if end < 0:
        return {}
    data = yaml.safe_load(text[4 : end + 1])
    return data if isinstance(data, dict) else {}
