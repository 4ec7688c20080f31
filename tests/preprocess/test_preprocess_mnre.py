"""Integration on the real MNRE text files: our phrases and score files have the released shape."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from camim.data.auxiliary import read_phrases
from camim.preprocess.common import load_split
from camim.preprocess.objects import build_queries, released_phrase
from camim.preprocess.scores import prepare_scores

pytestmark = pytest.mark.integration


def test_released_phrases_begin_with_our_phrase(mnre_dir):
    samples, problems = load_split(mnre_dir, "test")
    assert len(samples) == 1614 and not problems
    phrases = read_phrases(mnre_dir / "txt" / "phrase_text_test.json")
    assert all(phrases[ex.index].startswith(released_phrase(ex)) for ex in samples)
    assert all(1 <= len(build_queries(ex, phrases[ex.index])) <= 3 for ex in samples)


def test_uniform_score_files_cover_the_released_img_ids(mnre_dir, tmp_path):
    (tmp_path / "txt").mkdir()
    shutil.copy(mnre_dir / "txt" / "ours_val.txt", tmp_path / "txt" / "ours_val.txt")
    prepare_scores(tmp_path, "val", None, progress=False)
    for name in ("val_weight_strong", "dif_val_weight_weak"):
        ours = (tmp_path / "txt" / f"{name}.txt").read_text(encoding="utf-8").splitlines()
        released = (mnre_dir / "txt" / f"{name}.txt").read_text(encoding="utf-8").splitlines()
        assert len(ours) == len(released) == 1624
        assert Counter(x.split("\t")[0] for x in ours) == Counter(x.split("\t")[0] for x in released)
