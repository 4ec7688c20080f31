"""camim.io: atomic writes, short hashes, the append-only JSONL log and the safe image opener."""

from __future__ import annotations

import io
import os
import signal
import stat
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image

from camim.errors import CamimError, DataError, ImageError
from camim.io import (
    ImageLimits,
    JsonlLog,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    checked_image,
    human_size,
    open_image,
    read_jsonl,
    remove_stale_temporaries,
    settings_hash,
    short_hash,
)


def test_atomic_writes_replace_whole_files_and_leave_nothing_behind(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"  # the interrupted write changed nothing
    assert atomic_write_text(target, (f"{i}\n" for i in range(3))) == target
    assert target.read_text() == "0\n1\n2\n"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.bin", "sub"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def _record_syncs(monkeypatch) -> list[tuple[str, str]]:
    """``os.fsync`` and ``os.replace`` made to record what they get, in order (and then do it)."""
    calls: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_replace(src, dst):
        calls.append(("replace", f"{src} -> {dst}"))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    return calls


def _save_checkpoint(path):
    from camim.trainer import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, path)


def _write_metrics(path):
    from camim.runs import RunFolder

    RunFolder(path.parent).write_metrics({"test": {"f1": 1.0}})


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names an fd's file through /proc")
@pytest.mark.parametrize(
    "name,write",
    [
        ("a.txt", lambda p: atomic_write_text(p, "x")),
        ("b.bin", lambda p: atomic_write_bytes(p, b"x")),
        ("last.ckpt", _save_checkpoint),
        ("metrics.json", _write_metrics),
    ],
)
def test_atomic_writes_flush_the_file_before_the_rename_and_its_folder_after(
    tmp_path, monkeypatch, name, write
):
    """Issue 36: renamed without fsync, a first-time metrics.json or last.ckpt could be empty after a power
    loss (ext4 flushes before a rename only over an existing file)."""
    folder = tmp_path / "run"
    folder.mkdir()
    calls = _record_syncs(monkeypatch)
    write(folder / name)
    assert len(calls) == 3, calls
    (what, tmp), (_, renamed), (_, synced_folder) = calls
    assert what == "fsync" and os.path.basename(tmp).startswith(f".{name}.") and tmp.endswith(".tmp")
    assert renamed == f"{tmp} -> {folder / name}"
    assert calls[2] == ("fsync", str(folder))
    assert (folder / name).stat().st_size > 0


def test_a_folder_that_cannot_be_synced_is_left_as_it_is(tmp_path, monkeypatch):
    import errno

    fsync = os.fsync

    def no_folder_sync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EINVAL, "Invalid argument")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", no_folder_sync)
    assert atomic_write_text(tmp_path / "a.txt", "x").read_text() == "x"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_killed_writers_are_removed_by_the_next_write_into_their_folder(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f".last.ckpt.{dead}.0badc0de.tmp"
    live = tmp_path / f".last.ckpt.{alive}.12345678.tmp"  # a writer still at work
    other = tmp_path / f".notes.{dead}.tmp"  # not atomic_path's name
    for p in (stale, live, other):
        p.write_bytes(b"x" * 10)
    assert remove_stale_temporaries(tmp_path) == 1 and not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path / "missing") == 0
    stale.write_bytes(b"x")
    atomic_write_text(tmp_path / "a.txt", "a")  # the process's first write into the folder sweeps it
    assert not stale.exists() and live.exists()
    stale.write_bytes(b"x")
    atomic_write_text(tmp_path / "b.txt", "b")  # once per folder and process: no second scan
    assert stale.exists()


def test_the_sweep_tells_a_dead_writer_by_host_and_pid(tmp_path):
    """A folder shared by two nodes (a Ray cluster's output): a temporary names its writer's host and pid, and
    the sweep removes only those of this machine's dead processes; another host's temporary is spared even
    when its pid is dead here (that process lives on its own node), and a live local writer's too."""
    from camim.io import _host

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead, here = _dead_pid(), _host()
        stale = tmp_path / f".last.ckpt.{dead}@{here}.0badc0de.tmp"
        live = tmp_path / f".last.ckpt.{child.pid}@{here}.12345678.tmp"  # a writer still at work, here
        elsewhere = tmp_path / f".last.ckpt.{dead}@other-node.89abcdef.tmp"  # another node's writer
        old = tmp_path / f".metrics.json.{dead}.01234567.tmp"  # named before hosts were: this machine's
        for p in (stale, live, elsewhere, old):
            p.write_bytes(b"x" * 10)
        assert remove_stale_temporaries(tmp_path) == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, elsewhere.name])
    finally:
        child.kill()
        child.wait()
    with atomic_path(tmp_path / "a.txt") as tmp:  # the first write here sweeps: the child is dead now
        assert tmp.name.startswith(f".a.txt.{os.getpid()}@{here}.") and tmp.name.endswith(".tmp")
        assert sorted(p.name for p in tmp_path.iterdir()) == [elsewhere.name]
        tmp.write_text("a")


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_flocked_refuses_a_held_lock_when_told_not_to_wait(tmp_path, monkeypatch, caplog):
    import errno

    import camim.io as cio

    path = tmp_path / "lock"
    with open(path, "ab") as first, open(path, "ab") as second, cio.flocked(first.fileno()):
        with pytest.raises(CamimError, match=r"^taken$"), cio.flocked(second.fileno(), busy="taken"):
            pass
    with open(path, "ab") as second, cio.flocked(second.fileno(), busy="taken"):  # released: free again
        pass

    def no_locks(fd, operation):  # Lustre mounted without flock, NFS without a lock manager
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(cio.fcntl, "flock", no_locks)
    expected = f"{path}: the file system does not lock files (No locks available); one writer is assumed"
    with open(path, "ab") as f, cio.flocked(f.fileno(), busy="taken", where=path):
        pass
    assert [r.getMessage() for r in caplog.records] == [expected]


FAILPOINT_SCRIPT = """
import os, sys
from camim.io import failpoint
for i in range(1, 4):
    print(i, flush=True)
    failpoint("test.point", os.write, 1, b"half ")
print("done", flush=True)
"""


@pytest.mark.parametrize(
    ("spec", "out", "killed"),
    [
        ("test.point:2", "1\n2\nhalf ", True),  # the second time it is reached: before_kill, then SIGKILL
        ("other.point:1,test.point:3", "1\n2\n3\nhalf ", True),
        ("test.point:9", "1\n2\n3\ndone\n", False),  # never reached 9 times
        ("", "1\n2\n3\ndone\n", False),
    ],
)
def test_failpoint_kills_the_process_the_nth_time_the_named_point_is_reached(spec, out, killed):
    env = {**os.environ, "CAMIM_FAILPOINT": spec}
    proc = subprocess.run([sys.executable, "-c", FAILPOINT_SCRIPT], env=env, capture_output=True, text=True)
    assert proc.stdout == out
    assert proc.returncode == (-signal.SIGKILL if killed else 0)
    assert ("camim: failpoint test.point:" in proc.stderr) == killed


def test_a_malformed_failpoint_setting_is_refused(monkeypatch):
    from camim.io import failpoint

    monkeypatch.setenv("CAMIM_FAILPOINT", "test.point")
    with pytest.raises(CamimError, match="CAMIM_FAILPOINT: 'test.point' is not name:N"):
        failpoint("test.point")
    monkeypatch.delenv("CAMIM_FAILPOINT")
    failpoint("test.point")  # unset: nothing happens


def test_short_hashes_are_sha256_prefixes():
    assert short_hash("abc") == "ba7816bf8f01"  # SHA-256("abc") = ba7816bf8f01cfea...
    assert short_hash("abc", 16) == "ba7816bf8f01cfea"
    assert (
        settings_hash({"b": 1, "a": "é"})
        == settings_hash({"a": "é", "b": 1})
        == short_hash('{"a": "é", "b": 1}')
    )


def test_jsonl_log_reads_incrementally_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "log" / "x.jsonl"
    log = JsonlLog(path)
    assert log.read() == [] and not path.exists()  # a missing file reads as empty
    assert log.append([{"k": 1}, {"k": "é"}]) == 2 and log.append([]) == 0
    assert path.read_bytes() == '{"k": 1}\n{"k": "é"}\n'.encode()
    assert log.read() == [(1, {"k": 1}), (2, {"k": "é"})] and log.read() == []
    with open(path, "ab") as f:
        f.write(b"\nnot json\n" + b'{"k": 3, "cut')  # a blank line, a bad line, then a write cut short
    assert log.read() == [] and log.bad_lines == [(4, "not JSON (JSONDecodeError)")] and log.partial_tail
    JsonlLog(path).append([{"k": 4}])  # a second writer starts a fresh line after the cut one
    assert log.read() == [(6, {"k": 4})] and log.bad_lines[-1] == (5, "not JSON (JSONDecodeError)")
    assert not log.partial_tail

    fresh = JsonlLog(path)
    assert [v for _, v in fresh.read()] == [{"k": 1}, {"k": "é"}, {"k": 4}] and len(fresh.bad_lines) == 2
    with open(path, "ab") as f:
        f.write(b'{"k": 5')
    single = JsonlLog(path)
    single.read()
    assert single.partial_tail
    single.drop_partial_tail()  # a single writer may cut it off instead
    assert path.read_bytes().endswith(b'{"k": 4}\n') and not single.partial_tail


def test_jsonl_log_locked_appends_and_clear_errors(tmp_path):
    path = tmp_path / "c.jsonl"
    with JsonlLog(path, fsync=True, what="caption file") as log, log.locked():
        log.read()
        log.append(["a"])
    assert path.read_text() == '"a"\n'
    (tmp_path / "file").write_text("x")
    with pytest.raises(CamimError, match="file/c.jsonl: cannot open the caption file for appending"):
        JsonlLog(tmp_path / "file" / "c.jsonl", what="caption file").open()
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(CamimError, match="dir.jsonl: cannot read the progress log"):
        JsonlLog(tmp_path / "dir.jsonl", what="progress log").read()


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 3).save(out, format="PNG")
    return out.getvalue()


def test_read_jsonl_returns_the_objects_and_names_file_and_line_of_a_bad_one(tmp_path):
    path = tmp_path / "p.jsonl"
    # a byte-order mark, a CRLF line end, a blank line and no final newline
    path.write_bytes(b'\xef\xbb\xbf{"id": 0, "p": [0.25]}\r\n\n{"id": 1}')
    assert read_jsonl(path) == [{"id": 0, "p": [0.25]}, {"id": 1}]
    path.write_text('{"id": 0}\n\n{"id": 1,}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_jsonl(path)
    assert (
        str(err.value)
        == f"{path}:3: not valid JSON: Expecting property name enclosed in double quotes (column 10)"
    )
    path.write_text('{"id": 0}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"p\.jsonl:2: expected a JSON object, got list$"):
        read_jsonl(path)
    with pytest.raises(DataError, match=r"missing\.jsonl: file not found"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_open_image_decodes_to_rgb_from_a_path_bytes_or_an_image(tmp_path):
    (tmp_path / "g.png").write_bytes(_png((5, 3), "L"))
    for source in (tmp_path / "g.png", str(tmp_path / "g.png"), _png((5, 3), "L"), Image.new("L", (5, 3), 3)):
        im = open_image(source)
        assert im.mode == "RGB" and im.size == (5, 3) and im.getpixel((4, 2)) == (3, 3, 3)


def test_open_image_checks_limits_before_decoding_and_names_the_file(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_png((300, 200)))
    with pytest.raises(
        ImageError, match=r"big.png: image too large: 300x200 pixels, over the limit of 50000"
    ) as e:
        open_image(path, ImageLimits(max_pixels=50_000))
    assert e.value.too_large and e.value.path == str(path) and isinstance(e.value, DataError)
    with pytest.raises(
        ImageError, match="big.png: image too large: 300x200, over the limit of 250 pixels per side"
    ):
        open_image(path, ImageLimits(max_side=250))
    with pytest.raises(ImageError, match=r"upload: image is \d+ bytes, over the limit of 100") as e:
        open_image(path.read_bytes(), ImageLimits(max_bytes=100), name="upload")
    assert e.value.too_large
    with pytest.raises(ImageError, match="big.png: image is"):
        open_image(path, ImageLimits(max_bytes=100))  # a file's size is checked before it is read

    claims = bytearray(
        _png((4, 4))
    )  # a tiny PNG whose header claims 3000 x 2000: only a header check sees it
    claims[16:24] = struct.pack(">II", 3000, 2000)
    claims[29:33] = struct.pack(">I", zlib.crc32(bytes(claims[12:29])))
    with pytest.raises(ImageError, match="claims: image too large: 3000x2000 pixels"):
        open_image(bytes(claims), ImageLimits(max_pixels=5_000_000), name="claims")
    with pytest.raises(ImageError, match="claims: not a readable image"):  # decoding it fails later
        open_image(bytes(claims), name="claims")


def test_sizes_for_people_take_the_unit_that_fits():
    """One formatter for every byte size in a message (the fetch steps, the image limits, the server's
    decoded budgets): bytes whole, larger units to one decimal, GiB at most."""
    assert [human_size(n) for n in (0, 512, 1023, 1024, 1536, 6 << 20, 7_760_000, 1 << 30, 5 << 40)] == [
        "0 B", "512 B", "1023 B", "1.0 KiB", "1.5 KiB", "6.0 MiB", "7.4 MiB", "1.0 GiB", "5120.0 GiB",
    ]  # fmt: skip


def test_the_decoded_limit_names_sizes_in_the_unit_that_fits():
    """1.5 GiB over 1 GiB (a server's default ``max_decoded_bytes``) reads so, not as 1536.0 MiB."""
    with pytest.raises(
        ImageError, match=r"^x: image too large to decode: it takes 1\.5 GiB, over the limit of 1\.0 GiB"
    ):
        ImageLimits(max_decoded_bytes=1 << 30).check_decoded(3 << 29, "x")
    with pytest.raises(
        ImageError, match=r"it takes 600\.0 KiB, over the limit of 500\.0 KiB decoded per image"
    ):
        ImageLimits(max_decoded_bytes=500 << 10).check_decoded(600 << 10)


def test_open_image_errors_are_one_line_and_say_what_is_wrong(tmp_path):
    with pytest.raises(ImageError, match=r"none.jpg: image not found") as e:
        open_image(tmp_path / "none.jpg")
    assert not e.value.too_large
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageError, match=r"bad.jpg: not a readable image \(corrupt"):
        open_image(tmp_path / "bad.jpg")
    (tmp_path / "cut.png").write_bytes(_png((64, 64))[:70])
    with pytest.raises(ImageError, match=r"cut.png: not a readable image") as e:
        open_image(tmp_path / "cut.png")
    assert "\n" not in str(e.value)
    with pytest.raises(ImageError, match=r"cut.png: not a readable image"):
        with checked_image(tmp_path / "cut.png") as im:  # the header is fine ...
            assert (im.format, im.size) == ("PNG", (64, 64))
            im.load()  # ... decoding inside the block fails, and leaves it as the same one-line error
    with pytest.raises(ImageError, match="image: the image is empty"):
        open_image(b"")
    with pytest.raises(ImageError, match="expected an image, bytes or a path, got int"):
        open_image(3)  # type: ignore[arg-type]
