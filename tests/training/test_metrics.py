import pytest
import torch

from camim.training.metrics import MREMetrics, per_relation_from_confusion, scores_from_confusion

NAMES = ["None", "a", "b"]


def test_hand_computed_micro_scores():
    # gold:  None None a a b b a None
    # pred:  None a    a b b None a a
    gold = torch.tensor([0, 0, 1, 1, 2, 2, 1, 0])
    pred = torch.tensor([0, 1, 1, 2, 2, 0, 1, 1])
    m = MREMetrics(3, negative_id=0, label_names=NAMES)
    m.update(pred[:3], gold[:3])
    m.update(pred[3:], gold[3:])
    s = m.compute()
    # correct = 4 of 8; correct_positive = 3 (a, b, a); pred_positive = 6; gold_positive = 5
    assert s["accuracy"] == pytest.approx(50.0)
    assert s["precision"] == pytest.approx(50.0)
    assert s["recall"] == pytest.approx(60.0)
    assert s["f1"] == pytest.approx(100 * 2 * 0.5 * 0.6 / 1.1)
    per = m.per_relation()
    # relation a: tp 2, predicted 4 (rows gold None, a, a, None), gold 3
    assert per["a"]["precision"] == pytest.approx(50.0)
    assert per["a"]["recall"] == pytest.approx(100 * 2 / 3)
    assert per["a"]["support"] == 3
    assert per["b"] == pytest.approx({"precision": 100 * 1 / 2, "recall": 50.0, "f1": 50.0, "support": 2})
    cm = m.confusion_matrix()
    assert cm.sum().item() == 8 and cm[1, 2].item() == 1 and cm[2, 0].item() == 1


def test_wrong_positive_counts_against_precision_and_recall_but_none_errors_do_not_inflate():
    # one gold 'a' predicted as 'b': P = R = 0; negative correctly predicted adds to accuracy only.
    s = scores_from_confusion(torch.tensor([[5, 0, 0], [0, 0, 1], [0, 0, 0]]), negative_id=0)
    assert s == pytest.approx({"accuracy": 100 * 5 / 6, "precision": 0.0, "recall": 0.0, "f1": 0.0})


def test_all_negative_predictions_give_zero_not_nan():
    m = MREMetrics(3)
    m.update(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 2, 0]))
    s = m.compute()
    assert s["precision"] == 0.0 and s["recall"] == 0.0 and s["f1"] == 0.0
    assert s["accuracy"] == pytest.approx(50.0)


def test_negative_label_not_first():
    # negative id 2: the same data relabelled gives the same micro scores
    gold = torch.tensor([0, 0, 1, 1, 2, 2, 1, 0])
    pred = torch.tensor([0, 1, 1, 2, 2, 0, 1, 1])
    perm = torch.tensor([2, 0, 1])  # old id -> new id
    m1, m2 = MREMetrics(3, negative_id=0), MREMetrics(3, negative_id=2)
    m1.update(pred, gold)
    m2.update(perm[pred], perm[gold])
    assert m1.compute() == pytest.approx(m2.compute())


def test_logits_accepted_and_reset():
    m = MREMetrics(3)
    logits = torch.tensor([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0]])
    m.update(logits, torch.tensor([1, 0]))
    assert m.compute()["f1"] == pytest.approx(100.0)
    m.reset()
    assert m.confusion.sum().item() == 0


def test_matches_sklearn_style_definition_on_random_data():
    g = torch.Generator().manual_seed(0)
    gold = torch.randint(0, 5, (200,), generator=g)
    pred = torch.where(torch.rand(200, generator=g) < 0.6, gold, torch.randint(0, 5, (200,), generator=g))
    m = MREMetrics(5)
    m.update(pred, gold)
    s = m.compute()
    pos = gold != 0
    tp = ((pred == gold) & pos).sum().item()
    p, r = tp / (pred != 0).sum().item(), tp / pos.sum().item()
    assert s["precision"] == pytest.approx(100 * p)
    assert s["recall"] == pytest.approx(100 * r)
    assert s["accuracy"] == pytest.approx(100 * (pred == gold).float().mean().item())
    per = per_relation_from_confusion(m.confusion, [str(i) for i in range(5)])
    assert sum(v["support"] for v in per.values()) == 200


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        MREMetrics(3, negative_id=3)
    m = MREMetrics(3)
    with pytest.raises(ValueError):
        m.update(torch.tensor([0, 1]), torch.tensor([0, 5]))
    with pytest.raises(ValueError):
        m.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="predicted label"):
        m.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    assert int(m.confusion.sum()) == 0  # nothing half-counted
