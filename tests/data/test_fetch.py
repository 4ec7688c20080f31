"""`camim data fetch`: sha256-pinned downloads over a real local HTTP server, resume, local sources, and
safe placement of image archives/folders into the released layout."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import json
import re
import socket
import tarfile
import threading
import urllib.parse
import zipfile
from pathlib import Path

import pytest

from camim.data.fetch import (
    DEFAULT_COMMIT,
    Manifest,
    PinnedFile,
    fetch_mnre,
    layout_target,
    load_manifest,
    pin_folder,
    place_images,
    register,
    write_manifest,
)
from camim.errors import CamimError, DataError

FILES = {
    "ours_rel2id.json": b'{"None": 0, "/per/per/parent": 1}',
    "txt/ours_val.txt": b"".join(
        b"{'token': ['a', 'b'], 'h': {'name': 'a', 'pos': [0, 1]}, 't': {'name': 'b', 'pos': [1, 2]}, "
        b"'img_id': 'x%d.jpg', 'relation': 'None'}\n" % i
        for i in range(400)
    ),
    "caption/minicpm_val.txt": b"{'img_id': 'x0.jpg', 'text': 'a photo'}\n",
}


def _pin(files: dict[str, bytes]) -> Manifest:
    return Manifest(
        files=tuple(PinnedFile(p, hashlib.sha256(b).hexdigest(), len(b)) for p, b in sorted(files.items()))
    )


class _Server:
    """A real HTTP/1.1 server on 127.0.0.1 serving ``files`` with Range support. Paths in ``drop_once`` are
    cut off halfway (connection closed) the first time they are requested."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []
        self.drop_once: set[str] = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                rel = urllib.parse.unquote(urllib.parse.urlparse(self.path).path).removeprefix("/mirror/")
                rng = self.headers.get("Range")
                server.requests.append((rel, rng))
                data = server.files.get(rel)
                if data is None:
                    self.send_error(404)
                    return
                start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]) if rng else 0
                if start >= len(data) and rng:
                    self.send_error(416)
                    return
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if rel in server.drop_once:
                    server.drop_once.discard(rel)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server(FILES)
    yield s
    s.close()


def _fetch(dest, source, manifest, **kw):
    messages: list[str] = []
    kw.setdefault("retry_wait", 0.0)
    kw.setdefault("timeout", 5.0)
    report = fetch_mnre(dest, source, manifest=manifest, progress=messages.append, **kw)
    return report, messages


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------ downloads


def test_http_fetch_verifies_and_skips_present_files(tmp_path, server):
    manifest = _pin(FILES)
    report, messages = _fetch(tmp_path / "data", server.url, manifest)
    assert [f.status for f in report.files] == ["downloaded"] * 3
    for rel, data in FILES.items():
        assert (tmp_path / "data" / rel).read_bytes() == data
    assert report.bytes_transferred == sum(len(b) for b in FILES.values())
    assert _leftovers(tmp_path / "data") == sorted(FILES)  # no .part files
    assert any("[2/3] ours_rel2id.json: downloaded" in m for m in messages)  # per-file progress

    served = len(server.requests)
    report, _ = _fetch(tmp_path / "data", server.url, manifest)
    assert [f.status for f in report.files] == ["present"] * 3
    assert len(server.requests) == served  # nothing requested again


def test_file_with_wrong_checksum_is_fetched_again(tmp_path, server):
    dest = tmp_path / "data"
    (dest / "caption").mkdir(parents=True)
    (dest / "caption/minicpm_val.txt").write_bytes(b"{'img_id': 'x0.jpg', 'text': 'edited'}\n")
    report, _ = _fetch(dest, server.url, _pin(FILES))
    assert {f.path: f.status for f in report.files}["caption/minicpm_val.txt"] == "replaced"
    assert (dest / "caption/minicpm_val.txt").read_bytes() == FILES["caption/minicpm_val.txt"]


def test_corrupted_file_raises_and_leaves_nothing(tmp_path, server):
    good = FILES["txt/ours_val.txt"]
    server.files["txt/ours_val.txt"] = good[:100] + bytes([good[100] ^ 1]) + good[101:]  # same size
    dest = tmp_path / "data"
    with pytest.raises(CamimError, match=r"txt/ours_val\.txt: checksum mismatch"):
        _fetch(dest, server.url, _pin({"txt/ours_val.txt": good}))
    assert _leftovers(dest) == []


def test_oversized_answer_is_cut_and_refused(tmp_path, server):
    server.files["ours_rel2id.json"] = FILES["ours_rel2id.json"] + b"x" * 10_000
    with pytest.raises(CamimError, match=r"ours_rel2id\.json: longer than the pinned"):
        _fetch(tmp_path / "d", server.url, _pin({"ours_rel2id.json": FILES["ours_rel2id.json"]}))
    assert _leftovers(tmp_path / "d") == []


def test_interrupted_transfer_resumes_with_range(tmp_path, server):
    rel = "txt/ours_val.txt"
    manifest = _pin({rel: FILES[rel]})
    server.drop_once.add(rel)
    dest = tmp_path / "data"
    with pytest.raises(
        CamimError, match=r"txt/ours_val\.txt: transfer .* interrupted .*run the command again"
    ):
        _fetch(dest, server.url, manifest, retries=0)
    part = dest / "txt/ours_val.txt.part"
    assert not (dest / rel).exists()  # never a half-written file in place
    assert part.stat().st_size == len(FILES[rel]) // 2

    report, _ = _fetch(dest, server.url, manifest)
    assert report.files[0].status == "resumed"
    assert report.files[0].bytes_transferred == len(FILES[rel]) - len(FILES[rel]) // 2
    assert server.requests[-1] == (rel, f"bytes={len(FILES[rel]) // 2}-")
    assert (dest / rel).read_bytes() == FILES[rel]
    assert not part.exists()


def test_interruption_is_retried_within_one_run(tmp_path, server):
    rel = "txt/ours_val.txt"
    server.drop_once.add(rel)
    report, messages = _fetch(tmp_path, server.url, _pin({rel: FILES[rel]}), retries=1)
    assert report.files[0].status == "resumed"
    assert [r for _, r in server.requests] == [None, f"bytes={len(FILES[rel]) // 2}-"]
    assert any("failed at" in m and "retrying" in m for m in messages)
    assert (tmp_path / rel).read_bytes() == FILES[rel]


def test_partial_longer_than_server_copy_is_refused(tmp_path, server):
    rel = "caption/minicpm_val.txt"
    short = FILES[rel][:10]
    server.files[rel] = short  # a broken mirror holding a truncated file
    (tmp_path / "caption").mkdir()
    (tmp_path / "caption/minicpm_val.txt.part").write_bytes(FILES[rel][:20])
    with pytest.raises(CamimError, match=r"minicpm_val\.txt: .* is shorter than 20 bytes"):
        _fetch(tmp_path, server.url, _pin({rel: FILES[rel]}))
    assert _leftovers(tmp_path) == []


def test_http_404_names_the_file(tmp_path, server):
    manifest = _pin({"txt/missing.txt": b"abc"})
    with pytest.raises(CamimError, match=r"txt/missing\.txt: HTTP 404"):
        _fetch(tmp_path, server.url, manifest)


def test_local_folder_source(tmp_path):
    src = tmp_path / "mirror"
    for rel, data in FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    report, _ = _fetch(tmp_path / "data", str(src), _pin(FILES))
    assert [f.status for f in report.files] == ["downloaded"] * 3
    assert all((tmp_path / "data" / rel).read_bytes() == data for rel, data in FILES.items())

    (src / "ours_rel2id.json").write_bytes(b'{"None": 1}')  # corrupted mirror
    with pytest.raises(CamimError, match=r"ours_rel2id\.json: .*partial file removed"):
        _fetch(tmp_path / "other", src.as_uri(), _pin(FILES))  # file:// URL works too
    assert not (tmp_path / "other" / "ours_rel2id.json").exists()
    with pytest.raises(CamimError, match="not an http"):
        _fetch(tmp_path / "x", str(tmp_path / "nowhere"), _pin(FILES))


def test_manifest_round_trip_and_validation(tmp_path):
    src = tmp_path / "src"
    (src / "txt").mkdir(parents=True)
    (src / "txt/a.txt").write_bytes(b"a")
    (src / "README.md").write_bytes(b"not part of the release")
    pinned = pin_folder(src)
    assert [f.path for f in pinned] == ["txt/a.txt"]
    write_manifest(pinned, tmp_path / "m.json")
    m = load_manifest(tmp_path / "m.json")
    assert m.files == tuple(pinned) and m.commit == DEFAULT_COMMIT
    assert m.default_source.endswith(f"/zefanZhang-cn/CAMIM/{DEFAULT_COMMIT}/CAMIM/data/")

    bad = json.loads((tmp_path / "m.json").read_text())
    bad["files"][0]["path"] = "../etc/passwd"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"bad\.json: unsafe relative path"):
        load_manifest(tmp_path / "bad.json")
    bad["files"][0].update(path="a", sha256="XYZ")
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="sha256 must be"):
        load_manifest(tmp_path / "bad.json")


def test_packaged_manifest_covers_the_release():
    m = load_manifest()
    paths = {f.path for f in m.files}
    assert len(m.files) == 52 and m.commit == DEFAULT_COMMIT
    for split in ("train", "val", "test"):
        assert f"txt/ours_{split}.txt" in paths and f"txt/mre_dif_{split}_dict.pth" in paths
        for source in ("BLIP", "instruct", "llavanext", "caption", "cogvlm", "minicpm"):
            assert f"caption/{source}_{split}.txt" in paths
    assert "ours_rel2id.json" in paths and "README.md" not in paths


@pytest.mark.integration
def test_packaged_hashes_match_shared_copy(mnre_dir):
    assert tuple(pin_folder(mnre_dir)) == load_manifest().files


@pytest.mark.integration
def test_real_files_over_http_with_real_pins(tmp_path, mnre_dir):
    wanted = ["ours_rel2id.json", "txt/phrase_text_test.json", "txt/mre_test_dict.pth"]
    real = load_manifest()
    manifest = Manifest(files=tuple(f for f in real.files if f.path in wanted))
    assert len(manifest.files) == 3
    s = _Server({rel: (mnre_dir / rel).read_bytes() for rel in wanted})
    try:
        report, _ = _fetch(tmp_path, s.url, manifest)
    finally:
        s.close()
    assert [f.status for f in report.files] == ["downloaded"] * 3
    for rel in wanted:
        assert (tmp_path / rel).read_bytes() == (mnre_dir / rel).read_bytes()


# --------------------------------------------------------------------------------------------- images


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("name", "kind", "expected"),
    [
        ("data/img_org/train/a.jpg", "auto", "img_org/train/a.jpg"),
        (
            "RE_data/img_vg/val/crops/0_pred_yolo_crop_1.png",
            "auto",
            "img_vg/val/crops/0_pred_yolo_crop_1.png",
        ),
        ("img_vg/test/3_pred_yolo_crop_2.png", "auto", "img_vg/test/crops/3_pred_yolo_crop_2.png"),
        ("diffusion_pic/test/b.JPG", "auto", "diffusion_pic/test/b.JPG"),
        ("data/txt/ours_train.txt", "auto", None),
        ("img_org/a.jpg", "auto", None),  # no split folder
        ("mnre_images/train/a.jpg", "auto", None),
        ("mnre_images/train/a.jpg", "diffusion_pic", "diffusion_pic/train/a.jpg"),
        ("train\\c.png", "img_org", "img_org/train/c.png"),
    ],
)
def test_layout_target(name, kind, expected):
    assert layout_target(name, kind) == expected


def test_tar_archive_in_hvpnet_layout(tmp_path):
    members = {
        "data/img_org/train/a.jpg": b"A" * 50,
        "data/img_org/val/b.jpg": b"B" * 60,
        "data/img_vg/train/crops/0_pred_yolo_crop_1.png": b"C" * 7,
        "data/txt/ours_train.txt": b"text files are not images",
        "data/ours_rel2id.json": b"{}",
    }
    archive = _tar(tmp_path / "data.tar.gz", members)
    dest = tmp_path / "data"
    report = place_images(archive, dest, progress=None)
    assert (dest / "img_org/train/a.jpg").read_bytes() == b"A" * 50
    assert (dest / "img_org/val/b.jpg").read_bytes() == b"B" * 60
    assert (dest / "img_vg/train/crops/0_pred_yolo_crop_1.png").read_bytes() == b"C" * 7
    assert report.placed == {"img_org/train": 1, "img_org/val": 1, "img_vg/train": 1}
    assert report.skipped["not in the image layout"] == 2
    assert _leftovers(dest) == [
        "img_org/train/a.jpg",
        "img_org/val/b.jpg",
        "img_vg/train/crops/0_pred_yolo_crop_1.png",
    ]

    again = place_images(archive, dest, progress=None)  # a second run keeps what is there
    assert again.placed.total() == 0 and again.present.total() == 3


def test_zip_of_split_folders_with_explicit_kind(tmp_path):
    archive = _zip(tmp_path / "gen.zip", {"pics/test/x.jpg": b"X", "pics/val/y.jpg": b"YY"})
    with pytest.raises(CamimError, match="no image found in the expected layout"):
        place_images(archive, tmp_path / "d", progress=None)
    report = place_images(archive, tmp_path / "d", kind="diffusion_pic", progress=None)
    assert report.placed == {"diffusion_pic/test": 1, "diffusion_pic/val": 1}
    assert (tmp_path / "d/diffusion_pic/val/y.jpg").read_bytes() == b"YY"


@pytest.mark.parametrize(
    "bad",
    [
        "../evil.jpg",
        "img_org/train/../../../evil.jpg",
        "/tmp/img_org/train/evil.jpg",
        "img_org\\..\\..\\evil.jpg",
    ],
)
def test_archive_with_path_traversal_is_refused(tmp_path, bad):
    dest = tmp_path / "a" / "b" / "dest"
    members = {"img_org/train/ok.jpg": b"ok", bad: b"evil"}
    for archive in (_zip(tmp_path / "x.zip", members), _tar(tmp_path / "x.tgz", members)):
        with pytest.raises(CamimError, match="refused: .*nothing extracted"):
            place_images(archive, dest, progress=None)
    assert _leftovers(tmp_path / "a") == []  # nothing written, not even the safe member


def test_archive_with_link_out_of_dest_is_refused(tmp_path):
    archive = _tar(
        tmp_path / "x.tar.gz", {"img_org/train/a.jpg": b"a"}, links={"img_org/train/b.jpg": "../../../b"}
    )
    with pytest.raises(CamimError, match="link to '../../../b' outside the destination"):
        place_images(archive, tmp_path / "dest", progress=None)
    inside = _tar(
        tmp_path / "y.tar.gz", {"img_org/train/a.jpg": b"a"}, links={"img_org/train/c.jpg": "a.jpg"}
    )
    report = place_images(inside, tmp_path / "dest", progress=None)
    assert report.placed.total() == 1 and report.skipped["links"] == 1
    assert not (tmp_path / "dest/img_org/train/c.jpg").exists()


def test_oversized_member_is_refused(tmp_path):
    archive = _zip(tmp_path / "x.zip", {"img_org/train/big.jpg": b"0" * 5000})
    with pytest.raises(CamimError, match="over"):
        place_images(archive, tmp_path / "dest", max_image_bytes=1000, progress=None)
    assert _leftovers(tmp_path / "dest") == []


def test_folder_is_linked_or_copied(tmp_path):
    src = tmp_path / "mnre"
    (src / "img_org/test").mkdir(parents=True)
    (src / "img_org/test/a.jpg").write_bytes(b"a")
    (src / "notes.txt").write_text("skip me")
    (tmp_path / "secret.jpg").write_bytes(b"s")
    (src / "img_org/test/leak.jpg").symlink_to(tmp_path / "secret.jpg")
    report = place_images(src, tmp_path / "linked", progress=None)
    target = tmp_path / "linked/img_org/test/a.jpg"
    assert target.is_symlink() and target.read_bytes() == b"a"
    assert (
        report.skipped["links leaving the folder"] == 1
        and not (tmp_path / "linked/img_org/test/leak.jpg").exists()
    )
    assert place_images(src, tmp_path / "linked", progress=None).present.total() == 1

    place_images(src, tmp_path / "copied", copy=True, progress=None)
    copied = tmp_path / "copied/img_org/test/a.jpg"
    assert copied.is_file() and not copied.is_symlink() and copied.read_bytes() == b"a"


def test_cli_fetch_and_images(tmp_path, server, monkeypatch, capsys):
    # The real pinned list is replaced by the synthetic one for this run.
    monkeypatch.setattr("camim.data.fetch.download.load_manifest", lambda path=None: _pin(FILES))
    parser = argparse.ArgumentParser(prog="camim data")
    register(parser.add_subparsers())
    archive = _zip(tmp_path / "imgs.zip", {"img_org/train/a.jpg": b"A"})
    dest = tmp_path / "data"
    args = parser.parse_args(
        ["fetch", "mnre", "--dest", str(dest), "--source", server.url, "--images", str(archive)]
    )
    assert args.func(args) == 0
    assert (dest / "img_org/train/a.jpg").read_bytes() == b"A"
    assert (dest / "ours_rel2id.json").read_bytes() == FILES["ours_rel2id.json"]
    err = capsys.readouterr().err
    assert "sha256 ok" in err and "img_org/train: 1 new" in err
    with pytest.raises(SystemExit):
        parser.parse_args(["fetch", "twitter15", "--dest", str(dest)])
