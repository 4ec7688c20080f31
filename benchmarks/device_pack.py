"""What a lent GPU machine needs beside the repository for issue 37's MiniLM grids, packed into ``.device/``.

A device call carries the working tree and at most 64 MiB of ignored files (``carry``); neither the venv with
the bundled encoder (90.9 MB of fp32 weights) nor the shared MNRE folder travels. This script writes, into
``.device/`` at the repository root (ignored by ``.gitignore``; named in the call's ``carry``):

- ``minilm-fp16/``: a half-precision copy of the bundled encoder (``text_encoder: minilm``, its sha256 checked
  by :mod:`camim.models.bundled` first): ``model.safetensors`` with every floating tensor rounded to fp16
  (written with safetensors, ~45 MB), ``config.json`` with ``dtype``/``torch_dtype`` float32 (transformers 5
  builds a model in the checkpoint's dtype when the config names none: this way the model is fp32, its weights
  the fp16-rounded values) and the tokenizer files. ``PACK.json`` records the source's sha256, the copy's
  sha256 and the rounding (largest absolute change, weights that became zero; a weight beyond fp16's range is
  refused).
- ``mnre.tar.xz``: the data folder's ``txt/``, ``caption/`` and top-level files (the text and all six caption
  sets of the grids; a few MB).

Both are skipped when up to date (the same source, the same data files by size and modification time). The
travelling size (tracked and untracked-not-ignored files of the checkout, plus ``.device``) is printed and
checked against :data:`LIMIT_MIB`; over it, one line and exit 1.

    python benchmarks/device_pack.py --data-dir ../shared/data/mnre
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from camim.errors import CamimError
from camim.io import atomic_path, atomic_write_text, human_size

ROOT = Path(__file__).resolve().parents[1]
PACK_DIR = ROOT / ".device"
ENCODER_DIR = "minilm-fp16"
DATA_ARCHIVE = "mnre.tar.xz"
#: the device call's limit is 64 MiB; this leaves room for what a session adds to the tree meanwhile
LIMIT_MIB = 60
#: files of a Hugging Face folder a tokenizer may read (those present are copied)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
#: what of the MNRE folder the grids read (text-caption mode: no images)
DATA_PARTS = ("txt", "caption")
PACK_VERSION = 1


def fp16_copy(source: Path, dest: Path, source_sha256: str) -> dict:
    """Write the fp16 copy of the Hugging Face folder ``source`` into ``dest`` (see the module docstring);
    the record written as ``dest/PACK.json``, which also makes a second call with the same source a no-op."""
    from safetensors.torch import save_file

    from camim.models.bundled import file_sha256

    record_path = dest / "PACK.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        weights = dest / "model.safetensors"
        if (record.get("version"), record.get("source_sha256")) == (PACK_VERSION, source_sha256) and (
            weights.is_file() and file_sha256(weights) == record.get("sha256")
        ):
            return {**record, "skipped": True}
    half, worst, zeroed = rounded_to_fp16(source / "model.safetensors")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    save_file(half, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config.update(dtype="float32", torch_dtype="float32")  # an fp32 model holding the fp16-rounded values
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    copied = [n for n in TOKENIZER_FILES if (source / n).is_file()]
    if not {"tokenizer.json", "vocab.txt"} & set(copied):
        raise CamimError(f"{source}: no tokenizer.json or vocab.txt (not a tokenizer folder)")
    for name in copied:
        shutil.copy2(source / name, dest / name)
    record = {
        "version": PACK_VERSION,
        "what": "fp16-rounded copy of the weights (an fp32 model is built from them); tokenizer unchanged",
        "source": str(source),
        "source_sha256": source_sha256,
        "sha256": file_sha256(dest / "model.safetensors"),
        "tensors": len(half),
        "max_abs_rounding": worst,
        "weights_rounded_to_zero": zeroed,
        "tokenizer_files": copied,
    }
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    return {**record, "skipped": False}


def rounded_to_fp16(weights: Path) -> tuple[dict, float, int]:
    """The tensors of the safetensors file ``weights``, floating ones rounded to fp16; the largest absolute
    change and how many weights became 0. A weight beyond fp16's range is refused, naming its tensor."""
    import torch
    from safetensors.torch import load_file

    half, worst, zeroed = {}, 0.0, 0
    for name, t in load_file(str(weights)).items():
        if not t.is_floating_point():
            half[name] = t
            continue
        h = t.to(torch.float16)
        if not torch.isfinite(h).all():
            raise CamimError(f"{weights}: tensor {name} exceeds fp16's range")
        worst = max(worst, float((h.float() - t.float()).abs().max()))
        zeroed += int(((h == 0) & (t != 0)).sum())
        half[name] = h.contiguous()
    return half, worst, zeroed


def data_files(data_dir: Path) -> list[Path]:
    """The files of ``data_dir`` the archive holds: its top-level files and everything under :data:`DATA_PARTS`."""
    if not (data_dir / "txt").is_dir():
        raise CamimError(f"--data-dir {data_dir}: no txt/ folder (not an MNRE data folder)")
    files = [p for p in data_dir.iterdir() if p.is_file()]
    for part in DATA_PARTS:
        files += [p for p in (data_dir / part).rglob("*") if p.is_file()]
    return sorted(files)


def pack_data(data_dir: Path, archive: Path) -> dict:
    """``archive`` (tar.xz, paths relative to ``data_dir``) of :func:`data_files`; skipped when its manifest
    (relative path, size, modification time of each file) is the one recorded beside it."""
    files = data_files(data_dir)
    manifest = [[str(p.relative_to(data_dir)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    record = archive.with_suffix(".manifest.json")
    if archive.is_file() and record.is_file() and json.loads(record.read_text()) == manifest:
        return {"files": len(files), "skipped": True}
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w:xz") as tar:
        for p, (rel, _, _) in zip(files, manifest):
            tar.add(p, arcname=rel, recursive=False)
    atomic_write_text(record, json.dumps(manifest) + "\n")
    return {"files": len(files), "skipped": False}


def travelling_bytes(root: Path, carried: Path) -> tuple[int, int]:
    """(bytes of the checkout's tracked and untracked-not-ignored files, bytes under ``carried``)."""
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    tree = sum(p.stat().st_size for name in listed if name and (p := root / name.decode()).is_file())
    return tree, sum(p.stat().st_size for p in carried.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnre")
    ap.add_argument("--encoder", default="minilm", help="the encoder to copy (a bundled name or a folder)")
    ap.add_argument("--pack-dir", type=Path, default=PACK_DIR)
    args = ap.parse_args(argv)
    from camim.models.bundled import BUNDLED_ENCODERS, file_sha256, resolve_encoder

    try:
        source = Path(resolve_encoder(args.encoder))  # a bundled encoder: its sha256 checked here
        expected = BUNDLED_ENCODERS[args.encoder].sha256 if args.encoder in BUNDLED_ENCODERS else {}
        digest = expected.get("model.safetensors") or file_sha256(source / "model.safetensors")
        enc = fp16_copy(source, args.pack_dir / ENCODER_DIR, digest)
        data = pack_data(args.data_dir.resolve(), args.pack_dir / DATA_ARCHIVE)
        tree, carried = travelling_bytes(ROOT, args.pack_dir)
    except (CamimError, OSError, subprocess.CalledProcessError) as exc:
        print(f"device_pack: error: {exc}", file=sys.stderr)
        return 1
    weights = (args.pack_dir / ENCODER_DIR / "model.safetensors").stat().st_size
    print(f"{ENCODER_DIR}: {'up to date' if enc['skipped'] else 'written'}, model.safetensors {human_size(weights)} "
          f"(fp16 of {source / 'model.safetensors'}, sha256 {digest[:12]}...; largest rounding "
          f"{enc['max_abs_rounding']:.2e}, {enc['weights_rounded_to_zero']} weights rounded to 0)")  # fmt: skip
    size = (args.pack_dir / DATA_ARCHIVE).stat().st_size
    print(f"{DATA_ARCHIVE}: {'up to date' if data['skipped'] else 'written'}, {data['files']} files, "
          f"{human_size(size)}")  # fmt: skip
    total = tree + carried
    print(f"travelling: checkout {human_size(tree)} + {args.pack_dir.name} {human_size(carried)} = "
          f"{human_size(total)} (limit here {LIMIT_MIB} MiB, the device's 64 MiB)")  # fmt: skip
    if total > LIMIT_MIB * 2**20:
        print(f"device_pack: error: {human_size(total)} would travel, over {LIMIT_MIB} MiB: remove large "
              "untracked files from the checkout", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
