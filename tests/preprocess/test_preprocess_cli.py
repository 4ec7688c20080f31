"""`camim prepare ...` end to end through the dispatcher."""

from __future__ import annotations

from camim.cli import main
from camim.data.auxiliary import read_object_dict, read_score_file


def test_prepare_scores_uniform_and_objects_cli(data_dir, owlvit_dir, capsys):
    assert main(["prepare", "scores", "--data-dir", str(data_dir), "--split", "train", "--no-progress"]) == 0
    assert set(read_score_file(data_dir / "txt" / "dif_train_weight_weak.txt").values()) == {0.5}
    assert "scores [train]: 3 items" in capsys.readouterr().out

    args = ["prepare", "objects", "--data-dir", str(data_dir), "--split", "train", "--model", str(owlvit_dir)]
    args += [
        "--threshold",
        "0",
        "--max-objects",
        "2",
        "--images",
        "original",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(args) == 0
    crops = read_object_dict(data_dir / "txt" / "mre_train_dict.json")
    assert sorted(crops) == [0, 1, 2] and all(1 <= len(v) <= 2 for v in crops.values())
    assert main(args) == 0
    assert "0 processed, 3 already done" in capsys.readouterr().out


def test_prepare_errors_are_one_line(tmp_path, capsys):
    assert main(["prepare", "scores", "--data-dir", str(tmp_path), "--split", "train", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("camim: error:") and "no sample file" in err and "Traceback" not in err
    assert main(["prepare", "scores", "--data-dir", str(tmp_path), "--model", "x"]) == 1
    assert "--estimator itm" in capsys.readouterr().err
    assert main(["prepare"]) == 2
