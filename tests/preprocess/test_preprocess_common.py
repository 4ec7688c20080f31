"""The progress log that makes every step resumable, and atomic outputs."""

from __future__ import annotations

from PIL import Image

from camim.io import atomic_save_image, settings_hash
from camim.preprocess.common import PrepareReport, ProgressLog, is_valid_image


def test_progress_log_keeps_done_items_per_settings(tmp_path):
    path = tmp_path / "progress" / "objects_train.jsonl"
    log = ProgressLog(path, {"model": "m", "threshold": 0.1})
    log.append("0", {"boxes": [[1, 2, 3, 4]]})
    log.append("1", {"boxes": []})
    again = ProgressLog(path, {"threshold": 0.1, "model": "m"})  # same settings, other key order
    assert sorted(again.done) == ["0", "1"] and again.done["0"]["boxes"] == [[1, 2, 3, 4]]
    other = ProgressLog(path, {"model": "m", "threshold": 0.2})
    assert other.done == {} and other.other_settings == 2
    assert settings_hash({"a": 1, "b": 2}) == settings_hash({"b": 2, "a": 1}) != settings_hash({"a": 1})


def test_progress_log_drops_a_cut_short_line_and_counts_it_and_unreadable_ones(tmp_path):
    path = tmp_path / "log.jsonl"
    ProgressLog(path, {}).append("0", {"x": 1})
    whole = path.read_bytes()
    with path.open("ab") as f:
        f.write(b'{"key": "1", "sett')  # a write cut short by a crash
    log = ProgressLog(path, {})
    assert list(log.done) == ["0"] and log.torn_lines == 1 and log.bad_lines == 0
    assert path.read_bytes() == whole  # cut off: item 1 is redone
    report = PrepareReport("objects", "train")
    report.note_log(log)
    assert report.fallbacks == {"torn_lines_dropped": 1} and "torn_lines_dropped: 1" in report.summary()
    log.append("1", {"x": 2})
    reread = ProgressLog(path, {})
    assert sorted(reread.done) == ["0", "1"] and reread.bad_lines == 0 and reread.torn_lines == 0

    h = settings_hash({})
    path.write_text(
        f'{{"key": "0", "settings": "{h}"}}\nnot json\n["no key"]\n{{"key": "2", "settings": "{h}"}}\n'
    )
    log = ProgressLog(path, {})
    assert sorted(log.done) == ["0", "2"] and log.bad_lines == 2
    report = PrepareReport("objects", "train")
    report.note_log(log)
    assert report.fallbacks == {"unreadable_progress_lines": 2}


def test_atomic_save_image_picks_the_format_from_the_name(tmp_path):
    img = Image.new("RGB", (8, 6), "blue")
    atomic_save_image(img, tmp_path / "x.jpg")
    atomic_save_image(img, tmp_path / "y.png")
    with Image.open(tmp_path / "x.jpg") as a, Image.open(tmp_path / "y.png") as b:
        assert (a.format, b.format, a.size) == ("JPEG", "PNG", (8, 6))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jpg", "y.png"]  # no temporary files left
    (tmp_path / "z.jpg").write_bytes(b"\xff\xd8 truncated")
    assert is_valid_image(tmp_path / "x.jpg") and not is_valid_image(tmp_path / "z.jpg")
    assert not is_valid_image(tmp_path / "missing.png")
