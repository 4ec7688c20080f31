"""Placing hand-in images (an archive or a folder) into the released layout::

    img_org/{split}/<img_id>            MNRE original images
    img_vg/{split}/crops/<crop>         HVPNeT/MKGformer visual-grounding crops of the original image
    diffusion_pic/{split}/<img_id>      TMR generated ("translation") images

Archives are extracted safely: members with absolute paths, ``..`` components or links leading out of the
destination are refused before anything is written, and members over ``max_image_bytes`` are refused.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from camim.data.fetch.pinning import CHUNK_BYTES, Progress, say_on_stderr
from camim.data.layout import SPLITS
from camim.errors import CamimError
from camim.io import IMAGE_SUFFIXES, MAX_IMAGE_BYTES, human_size

IMAGE_KINDS = ("img_org", "img_vg", "diffusion_pic")


@dataclass
class ImagesReport:
    """Result of :func:`place_images`: files placed per ``kind/split``, already present, and skipped."""

    dest: Path
    placed: Counter = field(default_factory=Counter)
    present: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def tick(self, key: str, placed: bool, say: Progress, every: int = 1000) -> None:
        """Count one image under ``key`` (``kind/split``) and report progress every ``every`` images."""
        (self.placed if placed else self.present)[key] += 1
        done = self.placed.total() + self.present.total()
        if done % every == 0:
            say(f"  {done} images ({self.placed.total()} new)")

    def summary(self) -> str:
        keys = sorted(set(self.placed) | set(self.present))
        per = ", ".join(f"{k}: {self.placed[k]} new + {self.present[k]} present" for k in keys) or "no images"
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return f"images in {self.dest}: {per}" + (f"; skipped {skipped}" if skipped else "")


def _split_parts(name: str) -> list[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _unsafe_member(name: str) -> str | None:
    """Why an archive member name is refused (absolute, drive letter, ``..``), or None if it is safe."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "absolute path"
    if ".." in norm.split("/"):
        return "path traversal ('..')"
    return None


def layout_target(name: str, kind: str = "auto") -> str | None:
    """Where an archive/folder member goes in the released layout, or None if it is not an image there.

    ``kind="auto"``: the member path must contain ``<kind>/<split>/`` with kind one of img_org, img_vg,
    diffusion_pic (any prefix, e.g. ``data/img_org/train/x.jpg`` or ``RE_data/img_vg/val/crops/y.png``).
    An explicit kind: the path must contain ``<split>/`` (e.g. ``mnre_images/train/x.jpg``).
    For img_vg the crops go to ``img_vg/<split>/crops/`` whether or not the source has a ``crops`` folder.
    """
    parts = _split_parts(name)
    if not parts or PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    for i in range(len(parts) - 2, -1, -1):
        if kind == "auto":
            if parts[i] not in IMAGE_KINDS or i + 2 >= len(parts) or parts[i + 1] not in SPLITS:
                continue
            found, split, rest = parts[i], parts[i + 1], parts[i + 2 :]
        else:
            if parts[i] not in SPLITS:
                continue
            found, split, rest = kind, parts[i], parts[i + 1 :]
        if found == "img_vg" and len(rest) == 2 and rest[0] == "crops":
            rest = rest[1:]
        if len(rest) != 1:
            return None
        sub = "crops/" if found == "img_vg" else ""
        return f"{found}/{split}/{sub}{rest[0]}"
    return None


def _copy_capped(src: IO[bytes], target: Path, size: int, max_bytes: int, label: str) -> None:
    """Stream ``src`` into ``target`` via ``target.part`` (at most ``max_bytes``), then rename atomically."""
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with open(part, "wb") as out:
            while chunk := src.read(CHUNK_BYTES):
                written += len(chunk)
                if written > max_bytes:
                    raise CamimError(
                        f"{label}: larger than {human_size(max_bytes)}; refused (decompression bomb?)"
                    )
                out.write(chunk)
        if size >= 0 and written != size:
            raise CamimError(f"{label}: {written} bytes read, the archive says {size}")
        os.replace(part, target)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise CamimError(f"{label}: cannot extract ({exc})") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise


@dataclass
class _Member:
    name: str
    size: int
    is_file: bool
    link_target: str | None = None  # for symbolic/hard links
    hard_link: bool = False


def _zip_members(zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            yield _Member(info.filename, info.file_size, False, zf.read(info).decode("utf-8", "replace"))
        else:
            yield _Member(info.filename, info.file_size, not info.is_dir())


def _tar_member(info: tarfile.TarInfo) -> _Member:
    if info.issym() or info.islnk():
        return _Member(info.name, info.size, False, info.linkname, hard_link=info.islnk())
    return _Member(info.name, info.size, info.isfile())


def _link_escapes(member: str, link_target: str, from_root: bool) -> bool:
    """Whether a link member would point outside the extraction folder (symlinks resolve from the
    member's folder, tar hard links from the archive root)."""
    target = link_target.replace("\\", "/")
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
        return True
    depth = 0 if from_root else len(_split_parts(member)) - 1
    for p in _split_parts(target):
        depth = depth - 1 if p == ".." else depth + 1
        if depth < 0:
            return True
    return False


def _check_members(members: list[_Member], archive: Path, max_bytes: int) -> None:
    """Refuse the whole archive before writing anything if a member could land outside the destination."""
    for m in members:
        why = _unsafe_member(m.name)
        if why is None and m.link_target is not None and _link_escapes(m.name, m.link_target, m.hard_link):
            why = f"link to {m.link_target!r} outside the destination"
        if why:
            raise CamimError(f"{archive}: member {m.name!r} refused: {why}; nothing extracted")
        if m.is_file and m.size > max_bytes and layout_target(m.name) is not None:
            raise CamimError(
                f"{archive}: member {m.name!r} is {human_size(m.size)}, over {human_size(max_bytes)}; refused"
            )


def _place_from_archive(
    archive: Path, dest: Path, kind: str, report: ImagesReport, max_bytes: int, say: Progress
) -> None:
    name = archive.name.lower()
    if name.endswith(".zip"):
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError) as exc:
            raise CamimError(f"{archive}: not a readable zip archive ({exc})") from exc
        with zf:
            members = list(_zip_members(zf))
            _check_members(members, archive, max_bytes)
            by_name = {info.filename: info for info in zf.infolist()}
            for m in members:
                if m.is_file:
                    opener = lambda m=m: zf.open(by_name[m.name])  # noqa: E731
                    _place_member(m, opener, archive, dest, kind, report, max_bytes, say)
                elif m.link_target is not None:
                    report.skipped["links"] += 1
    elif name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
        try:
            tf = tarfile.open(archive, "r:*")
            infos = tf.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise CamimError(f"{archive}: not a readable tar archive ({exc})") from exc
        with tf:
            members = [_tar_member(info) for info in infos]
            _check_members(members, archive, max_bytes)
            for info, m in zip(infos, members):
                if m.is_file:
                    opener = lambda info=info: tf.extractfile(info)  # noqa: E731
                    _place_member(m, opener, archive, dest, kind, report, max_bytes, say)
                elif m.link_target is not None:
                    report.skipped["links"] += 1
                elif not info.isdir():
                    report.skipped["special files"] += 1
    else:
        raise CamimError(f"{archive}: unsupported archive type (use .zip, .tar.gz, .tgz, .tar or a folder)")


def _place_member(
    m: _Member,
    opener: Callable[[], IO[bytes] | None],
    archive: Path,
    dest: Path,
    kind: str,
    report: ImagesReport,
    max_bytes: int,
    say: Progress,
) -> None:
    rel = layout_target(m.name, kind)
    if rel is None:
        report.skipped["not in the image layout"] += 1
        return
    target = dest / rel
    key = "/".join(rel.split("/")[:2])
    if target.is_file() and target.stat().st_size == m.size:
        report.tick(key, False, say)
        return
    stream = opener()
    if stream is None:  # pragma: no cover - tarfile returns None only for non-regular members
        report.skipped["special files"] += 1
        return
    with stream:
        _copy_capped(stream, target, m.size, max_bytes, f"{archive}: {m.name}")
    report.tick(key, True, say)


def _place_from_folder(
    folder: Path, dest: Path, kind: str, report: ImagesReport, copy: bool, say: Progress
) -> None:
    root = folder.resolve()
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            path = Path(dirpath) / filename
            rel_in_src = path.relative_to(root).as_posix()
            rel = layout_target(rel_in_src, kind)
            if rel is None:
                report.skipped["not in the image layout"] += 1
                continue
            real = path.resolve()
            if not real.is_relative_to(root) or not real.is_file():
                report.skipped["links leaving the folder"] += 1
                continue
            target = dest / rel
            key = "/".join(rel.split("/")[:2])
            if target.is_symlink() and Path(os.readlink(target)) == real:
                report.tick(key, False, say)
                continue
            if target.is_file() and not target.is_symlink() and target.stat().st_size == real.stat().st_size:
                report.tick(key, False, say)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            tmp.unlink(missing_ok=True)
            if copy:
                shutil.copyfile(real, tmp)
            else:
                os.symlink(real, tmp)
            os.replace(tmp, target)
            report.tick(key, True, say)


def place_images(
    images: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    kind: str = "auto",
    copy: bool = False,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    progress: Progress | None = say_on_stderr,
) -> ImagesReport:
    """Place the images of an archive (.zip/.tar.gz/.tgz/.tar) or folder into ``dest`` in the released layout.

    ``kind``: ``auto`` (the source has ``img_org/``, ``img_vg/``, ``diffusion_pic/`` folders, at any depth)
    or one of those names (the source holds ``{train,val,test}/`` folders of that kind). Archive members are
    extracted (atomically, via ``.part``); folder files are symlinked, or copied with ``copy=True``. Files
    already in place with the same size are kept, so an interrupted run resumes. Members outside the layout
    are skipped and counted; unsafe archives are refused (see the module docstring).
    """
    if kind != "auto" and kind not in IMAGE_KINDS:
        raise CamimError(f"unknown image kind {kind!r}; expected auto or one of {', '.join(IMAGE_KINDS)}")
    source, dest = Path(images), Path(dest)
    say = progress or (lambda _message: None)
    if not source.exists():
        raise CamimError(f"--images {source}: no such file or folder")
    dest.mkdir(parents=True, exist_ok=True)
    report = ImagesReport(dest=dest)
    say(f"placing images from {source} into {dest} (layout: {kind})")
    if source.is_dir():
        _place_from_folder(source, dest, kind, report, copy, say)
    else:
        _place_from_archive(source, dest, kind, report, max_image_bytes, say)
    if not report.placed and not report.present:
        raise CamimError(
            f"--images {source}: no image found in the expected layout "
            "(img_org/<split>/, img_vg/<split>/crops/, diffusion_pic/<split>/; or <split>/ with --images-kind)"
        )
    say(report.summary())
    return report
