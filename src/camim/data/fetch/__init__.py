"""``camim data fetch mnre``: download the MNRE text, labels, captions and auxiliary files of the CAMIM
release, verified against pinned sha256 sums, and hand in the images in the released folder layout.

Every file of the authors' ``CAMIM/data`` folder at commit df328a3 is pinned in
``camim/resources/mnre_files.json`` (relative path, sha256, size). The package is split along its seams:

- :mod:`~camim.data.fetch.pinning`: the pinned list (read, validate, pin a folder);
- :mod:`~camim.data.fetch.download`: resumable, sha256-verified downloads (``<file>.part`` + HTTP ``Range``);
- :mod:`~camim.data.fetch.extract`: safe placement of image archives/folders into the released layout
  (``img_org/``, ``img_vg/``, ``diffusion_pic/``; see ``docs/data.md`` for where the images come from);
- :mod:`~camim.data.fetch.cli`: ``camim data fetch`` and ``python -m camim.data.fetch pin FOLDER OUT``.
"""

from camim.data.fetch.cli import main, register
from camim.data.fetch.download import FetchReport, FileResult, fetch_mnre
from camim.data.fetch.extract import IMAGE_KINDS, ImagesReport, layout_target, place_images
from camim.data.fetch.pinning import (
    DEFAULT_BASE_PATH,
    DEFAULT_COMMIT,
    DEFAULT_REPOSITORY,
    Manifest,
    PinnedFile,
    load_manifest,
    pin_folder,
    sha256_of,
    write_manifest,
)

__all__ = [
    "DEFAULT_BASE_PATH",
    "DEFAULT_COMMIT",
    "DEFAULT_REPOSITORY",
    "IMAGE_KINDS",
    "FetchReport",
    "FileResult",
    "ImagesReport",
    "Manifest",
    "PinnedFile",
    "fetch_mnre",
    "layout_target",
    "load_manifest",
    "main",
    "pin_folder",
    "place_images",
    "register",
    "sha256_of",
    "write_manifest",
]
