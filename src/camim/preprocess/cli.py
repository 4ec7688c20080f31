"""``camim prepare objects|translate|scores``: make the visual inputs of new data (see docs/preprocess.md)."""

from __future__ import annotations

import argparse

from camim.preprocess.common import PrepareReport

STEPS_HELP = "Run in this order for new data: translate, objects, scores. Each step resumes where it stopped."


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True, help="the MNRE-layout data folder (txt/, img_org/, ...)")
    p.add_argument(
        "--split", nargs="+", default=["train", "val", "test"], help="split name(s) (default: all three)"
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--overwrite", action="store_true", help="redo items that are already done")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise", help="bad sample lines")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _on_missing(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--on-missing",
        choices=["raise", "fallback"],
        default="raise",
        help="missing or unreadable image: stop with an error (default) or use the documented fallback and count it",
    )


def register(subparsers) -> None:
    """Add ``camim prepare`` and its three sub-commands."""
    prepare = subparsers.add_parser(
        "prepare",
        help="make object crops, translation images and correlation scores for new data",
        description=STEPS_HELP,
    )
    steps = prepare.add_subparsers(dest="prepare_step", metavar="STEP")
    prepare.set_defaults(func=lambda args: (prepare.print_help(), 2)[1])

    p = steps.add_parser(
        "objects", help="open-vocabulary object crops/boxes of the original and generated images"
    )
    _common(p)
    _on_missing(p)
    p.add_argument(
        "--model",
        default=None,
        help="detector hub id or folder (default: google/owlv2-base-patch16-ensemble)",
    )
    p.add_argument("--threshold", type=float, default=0.1, help="minimum detection score (default 0.1)")
    p.add_argument("--max-objects", type=int, default=3, help="m, boxes kept per image (default 3)")
    p.add_argument("--nms-iou", type=float, default=0.5, help="IoU above which a weaker box is dropped")
    p.add_argument(
        "--images",
        choices=["original", "generated", "both"],
        default="both",
        help="which images (default both)",
    )
    p.add_argument(
        "--no-phrases", action="store_true", help="do not write phrase_text_{split}.json when absent"
    )
    p.set_defaults(func=_run_objects)

    p = steps.add_parser(
        "translate", help="TMR's back-translation images with Stable Diffusion (needs diffusers)"
    )
    _common(p)
    p.add_argument(
        "--model", default=None, help="diffusers model id or folder (default: stabilityai/stable-diffusion-2)"
    )
    p.add_argument(
        "--scheduler", choices=["euler", "default"], default="euler", help="euler as TMR (default)"
    )
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument(
        "--size", type=int, default=None, help="image side in pixels (default: the model's, 768 for SD-2)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="base seed; each image's seed derives from it and its img_id"
    )
    p.add_argument("--dtype", choices=["auto", "float16", "bfloat16", "float32"], default="auto")
    p.set_defaults(func=_run_translate)

    p = steps.add_parser(
        "scores", help="strong/weak correlation scores (uniform default, or a ViLT ITM model)"
    )
    _common(p)
    _on_missing(p)
    p.add_argument(
        "--estimator",
        choices=["uniform", "itm"],
        default="uniform",
        help="uniform 0.5/0.5 (default) or ITM model",
    )
    p.add_argument(
        "--model", default=None, help="ViLT retrieval model (default: dandelin/vilt-b32-finetuned-coco)"
    )
    p.add_argument("--bias", type=float, default=0.0, help="p = sigmoid((logit - bias) / temperature)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.set_defaults(func=_run_scores)


def _check_splits(args) -> None:
    """Fail on a missing sample file before any model is loaded."""
    from camim.data.layout import DataLayout

    for split in args.split:
        DataLayout().samples_path(args.data_dir, split)


def _print(reports: list[PrepareReport]) -> int:
    for r in reports:
        print(r.summary())
    return 0


def _run_objects(args) -> int:
    from camim.errors import CamimError
    from camim.preprocess.objects import DEFAULT_DETECTOR, DetectorConfig, ObjectDetector, prepare_objects

    if args.max_objects < 1:
        raise CamimError(f"--max-objects must be >= 1, got {args.max_objects}")
    _check_splits(args)
    config = DetectorConfig(
        model=args.model or DEFAULT_DETECTOR,
        threshold=args.threshold,
        max_objects=args.max_objects,
        nms_iou=args.nms_iou,
        device=args.device,
    )
    images = ("original", "generated") if args.images == "both" else (args.images,)
    detector = ObjectDetector.from_pretrained(config)
    reports = []
    for split in args.split:
        reports += prepare_objects(
            args.data_dir,
            split,
            detector,
            images=images,
            overwrite=args.overwrite,
            on_missing=args.on_missing,
            on_error=args.on_error,
            write_phrases=not args.no_phrases,
            progress=not args.no_progress,
        )
    return _print(reports)


def _run_translate(args) -> int:
    from camim.errors import CamimError
    from camim.preprocess.translation import (
        DEFAULT_DIFFUSION_MODEL,
        TranslationConfig,
        TranslationGenerator,
        prepare_translations,
    )

    if args.steps < 1:
        raise CamimError(f"--steps must be >= 1, got {args.steps}")
    _check_splits(args)
    config = TranslationConfig(
        model=args.model or DEFAULT_DIFFUSION_MODEL,
        scheduler=args.scheduler,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        height=args.size,
        width=args.size,
        seed=args.seed,
        dtype=args.dtype,
        device=args.device,
    )
    generator = TranslationGenerator.from_pretrained(config)
    reports = [
        prepare_translations(
            args.data_dir,
            split,
            generator,
            overwrite=args.overwrite,
            on_error=args.on_error,
            progress=not args.no_progress,
        )
        for split in args.split
    ]
    return _print(reports)


def _run_scores(args) -> int:
    from camim.errors import CamimError
    from camim.preprocess.scores import DEFAULT_ITM_MODEL, ScoreConfig, ScoreEstimator, prepare_scores

    if args.estimator == "uniform" and args.model:
        raise CamimError("--model is only used with --estimator itm")
    _check_splits(args)
    estimator = None
    if args.estimator == "itm":
        config = ScoreConfig(
            model=args.model or DEFAULT_ITM_MODEL,
            bias=args.bias,
            temperature=args.temperature,
            device=args.device,
        )
        estimator = ScoreEstimator.from_pretrained(config)
    reports = [
        prepare_scores(
            args.data_dir,
            split,
            estimator,
            overwrite=args.overwrite,
            on_missing=args.on_missing,
            on_error=args.on_error,
            progress=not args.no_progress,
        )
        for split in args.split
    ]
    return _print(reports)
