"""Dynamic micro-batching: the engine's rules, and Predictor calls from many threads sharing one forward
with exactly the results of one post at a time (mixed posts, some of them failing alone)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from camim.data.types import Scores
from camim.errors import CamimError, ImageError
from camim.inference import Predictor, SpanError
from camim.inference.batching import BatchEngine

from .conftest import LABELS, draw, png_bytes, save_tiny_tmr


def echo(items):
    return [f"<{x}>" for x in items]


def taken(engine):
    """Wait until the worker has taken everything queued (it is now inside ``run``)."""
    deadline = time.monotonic() + 10
    while engine.depth and time.monotonic() < deadline:
        time.sleep(0.005)
    assert engine.depth == 0


def test_submissions_announced_together_run_as_one_forward():
    sizes = []
    engine = BatchEngine(echo, max_batch_size=8, max_wait_ms=5000, on_batch=lambda n, s: sizes.append(n))
    with engine.expect(8):  # 8 callers on their way: the worker waits for them (up to 5 s) ...
        with ThreadPoolExecutor(8) as pool:
            futures = list(pool.map(engine.submit, range(8)))
        results = [f.result(timeout=10) for f in futures]  # ... and runs the moment the 8th arrives
    assert results == [f"<{i}>" for i in range(8)]
    assert sizes == [8] and all(f.batch_size == 8 for f in futures)


def test_a_lone_submission_does_not_wait_for_company():
    engine = BatchEngine(echo, max_batch_size=8, max_wait_ms=60_000)
    start = time.monotonic()
    assert engine.submit("a").result(timeout=30) == "<a>"
    assert time.monotonic() - start < 30  # nothing announced: the 60 s window is not waited for


def test_the_callers_a_forward_answered_are_waited_for():
    """Four client loops: each sends its next item when it has its answer. The worker waits for all four
    to come back (up to max_wait_ms) instead of running the first one back alone."""
    sizes = []
    engine = BatchEngine(echo, max_batch_size=4, max_wait_ms=5000, on_batch=lambda n, s: sizes.append(n))
    assert [f.result(timeout=10) for f in engine.submit_many([0, 1, 2, 3])] == ["<0>", "<1>", "<2>", "<3>"]

    def client(k):
        time.sleep(0.05 * k)  # the four come back at different times
        return engine.submit(10 + k).result(timeout=10)

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(client, range(4))) == ["<10>", "<11>", "<12>", "<13>"]
    assert sizes == [4, 4]
    lone = BatchEngine(echo, max_batch_size=4, max_wait_ms=60_000)
    assert lone.submit_many([1, 2])[1].result(timeout=10) == "<2>"
    # the two answered callers do not come back, a third arrives: it waits at most max_wait_ms (here 60 s,
    # so shorten it: the worker reads max_wait_ms afresh whenever it is woken)
    late = lone.submit(3)
    time.sleep(0.2)  # the worker is now waiting for the two that answered
    assert not late.done()
    lone.max_wait_ms = 0
    with lone.expect():  # entering and leaving wakes the worker
        pass
    assert late.result(timeout=10) == "<3>"


def test_batches_are_cut_at_max_batch_size_in_arrival_order():
    seen = []
    gate = threading.Event()

    def run(items):
        gate.wait(10)
        seen.append(list(items))
        return items

    engine = BatchEngine(run, max_batch_size=4, max_wait_ms=0)
    first = engine.submit(-1)  # holds the worker while the next ten queue up
    taken(engine)
    futures = engine.submit_many(list(range(10)))
    gate.set()
    assert [f.result(timeout=10) for f in futures] == list(range(10)) and first.result(timeout=10) == -1
    assert seen == [[-1], [0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    engine.max_batch_size = 1  # batching off: one item per forward
    assert [f.result(timeout=10) for f in engine.submit_many([1, 2])] == [1, 2]
    assert seen[-2:] == [[1], [2]]


def test_errors_fail_their_own_item_or_their_batch_and_never_the_worker():
    def run(items):
        if "boom" in items:
            raise RuntimeError("the forward failed")
        return [ValueError(f"bad {x}") if x == "bad" else x for x in items]

    engine = BatchEngine(run, max_batch_size=8, max_wait_ms=0)
    gate = engine.submit_many(["ok", "bad", "fine"])
    assert gate[0].result(timeout=10) == "ok" and gate[2].result(timeout=10) == "fine"
    with pytest.raises(ValueError, match="bad bad"):
        gate[1].result(timeout=10)
    with pytest.raises(RuntimeError, match="the forward failed"):
        engine.submit("boom").result(timeout=10)
    assert engine.submit("after").result(timeout=10) == "after"
    engine.on_batch = lambda n, s: 1 / 0  # a broken metrics hook
    assert engine.submit("still answered").result(timeout=10) == "still answered"


def test_a_cancelled_submission_costs_no_forward():
    ran, gate = [], threading.Event()

    def run(items):
        gate.wait(10)
        ran.extend(items)
        return items

    engine = BatchEngine(run, max_batch_size=8, max_wait_ms=0)
    busy = engine.submit("busy")
    taken(engine)
    gone, kept = engine.submit_many(["gone", "kept"])
    assert gone.cancel() and engine.depth == 2
    gate.set()
    assert kept.result(timeout=10) == "kept" and busy.result(timeout=10) == "busy"
    assert engine.drain(10) and ran == ["busy", "kept"]


def test_threads_of_the_engine_do_not_outlive_their_work():
    """An idle engine's worker thread ends (a Predictor that is no longer used holds no thread)."""
    from camim.inference import batching

    engine = batching.BatchEngine(lambda items: items, max_wait_ms=0, name="camim-batcher-idle-test")
    assert engine.submit(1).result(timeout=10) == 1
    worker = next(t for t in threading.enumerate() if t.name == "camim-batcher-idle-test")
    original, batching.IDLE_EXIT_S = batching.IDLE_EXIT_S, 0.05
    try:
        assert engine.submit(2).result(timeout=10) == 2  # the worker now waits 0.05 s for more, then ends
        worker.join(timeout=10)
    finally:
        batching.IDLE_EXIT_S = original
    assert not worker.is_alive() and engine.submit(3).result(timeout=10) == 3  # and starts again


# ------------------------------------------------------------------ the Predictor's engine, a real model
class Captioner:
    """Captions an image by its size; fails on 13-pixel-wide images (a captioning server erroring)."""

    name = "size-captioner"

    def __call__(self, image):
        if image.width == 13:
            raise ConnectionError("captioning server unreachable")
        return f"a picture {image.width} pixels wide"


def estimate_scores(image, text, generated_image):
    """Scores from the image's first pixel; no estimate (None: uniform scores) for grey images."""
    r, g, b = image.convert("RGB").getpixel((0, 0))
    if r == g == b:
        return None
    return Scores(r / 255, g / 255, b / 255, 0.5)


@pytest.fixture(scope="module")
def tmr_longest(tmp_path_factory, tiny_text_dir, tiny_vision_dir):
    """A tiny TMR + CAM padding each batch to its longest post (so batch-mates change the tensor shapes)."""
    folder = tmp_path_factory.mktemp("tmr_longest") / "model"
    clean = {"unmasked_attention": False, "pad_inclusive_mean": False, "phrase_unmasked": False}
    return save_tiny_tmr(folder, tiny_text_dir, tiny_vision_dir, seed=2, pad_to_longest=True, fidelity=clean)


def mixed_posts():
    """Posts of different lengths, with a given / generated / failed caption, estimated / uniform scores;
    three of them are bad (a span outside the post, a corrupt image, no image for a model that needs one)."""
    from PIL import Image

    grey = Image.new("RGB", (40, 30), (90, 90, 90))
    posts = [
        ("rt jack plays for the titans today", "jack", "titans", draw(1), "two men playing football"),
        ("mery married nadal", "mery", "nadal", draw(2), None),  # captioned
        (
            "the festival was held in london on sunday with a crowd of people",
            "festival",
            "london",
            grey,
            None,
        ),
        ("rafael likes wales", "rafael", "wales", draw(3, (13, 20)), None),  # the captioner fails
        ("jack plays titans", (0, 1), (2, 9), draw(4), None),  # bad span
        ("jack plays titans", "jack", "titans", png_bytes(draw(5))[:50], None),  # corrupt image
        ("jack plays titans", "jack", "titans", None, "a caption but no image"),  # needs the image
        ("nadal held the crocodile in wales", (0, 1), (5, 6), draw(6), "a crocodile"),
    ]
    return posts


def call(predictor, post):
    text, head, tail, image, caption = post
    return predictor.predict(text, head, tail, image=image, caption=caption)


def test_predict_calls_from_threads_share_a_forward_and_match_one_at_a_time(tmr_longest):
    posts = mixed_posts()
    good = [0, 1, 2, 3, 7]
    sizes = []
    batched = Predictor.from_pretrained(
        tmr_longest, captioner=Captioner(), score_estimator=estimate_scores, max_wait_ms=10_000
    )
    batched.engine.max_batch_size = len(good)  # the forward runs the moment the last good post arrives
    batched.engine.on_batch = lambda n, s: sizes.append(n)
    with batched.engine.expect(len(posts)), ThreadPoolExecutor(len(posts)) as pool:
        outcomes = list(pool.map(lambda p: _outcome(batched, p), posts))
    assert sizes == [len(good)]  # the five good posts went through the model together

    alone = Predictor.from_pretrained(
        tmr_longest, captioner=Captioner(), score_estimator=estimate_scores, max_batch_size=1
    )
    for k, post in enumerate(posts):
        if k not in good:
            continue
        expected = call(alone, post)
        got = outcomes[k]
        assert got.relation == expected.relation and got.notes == expected.notes
        assert (got.caption, got.caption_source) == (expected.caption, expected.caption_source)
        got_p, exp_p = dict(got.distribution), dict(expected.distribution)
        assert max(abs(got_p[r] - exp_p[r]) for r in LABELS) <= 1e-5
    assert outcomes[1].caption_source == "generated" and outcomes[0].caption_source == "given"
    assert any("captioning failed (ConnectionError" in n for n in outcomes[3].notes)
    assert "scores" in outcomes[2].absent_modalities and "scores" not in outcomes[0].absent_modalities
    assert isinstance(outcomes[4], SpanError) and "outside" in str(outcomes[4])
    assert isinstance(outcomes[5], ImageError) and "not a readable image" in str(outcomes[5])
    assert isinstance(outcomes[6], CamimError) and "needs the image" in str(outcomes[6])
    assert batched.caption_failures == 1


def _outcome(predictor, post):
    try:
        return call(predictor, post)
    except CamimError as exc:
        return exc


def test_a_post_the_model_refuses_fails_alone_in_its_batch(bert_predictor, monkeypatch):
    """When the forward refuses one post (the processor raising for it), the batch is rerun post by post."""
    original = bert_predictor.processor

    def picky(examples):
        if any(ex.tokens[0] == "refused" for ex in examples):
            raise CamimError("this post cannot be encoded")
        return original(examples)

    prepared = [
        bert_predictor.prepare({"text": t, "head": "jack", "tail": "titans"})
        for t in ("jack plays titans", "refused jack titans", "titans like jack")
    ]
    monkeypatch.setattr(bert_predictor, "processor", picky)
    out = bert_predictor.run_prepared(prepared)
    assert isinstance(out[1], CamimError) and "cannot be encoded" in str(out[1])
    monkeypatch.setattr(bert_predictor, "processor", original)
    for k in (0, 2):
        assert out[k].probability == pytest.approx(
            bert_predictor.predict_prepared([prepared[k]])[0].probability
        )
