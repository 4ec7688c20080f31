"""The ablation report's arithmetic (issue 30): per-seed cells, the paired t-test and the verdicts, pinned to
hand-computed values (a t distribution with 2 degrees of freedom has closed forms: sf(t) = (1 - t/sqrt(t^2 + 2))/2
and ppf(0.975) = 0.95 * sqrt(2 / (1 - 0.95^2)) = 4.30265), and the archive a fresh machine restores from."""

from __future__ import annotations

import json
import math

import pytest


def _finished(folder, f1):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("name: x\n")
    (folder / "metrics.json").write_text(json.dumps({"test": {"f1": f1}}))


def test_paired_differences_t_test_and_the_difference_it_needs(bench):
    ab = bench("offline_ablations")
    c = ab.paired({1: 44.0, 2: 45.0, 3: 46.0, 4: 50.0}, {1: 43.0, 2: 43.0, 3: 43.0})  # seed 4 is unpaired
    assert c["per_seed"] == {1: 1.0, 2: 2.0, 3: 3.0} and c["n"] == 3 and c["mean"] == pytest.approx(2.0)
    t = 2.0 / (1.0 / math.sqrt(3))  # mean / (sd / sqrt(n)), sd of (1, 2, 3) = 1
    assert c["p"] == pytest.approx(1 - t / math.sqrt(t * t + 2))  # 0.07418
    assert c["needed"] == pytest.approx(0.95 * math.sqrt(2 / (1 - 0.95**2)) / math.sqrt(3))  # 2.48414
    assert ab.paired({1: 44.0}, {2: 43.0}) is None
    same = ab.paired({1: 44.0, 2: 45.0}, {1: 43.0, 2: 44.0})  # +1 on every seed: no spread, a sure difference
    assert same["p"] == 0.0 and same["needed"] == 0.0 and ab.verdict(1, same, None) == "agrees"
    assert ab.paired({1: 44.0, 2: 45.0}, {1: 44.0, 2: 45.0})["p"] == 1.0


def test_verdicts_over_seeds_and_for_one_seed(bench):
    ab = bench("offline_ablations")
    clear = ab.paired({1: 2.0, 2: 2.1, 3: 1.9}, {1: 0.0, 2: 0.0, 3: 0.0})  # p = 0.0008
    assert ab.verdict(1, clear, None) == "agrees" and ab.verdict(-1, clear, None) == "disagrees"
    assert ab.verdict(1, ab.paired({1: 1.0, 2: 2.0, 3: 3.0}, {1: 0, 2: 0, 3: 0}), None) == "within noise"
    one = {"mean": -1.5, "n": 1, "p": None}
    assert ab.verdict(1, one, noise=1.0) == "disagrees"  # |-1.5| > 1.0
    assert ab.verdict(1, one, noise=2.0) == "within noise"
    assert ab.verdict(1, one, noise=None).startswith("pending")
    assert ab.verdict(1, None, noise=1.0) == "pending"


def test_one_seed_noise_pools_the_rows_with_several_seeds(bench):
    ab = bench("offline_ablations")
    rows = [{1: 44.0, 2: 45.0, 3: 46.0}, {1: 40.0, 2: 43.0}, {1: 50.0}]  # variances 1 and 4.5; one seed: none
    # Student's t(0.975) at the pooled 2 + 1 = 3 degrees of freedom: 3.182446 (tables), not 1.96
    assert ab.pooled_df(rows) == 3
    assert ab.one_seed_noise(rows) == pytest.approx(3.182446 * math.sqrt(2 * (1 + 4.5) / 2))  # 7.464
    # one row of two seeds: t(1) = 12.706, closed form tan(0.975 pi - pi/2)
    two = math.tan(math.pi * (0.975 - 0.5)) * math.sqrt(2) * math.sqrt(0.5)
    assert ab.one_seed_noise([{1: 59.0, 2: 60.0}]) == pytest.approx(two)
    assert ab.one_seed_noise([{1: 50.0}]) is None


def test_the_papers_best_point_is_judged_against_the_best_other_point(bench):
    ab = bench("offline_ablations")
    paper = {"0.05": 89.03, "0.1": 90.62, "0.3": 89.03, "0.5": None}
    here = {"0.05": 43.35, "0.1": 43.29, "0.3": 41.94, "0.5": 43.96}  # the paper's best 0.1: 0.67 below 0.5
    expected = "best here 0.5 (43.96); the paper's best 0.1 (43.29 here, -0.67 against the best other point)"
    assert ab.best_point(here, paper, noise=4.07) == f"{expected}: within noise"
    assert ab.best_point(here, paper, noise=0.5).endswith("-0.67 against the best other point): disagrees")
    ahead = {**here, "0.1": 45.0}  # best here as in the paper, by 1.04 over 0.5
    assert ab.best_point(ahead, paper, noise=1.0).endswith("+1.04 against the best other point): agrees")
    assert ab.best_point(ahead, paper, noise=2.0).endswith("within noise")  # best here too, but not by enough
    assert ab.best_point(ahead, paper, noise=None).endswith("pending (one seed, no seed-to-seed spread yet)")


def test_report_shows_each_seed_and_the_paired_claims(bench, tmp_path):
    ab = bench("offline_ablations")
    for seed, (bert, tmr) in enumerate([(43.0, 44.0), (43.0, 45.0), (43.0, 46.0)], start=1):
        _finished(tmp_path / "offline-table1" / "bert" / f"seed{seed}", bert)
        _finished(tmp_path / "offline-table1" / "tmr" / f"seed{seed}", tmr)
    lines = ab.report(tmp_path).splitlines()
    assert "| bert | 43.00 ± 0.00 (43.00, 43.00, 43.00) | 59.4 |" in lines
    assert "| tmr | 45.00 ± 1.00 (44.00, 45.00, 46.00) | 89.05 |" in lines
    assert "| tmr-mi | pending | 89.21 |" in lines
    claim = "| the captioned TMR beats text-only BERT (paper +29.65) | +2.00 (+1.00, +2.00, +3.00) | 0.074 | ± 2.48 |"
    assert f"{claim} within noise |" in lines
    assert "| TMR + CAM beats TMR (paper +0.91) | pending | - | - | pending |" in lines
    assert "alpha: pending (0 of 4 points)" in lines


def test_table2_and_fig4_report_the_seeds_that_were_trained(bench, tmp_path):
    """--seeds 4 5 --other-seeds 2: the points are means over seeds 4 and 5 (seed 1 is not looked for), and the
    one-seed noise shrinks by sqrt(2) for a mean of two."""
    ab = bench("offline_ablations")
    for seed, (a, b) in {4: (44.0, 45.0), 5: (46.0, 46.0), 9: (10.0, 90.0)}.items():  # seed 9: not asked for
        _finished(tmp_path / "offline-table1" / "tmr-cam" / f"seed{seed}", a)
        _finished(tmp_path / "offline-table1" / "tmr-cam-mi" / f"seed{seed}", b)
    for x, f1 in {
        "0.05": (40.0, 42.0),
        "0.1": (48.0, 50.0),
        "0.3": (41.0, 41.0),
        "0.5": (40.0, 40.0),
    }.items():
        for seed, v in zip((4, 5), f1):
            _finished(tmp_path / "offline-fig4" / f"alpha_{x}" / f"seed{seed}", v)
    lines = ab.report(tmp_path, [4, 5], [4, 5]).splitlines()
    assert "| tmr-cam | 45.00 ± 1.41 (44.00, 46.00) | 89.96 |" in lines
    assert "| alpha:0.1 | 49.00 ± 1.41 (48.00, 50.00) | 90.62 |" in lines
    # pooled std of the two Table 1 rows: variances 2 and 0.5, 2 degrees of freedom (t = 4.302653); noise
    # 4.302653 x sqrt(2 x 1.25) = 6.803, /sqrt(2) = 4.810 for a mean of two: 0.1 leads by 8.00
    assert (
        "alpha: best here 0.1 (49.00); the paper's best 0.1 (49.00 here, +8.00 against the best other point): agrees"
        in lines
    )
    assert (
        "## Offline Fig. 4 (MI weight alpha, caption feature level) (test micro-F1, mean ± std over seeds 4, 5)"
        in lines
    )
    _finished(tmp_path / "offline-fig4" / "alpha_0.1" / "seed6", 50.0)  # one point of seed 6: not shown yet
    lines = ab.report(tmp_path, [4, 5], [4, 5, 6]).splitlines()
    assert "| alpha:0.1 | 49.00 ± 1.41 (48.00, 50.00) | 90.62 |" in lines
    assert "Seeds 6: not finished for every point yet, left out." in lines


def test_a_run_that_two_grids_share_is_copied_not_trained_again(bench, tmp_path):
    """Table 1's CAM + MI seed 1 is also Fig. 4's alpha 0.1 and W&S points: the copy goes where the resolved
    configs are equal and nowhere else (not to seed 2, not to the other points)."""
    from camim.runs import RunFolder
    from camim.training.api import resolve_run_config

    ab = bench("offline_ablations")
    out, enc, data = tmp_path / "out", tmp_path / "enc", str(tmp_path / "data")
    row = next(r for r in ab._rows("offline-table1") if r["label"] == "tmr-cam-mi")
    source = ab._folder(out, "offline-table1", "tmr-cam-mi", 1)
    cfg = resolve_run_config(
        row["preset"], [*row["overrides"], *ab._common(enc), "optim.seed=1"], data, source
    )
    source.mkdir(parents=True)
    RunFolder(source).write_config(cfg.to_dict())
    (source / "metrics.json").write_text(json.dumps({"test": {"f1": 43.29}}))
    assert ab.share_finished_runs(out, "offline-fig4", [1, 2], data, enc, []) == 2
    found = {r["label"]: ab.f1_per_seed(out, "offline-fig4", r["label"]) for r in ab._rows("offline-fig4")}
    assert {label: f1 for label, f1 in found.items() if f1} == {
        "alpha:0.1": {1: 43.29},
        "caption_level:W&S": {1: 43.29},
    }
    assert ab.share_finished_runs(out, "offline-fig4", [1, 2], data, enc, []) == 0  # already there


def test_archive_keeps_the_small_files_and_restore_never_overwrites(bench, tmp_path):
    ab = bench("offline_ablations")
    out, dest, fresh = tmp_path / "out", tmp_path / "archive", tmp_path / "fresh"
    _finished(out / "offline-table1" / "bert" / "seed1", 41.0)
    (out / "offline-table1" / "bert" / "seed1" / "model").mkdir()
    (out / "offline-table1" / "tmr" / "seed1").mkdir(parents=True)  # unfinished: not archived
    assert ab.archive(out, dest) == 1
    kept = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert kept == ["offline-table1/bert/seed1/config.yaml", "offline-table1/bert/seed1/metrics.json"]
    _finished(fresh / "offline-table1" / "tmr" / "seed1", 45.0)
    (dest / "offline-table1" / "tmr" / "seed1").mkdir(parents=True)
    (dest / "offline-table1" / "tmr" / "seed1" / "metrics.json").write_text(json.dumps({"test": {"f1": 1.0}}))
    (dest / "offline-table1" / "tmr" / "seed1" / "config.yaml").write_text("name: y\n")
    assert ab.restore(dest, fresh) == 1  # bert only: fresh's own tmr run stays
    assert ab.f1_per_seed(fresh, "offline-table1", "tmr") == {1: 45.0}
    assert ab.f1_per_seed(fresh, "offline-table1", "bert") == {1: 41.0}


# ------------------------------------------------------------------------------------- the MiniLM regime (issue 37)
def _dev_run(folder, val, test, best_epoch=None):
    """A finished run of the dev grid: val and test F1, and the best epoch where metrics.json records one."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("name: x\n")
    metrics = {"val": None if val is None else {"f1": val}, "test": {"f1": test}}
    (folder / "metrics.json").write_text(
        json.dumps({**metrics, **({"best_epoch": best_epoch} if best_epoch else {})})
    )


def test_minilm_report_chooses_the_lr_on_val_and_makes_the_claims_its_rows_allow(bench, tmp_path):
    ab = bench("offline_ablations")
    _dev_run(tmp_path / "minilm-lr" / "bert-lr_2e-5" / "seed1", 50.0, 52.0, best_epoch=6)
    _dev_run(tmp_path / "minilm-lr" / "bert-lr_5e-5" / "seed1", 55.5, 51.0, best_epoch=4)
    _dev_run(
        tmp_path / "minilm-lr" / "bert-lr_1e-4" / "seed1", 54.0, 56.0
    )  # best test F1, not the dev choice
    t1 = {
        "bert": (50.0, 51.0, 52.0),
        "tmr": (53.0, 55.0, 54.0),
        "tmr-cam-mi": (54.0, 55.0, 56.0),
        "tmr-cam-mi-shuffled": (55.0, 55.0, 55.0),
    }
    for label, f1s in t1.items():
        for seed, f1 in enumerate(f1s, start=1):
            _finished(tmp_path / "minilm-table1" / label / f"seed{seed}", f1)
    for x, f1 in {"blip2": 53.0, "instruct": 54.0, "llavanext": 52.0, "qwenvl": 51.0, "cogvlm": 50.0}.items():
        _finished(tmp_path / "minilm-table2" / f"{x}_tmr-cam-mi" / "seed1", f1)
    _finished(tmp_path / "minilm-table2" / "minicpm_tmr-cam-mi" / "seed1", 58.0)
    text = ab.report(tmp_path, regime="minilm")
    lines = text.splitlines()
    assert lines[:9] == [
        "## MiniLM text row: the learning rate chosen on dev (minilm-lr, seed 1)",
        "",
        "| lr | val micro-F1 (selects) | best epoch | test micro-F1 (not used) |",
        "|---|---|---|---|",
        "| 2e-5 | 50.00 | 6 | 52.00 |",
        "| 5e-5 | 55.50 | 4 | 51.00 |",
        "| 1e-4 | 54.00 | - | 56.00 |",
        "",
        "Dev choice: lr 5e-5 (val F1 55.50); minilm-table1's bert row trains at it (its seed 1 is this run: "
        "copied, not trained twice).",
    ]
    assert "## MiniLM Table 1 (test micro-F1, mean ± std over seeds (each seed))" in lines
    assert "| row | ours | paper (TMR rows: with images) |" in lines
    paper_text = "59.4 (other text rows: PCNN (2015) 55.49, MTB (2019) 60.86)"
    assert f"| bert | 51.00 ± 1.00 (50.00, 51.00, 52.00) | {paper_text} |" in lines
    assert "| tmr-cam-mi-shuffled | 55.00 ± 0.00 (55.00, 55.00, 55.00) | - |" in lines
    claims = lines[lines.index("|---|---|---|---|---|") + 1 : lines.index("|---|---|---|---|---|") + 5]
    # t with 2 degrees of freedom: p = 1 - t/sqrt(t^2 + 2); diffs (1, 0, 2): t = sqrt(3), p = 0.2254;
    # (3, 4, 2): t = 3 sqrt(3), p = 0.0351; (4, 4, 4): no spread; (-1, 0, 1): t = 0, p = 1; needed 4.30265/sqrt(3)
    assert claims == [
        "| TMR + CAM + MI beats TMR (paper +1.89) | +1.00 (+1.00, +0.00, +2.00) | 0.225 | ± 2.48 | within noise |",
        "| the captioned TMR beats text-only BERT (paper +29.65) | +3.00 (+3.00, +4.00, +2.00) | 0.035 | ± 2.48 | agrees |",
        "| TMR + CAM + MI beats text-only BERT (paper +31.54) | +4.00 (+4.00, +4.00, +4.00) | 0.000 | ± 0.00 | agrees |",
        "| captions' content matters: real captions beat shuffled ones (control) | +0.00 (-1.00, +0.00, +1.00) "
        "| 1.000 | ± 2.48 | within noise |",
    ]
    assert (
        lines[lines.index(claims[-1]) + 1] == ""
    )  # no claim on rows minilm-table1 lacks (TMR + CAM, TMR + MI)
    # caption rows' variances 1, 1, 0 over 3 x 2 degrees of freedom (t = 2.446912): noise 2.446912 x sqrt(2 x 2/3)
    # = 2.826; minicpm leads qwenvl.. by 4.00
    assert "Student's 0.975 quantile at their 6 degrees of freedom; the 95% range" in text
    assert "the difference of two runs that differ only in their seed): 2.83 F1." in text
    assert "## MiniLM Table 2 (caption sources on CAM + MI) (test micro-F1, seed 1)" in lines
    assert "| minicpm/tmr-cam-mi | 58.00 | 90.94 |" in lines
    assert (
        "tmr-cam-mi: best here minicpm (58.00); the paper's best minicpm (58.00 here, +4.00 against the best "
        "other point): agrees" in lines
    )
    assert "Fig. 4" not in text and "Offline" not in text


def test_the_dev_choice_waits_for_every_lr_and_says_when_the_text_row_trains_elsewhere(bench, tmp_path):
    ab = bench("offline_ablations")
    _dev_run(tmp_path / "minilm-lr" / "bert-lr_2e-5" / "seed2", 50.0, 52.0)
    _dev_run(tmp_path / "minilm-lr" / "bert-lr_5e-5" / "seed2", None, 51.0)  # no val scores: never chosen
    lines = ab.report(tmp_path, [2, 3], regime="minilm").splitlines()
    assert "## MiniLM text row: the learning rate chosen on dev (minilm-lr, seed 2)" in lines
    assert "| 5e-5 | - | - | 51.00 |" in lines and "| 1e-4 | pending | pending | pending |" in lines
    assert "Dev choice: pending (2 of 3 learning rates finished)." in lines
    _dev_run(tmp_path / "minilm-lr" / "bert-lr_1e-4" / "seed2", 60.0, 40.0, best_epoch=2)
    lines = ab.report(tmp_path, [2, 3], regime="minilm").splitlines()
    assert (
        "Dev choice: lr 1e-4 (val F1 60.00); minilm-table1's bert row trains at lr 5e-05 (minilm-bert's), "
        "not at it: set optim.lr there." in lines
    )


def test_one_seed_of_each_caption_row_shows_its_differences_and_waits_for_a_spread(bench, tmp_path):
    """Three text seeds and seed 1 of the caption rows (where issue 37's runs stood): each claim shows its seed-1
    difference, and no verdict is drawn from it, nor a noise level from the text row's spread."""
    ab = bench("offline_ablations")
    for k, f1 in zip((1, 2, 3), (50.0, 51.0, 52.0)):
        _finished(tmp_path / "minilm-table1" / "bert" / f"seed{k}", f1)
    _finished(tmp_path / "minilm-table1" / "tmr-cam-mi" / "seed1", 54.5)
    _finished(tmp_path / "minilm-table1" / "tmr-cam-mi-shuffled" / "seed1", 53.25)
    lines = ab.report(tmp_path, [1, 2, 3], regime="minilm").splitlines()
    assert "| tmr-cam-mi | 54.50 (1 seed) | 90.94 |" in lines and "| tmr | pending | 89.05 |" in lines
    assert (
        "| TMR + CAM + MI beats text-only BERT (paper +31.54) | +4.50 (+4.50) | - | - "
        "| pending (one seed, no seed-to-seed spread yet) |" in lines
    )
    assert (
        "| captions' content matters: real captions beat shuffled ones (control) | +1.25 (+1.25) | - | - "
        "| pending (one seed, no seed-to-seed spread yet) |" in lines
    )
    assert (
        "One-seed comparisons below count as beyond noise when over t x sqrt(2) x the pooled seed-to-seed std of "
        "Table 1's caption rows: pending (no caption row has two finished seeds yet)." in lines
    )


def test_minilm_precision_table_sets_fp32_minus_bf16_against_the_text_rows_one_seed_noise(bench, tmp_path):
    ab = bench("offline_ablations")
    minilm = ab.REGIMES["minilm"]
    _dev_run(tmp_path / "minilm-precision" / "bert-bf16" / "seed1", 55.0, 59.0, best_epoch=5)
    assert ab.precision_table(tmp_path, minilm, [1, 2, 3])[-2:] == ["fp32 - bf16: pending.", ""]
    _dev_run(tmp_path / "minilm-precision" / "bert-fp32" / "seed1", 56.0, 60.5, best_epoch=4)
    lines = ab.precision_table(tmp_path, minilm, [1, 2, 3])
    assert lines[:6] == [
        "## MiniLM text row in bf16 and fp32 (minilm-precision, seed 1; speed.bf16: bf16 autocast or fp32)",
        "",
        "| precision | val micro-F1 | best epoch | test micro-F1 |",
        "|---|---|---|---|",
        "| bf16 | 55.00 | 5 | 59.00 |",
        "| fp32 | 56.00 | 4 | 60.50 |",
    ]
    no_spread = "fp32 - bf16: val +1.00, test +1.50; test: pending (the text row has fewer than two seeds"
    assert lines[-2].startswith(no_spread)
    # the std of the text row's own 2 or 3 seeds: Student's t at 1 or 2 degrees of freedom, not 1.96 (which
    # would call 1.50 beyond 1.96 x sqrt(2) x 0.5 = 1.39 at the three seeds below)
    _finished(tmp_path / "minilm-table1" / "bert" / "seed1", 59.0)
    _finished(tmp_path / "minilm-table1" / "bert" / "seed2", 60.0)  # std 0.7071: 12.706 x sqrt(2) x 0.7071
    two = "fp32 - bf16: val +1.00, test +1.50; test: within the text row's one-seed noise 12.71 (t(1) x sqrt(2) x "
    assert ab.precision_table(tmp_path, minilm, [1, 2, 3])[-2] == two + "the std of its seeds 1, 2)."
    _finished(tmp_path / "minilm-table1" / "bert" / "seed3", 59.5)  # std 0.5: 4.303 x sqrt(2) x 0.5 = 3.04
    three = "within the text row's one-seed noise 3.04 (t(2) x sqrt(2) x the std of its seeds 1, 2, 3)."
    assert (
        ab.precision_table(tmp_path, minilm, [1, 2, 3])[-2]
        == f"fp32 - bf16: val +1.00, test +1.50; test: {three}"
    )
    (tmp_path / "minilm-precision" / "bert-fp32" / "seed1" / "metrics.json").write_text(
        json.dumps({"val": {"f1": 56.0}, "test": {"f1": 62.5}})
    )
    beyond = ab.precision_table(tmp_path, minilm, [1, 2, 3])[-2]
    assert beyond == f"fp32 - bf16: val +1.00, test +3.50; test: {three.replace('within', 'beyond')}"
    assert "## MiniLM text row in bf16 and fp32" in ab.report(tmp_path, regime="minilm")


def test_minilm_runs_no_encoder_and_the_dev_run_at_the_presets_lr_is_table1s_text_row(bench, tmp_path):
    """minilm-lr's 5e-5 run (minilm-bert's own lr) at seed 1 is minilm-table1's bert seed 1: copied across the
    grids; the 2e-5 run is no other grid's run."""
    from camim.runs import RunFolder
    from camim.training.api import resolve_run_config

    ab = bench("offline_ablations")
    minilm = ab.REGIMES["minilm"]
    assert minilm.grids == ("minilm-lr", "minilm-table1", "minilm-precision", "minilm-table2")
    assert not minilm.pretrained_encoder
    assert [minilm.seeds(g, [1, 2, 3], 2) for g in minilm.grids] == [[1], [1, 2, 3], [1], [1, 2]]
    assert ab._common(None, ["optim.epochs=1"]) == ["optim.epochs=1"]  # no offline.pretrained_encoder
    out, data = tmp_path / "out", str(tmp_path / "data")
    for row in ab._rows("minilm-lr")[:2]:  # 2e-5 and 5e-5
        source = ab._folder(out, "minilm-lr", row["label"], 1)
        cfg = resolve_run_config(
            row["preset"], [*row["overrides"], *ab._common(None), "optim.seed=1"], data, source
        )
        source.mkdir(parents=True)
        RunFolder(source).write_config(cfg.to_dict())
        (source / "metrics.json").write_text(
            json.dumps({"val": {"f1": 1.0}, "test": {"f1": float(row["x"][0])}})
        )
    assert ab.share_finished_runs(out, "minilm-table1", [1, 2], data, None, []) == 1
    found = {r["label"]: ab.f1_per_seed(out, "minilm-table1", r["label"]) for r in ab._rows("minilm-table1")}
    assert {label: f1 for label, f1 in found.items() if f1} == {"bert": {1: 5.0}}
    assert ab.share_finished_runs(out, "minilm-table2", [1], data, None, []) == 0
    # the precision grid's bf16 row is the text row too (speed.bf16 is minilm-bert's default); fp32 is not
    assert ab.share_finished_runs(out, "minilm-precision", [1], data, None, []) == 1
    assert ab.f1_per_seed(out, "minilm-precision", "bert-bf16") == {1: 5.0}
    assert ab.f1_per_seed(out, "minilm-precision", "bert-fp32") == {}


def test_main_minilm_defaults_refusals_and_a_broken_metrics_file(bench, tmp_path, capsys, monkeypatch):
    ab = bench("offline_ablations")
    with pytest.raises(SystemExit):
        ab.main(["--regime", "minilm", "--grids", "offline-fig4", "--report-only"])
    with pytest.raises(SystemExit):
        ab.main(["--regime", "minilm", "--encoder", str(tmp_path), "--report-only"])
    assert "the minilm regime pretrains no encoder" in capsys.readouterr().err
    monkeypatch.setattr(
        ab, "RESULTS", tmp_path / "results"
    )  # --archive without a folder: <RESULTS>/minilm_ablations
    out = tmp_path / "out"
    _finished(out / "minilm-table1" / "bert" / "seed1", 50.0)
    assert ab.main(["--regime", "minilm", "--output", str(out), "--report-only", "--archive"]) == 0
    assert ab.f1_per_seed(tmp_path / "results" / "minilm_ablations", "minilm-table1", "bert") == {1: 50.0}
    assert "| bert | 50.00 (1 seed) |" in capsys.readouterr().out
    (out / "minilm-table1" / "bert" / "seed1" / "metrics.json").write_text("{not json")
    assert ab.main(["--regime", "minilm", "--output", str(out), "--report-only"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("offline_ablations: error: ") and "seed1/metrics.json" in err and "\n" not in err
