"""The paper's ablations on real MNRE text, offline (issue 30) or with MiniLM (issue 37): Table 1, 2 and Fig. 4.

Every caption model and the text-only model start from one `camim pretrain --from-scratch` encoder (built here
when ``--encoder`` does not hold a finished one; it is deterministic), with the `-dapt` presets' settings, which
were chosen on dev only. The grids are `camim experiment offline-table1 | offline-table2 | offline-fig4`
(``src/camim/configs/grids.yaml``); this script runs them into ``--output/<grid>/``, trains a run that several
grids share once (the Table 1 CAM + MI run is also Table 2's MiniCPM row and Fig. 4's alpha 0.1 and W&S points:
a finished run with the same resolved config is copied into the other grid's folder, where the grid reuses it),
and prints the tables with paired comparisons and, for each of the paper's claims, whether these runs agree.

    python benchmarks/offline_ablations.py --data-dir ../shared/data/mnre --jobs 2            # run, then report
    python benchmarks/offline_ablations.py --report-only                                     # tables so far
    python benchmarks/offline_ablations.py --archive benchmarks/results/offline_ablations    # keep the results

The runs take hours on 2 cores (about 24 min per caption-model run and 6 min per text-only run at 1 thread)
and resume: run the same command again. ``--archive DIR`` copies each finished run's ``config.yaml`` and
``metrics.json`` into DIR (small files a repository can keep); ``--restore DIR`` puts them back into
``--output`` first, where the grids reuse them (same data folder and encoder paths), so a session on a fresh
machine continues where the last one stopped. Numbers are NOT comparable with the paper's (no images, compact
encoders); the grid tables list every setting that differs.

``--regime minilm`` (issue 37) runs the same way with the bundled pretrained MiniLM encoder (``text_encoder:
minilm``; nothing is pretrained here, no ``offline.pretrained_encoder``) into ``runs/minilm_ablations``: the text
row's learning rate chosen on dev (``minilm-lr``, the first seed only; the report's dev table selects on val
micro-F1), Table 1's rows without images (``minilm-table1``; the dev-chosen run is also the text row's first seed
when ``minilm-bert``'s lr equals it, and is then copied, not trained again) and Table 2 (``minilm-table2``).
``--archive`` / ``--restore`` without a folder use ``benchmarks/results/<regime>_ablations``.

    python benchmarks/offline_ablations.py --regime minilm --data-dir ../shared/data/mnre --jobs 2 --archive
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from camim.errors import CamimError
from camim.reports import mean_std  # mean and sample std (ddof 1)

SMALL_FILES = ("config.yaml", "metrics.json")
#: the archive --archive / --restore use without a folder: <RESULTS>/<regime>_ablations
RESULTS = Path(__file__).resolve().parent / "results"
THE_REGIMES = object()  # their const: a str const would go through type=Path


@dataclass(frozen=True)
class Regime:
    """One regime's grids (``lr``: the text row's learning rate chosen on dev; ``fig4``: None where there is
    none) and how its report reads: ``title`` heads the tables, ``paper_column`` heads Table 1's paper column,
    ``text_rows`` adds the paper's other text rows to the BERT row's paper number, ``pretrained_encoder``: the
    runs start from one `camim pretrain` encoder (``offline.pretrained_encoder``); ``precision``: the text row
    in bf16 and fp32 at the first seed (None: no such grid)."""

    name: str
    title: str
    table1: str
    table2: str
    fig4: str | None = None
    lr: str | None = None
    precision: str | None = None
    paper_column: str = "paper (with images)"
    text_rows: bool = False
    pretrained_encoder: bool = False

    @property
    def grids(self) -> tuple[str, ...]:
        """In the order they run: the dev choice first, then Table 1 (whose runs the others share)."""
        return tuple(g for g in (self.lr, self.table1, self.precision, self.fig4, self.table2) if g)

    def seeds(self, grid: str, seeds: list[int], other_seeds: int) -> list[int]:
        """Table 1 runs every seed, the dev choice and the precision check the first, the others the first
        ``other_seeds``."""
        return (
            seeds
            if grid == self.table1
            else seeds[:1]
            if grid in (self.lr, self.precision)
            else seeds[:other_seeds]
        )


REGIMES = {
    "offline": Regime("offline", "Offline", "offline-table1", "offline-table2", fig4="offline-fig4",
                      pretrained_encoder=True),
    "minilm": Regime("minilm", "MiniLM", "minilm-table1", "minilm-table2", lr="minilm-lr",
                     precision="minilm-precision", paper_column="paper (TMR rows: with images)", text_rows=True),
}  # fmt: skip
GRIDS = REGIMES["offline"].grids


def _rows(grid: str) -> list[dict]:
    from camim.experiments.grids import grid_rows

    return grid_rows(grid)


def _folder(out: Path, grid: str, label: str, seed: int) -> Path:
    from camim.experiments.grids import slug

    return out / grid / slug(label) / f"seed{seed}"


def _finished_runs(root: Path) -> list[Path]:
    """The metrics.json of every finished run under ``root`` (``<grid>/<row>/seed<k>/``)."""
    return sorted(root.glob("*/*/seed*/metrics.json"))


def _common(encoder: Path | None, overrides: list[str] = ()) -> list[str]:
    """Every run's overrides: ``overrides``, after the pretrained encoder's folder where the regime has one."""
    return [*([f"offline.pretrained_encoder={encoder}"] if encoder else []), *overrides]


def ensure_encoder(data_dir: str, encoder: Path, overrides: list[str]) -> None:
    """The `camim pretrain --from-scratch` encoder with its defaults (20 epochs, text + MiniCPM captions) and
    ``overrides`` (smoke runs only)."""
    from camim.pretraining.pretrain import CARD, pretrain, pretrain_config

    if (encoder / CARD).is_file():
        return
    t0 = time.time()
    res = pretrain(pretrain_config(overrides, from_scratch=True), data_dir, encoder)
    print(f"pretrained {encoder}: {res.card['steps']} steps, final MLM loss {res.card['final_mlm_loss']:.4f} "
          f"({(time.time() - t0) / 60:.1f} min)", flush=True)  # fmt: skip


def share_finished_runs(
    out: Path, grid: str, seeds: list[int], data_dir: str, encoder: Path | None, overrides: list[str]
) -> int:
    """Copy a finished run of another grid into this grid's folder where the resolved configs are equal (the
    grid then reuses it instead of training it again); the number copied."""
    from camim.runs import RunFolder
    from camim.training.api import differences_from, resolve_run_config

    finished = [RunFolder(p.parent) for p in _finished_runs(out)]
    copied = 0
    for row in _rows(grid):
        for seed in seeds:
            target = _folder(out, grid, row["label"], seed)
            if target.exists():  # finished, or started: the grid resumes it
                continue
            run_overrides = [*row["overrides"], *_common(encoder, overrides), f"optim.seed={seed}"]
            differences = differences_from(resolve_run_config(row["preset"], run_overrides, data_dir, target))
            source = next((f for f in finished if f.path != target and not differences(f.config_path)), None)
            if source is not None:
                shutil.copytree(source.path, target)
                copied += 1
                print(
                    f"  {grid} {row['label']} seed {seed}: the same run as {source.path} (copied)", flush=True
                )
    return copied


def run(args: argparse.Namespace) -> int:
    from camim.experiments.grids import run_grid
    from camim.experiments.launch import Launch

    regime = REGIMES[args.regime]
    if regime.pretrained_encoder:
        ensure_encoder(args.data_dir, args.encoder, args.pretrain_overrides)
    encoder = args.encoder if regime.pretrained_encoder else None
    failed = 0
    for grid in args.grids:
        seeds = regime.seeds(grid, args.seeds, args.other_seeds)
        share_finished_runs(args.output, grid, seeds, args.data_dir, encoder, args.overrides)
        report = run_grid(grid, args.data_dir, args.output / grid, seeds, _common(encoder, args.overrides),
                          launch=Launch(jobs=args.jobs))  # fmt: skip
        failed += len(report.failed) if report else 0
        if report:
            print(f"wrote {report.path}", flush=True)
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------- archive
def archive(out: Path, dest: Path) -> int:
    """Copy each finished run's small files (:data:`SMALL_FILES`) from ``out`` into ``dest``."""
    n = 0
    for metrics in _finished_runs(out):
        rel = metrics.parent.relative_to(out)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in SMALL_FILES:
            shutil.copy2(metrics.parent / name, dest / rel / name)
        n += 1
    return n


def restore(src: Path, out: Path) -> int:
    """Put archived runs back into ``out`` (only where ``out`` has no run yet)."""
    n = 0
    for metrics in _finished_runs(src):
        target = out / metrics.parent.relative_to(src)
        if target.exists():
            continue
        target.mkdir(parents=True)
        for name in SMALL_FILES:
            shutil.copy2(metrics.parent / name, target / name)
        n += 1
    return n


# ------------------------------------------------------------------------------------------------ report
def f1_per_seed(out: Path, grid: str, label: str, seeds: list[int] | None = None) -> dict[int, float]:
    """Test F1 of each finished seed of a grid row (of ``seeds`` only, when given), in seed order."""
    row = _folder(out, grid, label, 0).parent
    found = {int(m.parent.name[4:]): m for m in row.glob("seed*/metrics.json")}
    return {s: _metrics(found[s].parent)["test"]["f1"] for s in sorted(found) if seeds is None or s in seeds}


def cell(values: dict[int, float]) -> str:
    """``mean ± std (seed values)``, or the one seed's value, or "pending"."""
    if not values:
        return "pending"
    m, s = mean_std(list(values.values()))
    seeds = ", ".join(f"{v:.2f}" for v in values.values())
    return f"{m:.2f} ± {s:.2f} ({seeds})" if len(values) > 1 else f"{m:.2f} (1 seed)"


def paired(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """``a - b`` on the seeds both have: mean, per seed, a two-sided paired t-test's p and the smallest mean
    difference that test would call significant at 0.05 with these differences' spread, ``needed`` (n >= 2)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    m, sd = mean_std(diffs)
    p = needed = None
    if len(diffs) > 1 and sd == 0:  # every seed moved by the same amount: t is infinite (or 0/0: no change)
        p, needed = (1.0 if m == 0 else 0.0), 0.0
    elif len(diffs) > 1:
        from scipy.stats import t as student_t

        n, df = len(diffs), len(diffs) - 1
        p = float(2 * student_t.sf(abs(m / (sd / math.sqrt(n))), df))
        needed = float(student_t.ppf(0.975, df) * sd / math.sqrt(n))
    return {"mean": m, "per_seed": dict(zip(seeds, diffs)), "p": p, "n": len(diffs), "needed": needed}


def one_seed_noise(rows: list[dict[int, float]]) -> float | None:
    """t x sqrt(2) x the pooled seed-to-seed std of ``rows`` (those with several seeds): how far apart two runs
    that differ only in their seed fall 95% of the time. ``t`` is Student's 0.975 quantile at the pooled degrees
    of freedom (:func:`pooled_df`), since the std itself comes from few seeds (1.96 with the std of 2 or 3 seeds
    would call 30% or 19% of such pairs apart, not 5%). None without a row of several seeds."""
    several = [list(r.values()) for r in rows if len(r) > 1]
    if not several:
        return None
    from scipy.stats import t as student_t

    variances = [mean_std(v)[1] ** 2 for v in several]
    q = float(student_t.ppf(0.975, pooled_df(rows)))
    return q * math.sqrt(2 * sum(variances) / len(variances))


def pooled_df(rows: list[dict[int, float]]) -> int:
    """The degrees of freedom of the pooled seed-to-seed std of ``rows``: the sum over rows of seeds - 1."""
    return sum(len(r) - 1 for r in rows if len(r) > 1)


def verdict(expected_sign: int, comparison: dict | None, noise: float | None) -> str:
    """agrees / disagrees / within noise: with several seeds, a paired t-test at 0.05; with one seed, the
    difference against ``noise``, the 95% range of the difference of two runs that differ only in their seed
    (:func:`one_seed_noise`)."""
    if comparison is None:
        return "pending"
    m = comparison["mean"]
    if comparison["n"] > 1:
        significant = comparison["p"] is not None and comparison["p"] < 0.05
    elif noise is None:
        return "pending (one seed, no seed-to-seed spread yet)"
    else:
        significant = abs(m) > noise
    if not significant:
        return "within noise"
    return "agrees" if m * expected_sign > 0 else "disagrees"


#: Table 1's claims (text, row a, row b, the sign of a - b the paper reports); a regime's report makes those
#: whose two rows its Table 1 grid has
CLAIMS = [
    ("TMR + CAM beats TMR (paper +0.91)", "tmr-cam", "tmr", 1),
    ("TMR + MI beats TMR (paper +0.16)", "tmr-mi", "tmr", 1),
    ("TMR + CAM + MI beats TMR + CAM (paper +0.98)", "tmr-cam-mi", "tmr-cam", 1),
    ("TMR + CAM + MI beats TMR + MI (paper +1.73)", "tmr-cam-mi", "tmr-mi", 1),
    ("TMR + CAM + MI beats TMR (paper +1.89)", "tmr-cam-mi", "tmr", 1),
    ("the captioned TMR beats text-only BERT (paper +29.65)", "tmr", "bert", 1),
    ("TMR + CAM + MI beats text-only BERT (paper +31.54)", "tmr-cam-mi", "bert", 1),
    ("captions' content matters: real captions beat shuffled ones (control)", "tmr-cam-mi",
     "tmr-cam-mi-shuffled", 1),
]  # fmt: skip


def report(
    out: Path, seeds: list[int] = (1, 2, 3), other_seeds: list[int] = (1,), regime: str = "offline"
) -> str:
    """The regime's tables: the text row's learning rate chosen on dev (the first seed; where the regime has
    that grid), Table 1 over ``seeds``, Table 2 and Fig. 4 (where it has one) over ``other_seeds`` (what was
    trained)."""
    r = REGIMES[regime]
    lines = lr_table(out, r, seeds[0]) if r.lr else []
    table1, noise = _table1(out, r, seeds)
    lines += table1
    lines += precision_table(out, r, seeds) if r.precision else []
    lines += _points_table(
        out, r.table2, f"{r.title} Table 2 (caption sources on CAM + MI)", noise, other_seeds
    )
    if r.fig4:
        title = f"{r.title} Fig. 4 (MI weight alpha, caption feature level)"
        lines += _points_table(out, r.fig4, title, noise, other_seeds)
    return "\n".join(lines)


def _noise_line(caption_rows: list[dict[int, float]], noise: float | None) -> str:
    """What one-seed comparisons are held against: the value of :func:`one_seed_noise`, or pending."""
    head = "One-seed comparisons below count as beyond noise when over t x sqrt(2) x the pooled seed-to-seed std of "
    if noise is None:
        return head + "Table 1's caption rows: pending (no caption row has two finished seeds yet)."
    return (head + f"Table 1's caption rows (t: Student's 0.975 quantile at their {pooled_df(caption_rows)} degrees of "
            "freedom; the 95% range of the difference of two runs that differ only in their seed): "
            f"{noise:.2f} F1.")  # fmt: skip


def _table1(out: Path, r: Regime, seeds: list[int]) -> tuple[list[str], float | None]:
    """Table 1 over ``seeds`` with the paired claims its rows allow, and the one-seed noise of its caption
    rows (:func:`one_seed_noise`)."""
    rows1 = _rows(r.table1)
    t1 = {row["label"]: f1_per_seed(out, r.table1, row["label"], seeds) for row in rows1}
    paper1 = {row["label"]: (row["paper"] or {}).get("f1") for row in rows1}
    if r.text_rows and paper1.get("bert"):
        paper1["bert"] = f"{paper1['bert']} ({_other_text_rows()})"
    caption_rows = [v for k, v in t1.items() if k != "bert"]
    noise = one_seed_noise(caption_rows)
    lines = [f"## {r.title} Table 1 (test micro-F1, mean ± std over seeds (each seed))", "",
             f"| row | ours | {r.paper_column} |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {k} | {cell(v)} | {paper1[k] or '-'} |" for k, v in t1.items()]
    lines += ["", "| claim | difference (per seed) | paired t-test p | significant from | here |",
              "|---|---|---|---|---|"]  # fmt: skip
    for text, a, b, sign in (c for c in CLAIMS if c[1] in t1 and c[2] in t1):
        c = paired(t1[a], t1[b])
        per_seed = "" if c is None else ", ".join(f"{d:+.2f}" for d in c["per_seed"].values())
        diff = "pending" if c is None else f"{c['mean']:+.2f} ({per_seed})"
        p = "-" if c is None or c["p"] is None else f"{c['p']:.3f}"
        needed = "-" if c is None or c["needed"] is None else f"± {c['needed']:.2f}"
        lines.append(f"| {text} | {diff} | {p} | {needed} | {verdict(sign, c, noise)} |")
    lines += ["", _noise_line(caption_rows, noise), ""]
    return lines, noise


def _other_text_rows() -> str:
    """The paper's other text-only rows of Table 1 (``table1_text`` in paper_results.yaml), for the BERT row."""
    from camim.training.config import load_paper_results

    rows = load_paper_results().get("table1_text") or {}
    return "other text rows: " + ", ".join(f"{v['row']} {v['f1']}" for v in rows.values())


# ------------------------------------------------------------------------------------- bf16 against fp32
def precision_table(out: Path, r: Regime, seeds: list[int]) -> list[str]:
    """The text row in bf16 and fp32 at the first seed (``r.precision``): val and test micro-F1, and fp32 - bf16
    against the text row's own one-seed noise (:func:`one_seed_noise` of Table 1's ``bert`` seeds, with
    Student's t: the std comes from that one row's 2 or 3 seeds)."""
    seed = seeds[0]
    runs = {row["x"]: _metrics(_folder(out, r.precision, row["label"], seed)) for row in _rows(r.precision)}
    lines = [f"## {r.title} text row in bf16 and fp32 ({r.precision}, seed {seed}; speed.bf16: bf16 autocast or fp32)", "",
             "| precision | val micro-F1 | best epoch | test micro-F1 |", "|---|---|---|---|"]  # fmt: skip
    for x, m in runs.items():
        epoch = "pending" if m is None else m.get("best_epoch") or "-"
        lines.append(f"| {x} | {_f1(m, 'val')} | {epoch} | {_f1(m, 'test')} |")
    text_seeds = f1_per_seed(out, r.table1, "bert", seeds)
    noise = one_seed_noise([text_seeds])
    bf16, fp32 = runs.get("bf16"), runs.get("fp32")
    if bf16 is None or fp32 is None or not bf16.get("test") or not fp32.get("test"):
        return [*lines, "", "fp32 - bf16: pending.", ""]
    diff = {s: fp32[s]["f1"] - bf16[s]["f1"] for s in ("val", "test") if bf16.get(s) and fp32.get(s)}
    said = ", ".join(f"{s} {d:+.2f}" for s, d in diff.items())
    if noise is None:
        call = "pending (the text row has fewer than two seeds: no seed-to-seed spread yet)"
    else:
        within = abs(diff["test"]) <= noise
        call = (f"{'within' if within else 'beyond'} the text row's one-seed noise {noise:.2f} "
                f"(t({len(text_seeds) - 1}) x sqrt(2) x the std of its seeds {', '.join(map(str, text_seeds))})")  # fmt: skip
    return [*lines, "", f"fp32 - bf16: {said}; test: {call}.", ""]


# --------------------------------------------------------------------------------- the dev choice of the lr
def lr_table(out: Path, r: Regime, seed: int) -> list[str]:
    """The text row's learning rate chosen on dev: per point of ``r.lr`` the val micro-F1 of its ``seed`` run
    (what selects), the best epoch metrics.json records and the test F1 (shown beside, never used); once every
    point has finished, the one with the highest val F1 (the first in the grid's order on a tie) and whether
    Table 1's text row trains at it."""
    rows = _rows(r.lr)
    runs = {row["x"]: _metrics(_folder(out, r.lr, row["label"], seed)) for row in rows}
    lines = [f"## {r.title} text row: the learning rate chosen on dev ({r.lr}, seed {seed})", "",
             "| lr | val micro-F1 (selects) | best epoch | test micro-F1 (not used) |", "|---|---|---|---|"]  # fmt: skip
    for x, m in runs.items():
        epoch = "pending" if m is None else m.get("best_epoch") or "-"
        lines.append(f"| {x} | {_f1(m, 'val')} | {epoch} | {_f1(m, 'test')} |")
    val = {x: m["val"]["f1"] for x, m in runs.items() if m and m.get("val")}
    finished = sum(m is not None for m in runs.values())
    if finished < len(rows):
        choice = f"pending ({finished} of {len(rows)} learning rates finished)"
    elif not val:
        choice = "none (no run has val scores)"
    else:
        best = max(val, key=val.get)
        chosen = next(row for row in rows if row["x"] == best)
        choice = f"lr {best} (val F1 {val[best]:.2f}); {_text_row_at(r, chosen, seed)}"
    return [*lines, "", f"Dev choice: {choice}.", ""]


def _text_row_at(r: Regime, chosen: dict, seed: int) -> str:
    """Whether Table 1's text row (``bert``) trains at the learning rate of the dev grid's ``chosen`` row."""
    from camim.training.config import load_config

    text = next(row for row in _rows(r.table1) if row["label"] == "bert")
    lr = load_config(text["preset"], text["overrides"]).optim.lr
    if load_config(chosen["preset"], chosen["overrides"]).optim.lr == lr:
        return f"{r.table1}'s bert row trains at it (its seed {seed} is this run: copied, not trained twice)"
    return f"{r.table1}'s bert row trains at lr {lr:g} ({text['preset']}'s), not at it: set optim.lr there"


def _metrics(folder: Path) -> dict | None:
    """A run folder's metrics.json, None while it has not finished."""
    from camim.runs import RunFolder

    run = RunFolder(folder)
    return run.read_metrics() if run.metrics_path.is_file() else None


def _f1(metrics: dict | None, split: str) -> str:
    if metrics is None:
        return "pending"
    return "-" if not metrics.get(split) else f"{metrics[split]['f1']:.2f}"


def best_point(ours: dict, paper: dict, noise: float | None) -> str:
    """Where the paper's best point stands among one-seed points: it *agrees* when it is best here too by more
    than ``noise`` over every other point, *disagrees* when another point beats it by more than ``noise``, else
    it is *within noise* (whichever point happens to be highest)."""
    best = max(ours, key=ours.get)
    paper_best = max(paper, key=lambda k: -math.inf if paper[k] is None else paper[k])
    margin = ours[paper_best] - max(v for k, v in ours.items() if k != paper_best)
    if noise is None:
        call = "pending (one seed, no seed-to-seed spread yet)"
    else:
        call = "agrees" if margin > noise else "disagrees" if -margin > noise else "within noise"
    return (f"best here {best} ({ours[best]:.2f}); the paper's best {paper_best} ({ours[paper_best]:.2f} here, "
            f"{margin:+.2f} against the best other point): {call}")  # fmt: skip


def _points_table(out: Path, grid: str, title: str, noise: float | None, seeds: list[int]) -> list[str]:
    """A grid of points over the ``seeds`` that every point with a finished run has finished (the first seed
    while some point lacks it): each point's F1 beside the paper's, and per group where the paper's best point stands
    (:func:`best_point`; the noise of a mean over n seeds is 1/sqrt(n) of one seed's)."""
    rows = _rows(grid)
    found = {r["label"]: f1_per_seed(out, grid, r["label"], seeds) for r in rows}
    started = [v for v in found.values() if v]  # points without any finished seed show "pending"
    seeds = [s for s in seeds if all(s in v for v in started)] or list(seeds[:1])
    values = {label: {s: v[s] for s in seeds if s in v} for label, v in found.items()}
    over = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± std over seeds {', '.join(map(str, seeds))}"
    later = sorted({s for v in found.values() for s in v} - set(seeds))
    lines = [
        f"## {title} (test micro-F1, {over})",
        *(
            [f"\nSeeds {', '.join(map(str, later))}: not finished for every point yet, left out."]
            if later
            else []
        ),
        "",
        "| row | ours | paper (with images) |",
        "|---|---|---|",
    ]
    for r in rows:
        ours = cell(values[r["label"]]) if len(seeds) > 1 else _one(values[r["label"]])
        lines.append(f"| {r['label']} | {ours} | {(r['paper'] or {}).get('f1', '-')} |")
    for group in dict.fromkeys(r["group"] for r in rows):
        members = [r for r in rows if r["group"] == group]
        done = {r["x"]: values[r["label"]] for r in members if len(values[r["label"]]) == len(seeds)}
        if len(done) < len(members):
            lines.append(f"\n{group}: pending ({len(done)} of {len(members)} points)")
            continue
        means = {x: mean_std(list(v.values()))[0] for x, v in done.items()}
        paper = {r["x"]: (r["paper"] or {}).get("f1") for r in members}
        lines.append(
            f"\n{group}: {best_point(means, paper, None if noise is None else noise / math.sqrt(len(seeds)))}"
        )
    return [*lines, ""]


def _one(values: dict[int, float]) -> str:
    return f"{next(iter(values.values())):.2f}" if values else "pending"


def main(argv: list[str] | None = None) -> int:
    """Run (unless ``--report-only``) and print the report; 1 with one line on a :class:`CamimError`."""
    ap = _parser()
    args = ap.parse_args(argv)
    r = REGIMES[args.regime]
    if not set(args.grids) <= set(r.grids):
        ap.error(f"--grids: the {r.name} regime's grids are {', '.join(r.grids)}")
    if not r.pretrained_encoder and (args.encoder or args.pretrain_overrides):
        ap.error(f"--encoder/--pretrain-set: the {r.name} regime pretrains no encoder")
    args.grids = args.grids or list(r.grids)
    args.output = (args.output or Path(f"runs/{r.name}_ablations")).resolve()
    args.encoder = (args.encoder or args.output / "pretrained_encoder").resolve()
    args.restore, args.archive = (
        RESULTS / f"{r.name}_ablations" if d is THE_REGIMES else d for d in (args.restore, args.archive)
    )
    try:
        if args.restore:
            print(
                f"restored {restore(args.restore, args.output)} finished runs from {args.restore}", flush=True
            )
        rc = 0 if args.report_only else run(args)
        print(report(args.output, args.seeds, args.seeds[: args.other_seeds], r.name))
        if args.archive:
            print(f"archived {archive(args.output, args.archive)} finished runs into {args.archive}")
    except CamimError as exc:
        print(f"offline_ablations: error: {exc}", file=sys.stderr)
        return 1
    return rc


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regime", choices=list(REGIMES), default="offline")
    ap.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnre")
    )
    ap.add_argument("--output", type=Path, help="default: runs/<regime>_ablations")
    ap.add_argument("--encoder", type=Path, default=None, help="default: <output>/pretrained_encoder")
    every_grid = list(dict.fromkeys(g for r in REGIMES.values() for g in r.grids))
    ap.add_argument("--grids", nargs="+", default=[], choices=every_grid, help="default: the regime's")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--other-seeds", type=int, default=1, help="seeds of Table 2 and Fig. 4 (the first N)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="applied to every run (smoke runs: data.train_limit=..., optim.epochs=1)",
    )
    ap.add_argument(
        "--pretrain-set", dest="pretrain_overrides", action="append", default=[], metavar="KEY=VALUE"
    )
    folder = "(default: benchmarks/results/<regime>_ablations)"
    ap.add_argument("--archive", type=Path, nargs="?", const=THE_REGIMES,
                    help=f"copy finished runs' config.yaml and metrics.json here {folder}")  # fmt: skip
    ap.add_argument("--restore", type=Path, nargs="?", const=THE_REGIMES,
                    help=f"put archived runs back into --output first {folder}")  # fmt: skip
    return ap


if __name__ == "__main__":
    sys.exit(main())
