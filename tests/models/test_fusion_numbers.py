"""TMR's fusion, gating and pooling pinned to numbers: small hand-made tensors, expected values written out
from the formulas of reference §1.5-1.6 (not by calling the module), for the released and the clean reading;
and the order of the backbone calls, pinned by BatchNorm's running statistics (reference §1.2, §5.1)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tests.models.conftest import LABELS, make_examples, tiny_config

from camim.models import build_model
from camim.models.fusion import FusionModule, gate

C = 1 / math.sqrt(2)  # 1/sqrt(d), d = 2


def softmax(xs: list[float]) -> list[float]:
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def att(q: list[float], keys: list[list[float]], values: list[list[float]]) -> list[float]:
    """softmax(q·kᵀ/√d) v for one query row, single head."""
    p = softmax([C * sum(a * b for a, b in zip(q, k)) for k in keys])
    return [sum(p[j] * values[j][i] for j in range(len(keys))) for i in range(2)]


def tanh(v: list[float]) -> list[float]:
    return [math.tanh(x) for x in v]


def add(*vs: list[float]) -> list[float]:
    return [sum(xs) for xs in zip(*vs)]


def scale(a: float, v: list[float]) -> list[float]:
    return [a * x for x in v]


def linear(w: list[list[float]], b: list[float], x: list[float]) -> list[float]:
    return [sum(w[i][j] * x[j] for j in range(2)) + b[i] for i in range(2)]


# hand-set weights (W, b) of every fusion Linear; q, k and v differ so that a swap would show
WEIGHTS = {
    "linear_q_fine": ([[1.0, 0.5], [0.0, 1.0]], [0.5, 0.0]),
    "linear_k_fine": ([[1.0, 0.0], [0.0, 2.0]], [0.0, 0.0]),
    "linear_v_fine": ([[0.0, 1.0], [1.0, 0.0]], [0.0, 0.25]),
    "linear_q_coarse": ([[2.0, 0.0], [0.0, 1.0]], [0.0, 0.0]),
    "linear_k_coarse": ([[1.0, 1.0], [0.0, 1.0]], [0.0, 0.0]),
    "linear_v_coarse": ([[1.0, 0.0], [0.0, -1.0]], [0.5, 0.0]),
    "linear_extend_pic": ([[1.0, 0.0], [0.0, 1.0]], [0.1, -0.1]),
}
O_F = [[1.0, 0.0], [0.0, 2.0]]  # two query positions
H_TEXT = [[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]]  # three text positions
OBJECTS = [[1.0, 1.0], [0.0, -1.0]]  # o_1, o_2
H_PHR = [[1.0, 0.0], [0.0, 1.0]]


@pytest.fixture
def fusion() -> FusionModule:
    module = FusionModule(2)
    with torch.no_grad():
        for name, (w, b) in WEIGHTS.items():
            getattr(module, name).weight.copy_(torch.tensor(w))
            getattr(module, name).bias.copy_(torch.tensor(b))
    return module


def proj(name: str, rows: list[list[float]]) -> list[list[float]]:
    w, b = WEIGHTS[name]
    return [linear(w, b, r) for r in rows]


def t(rows) -> torch.Tensor:
    return torch.tensor([rows])


@pytest.mark.parametrize("cam", [True, False], ids=["CAMIM-tanh-pooled", "TMR-plain-pooled"])
def test_full_image_path_released(fusion, cam):
    """fine + pooled = Σ_q tanh(att(q_fine(O_F), k_fine(H), v_fine(H))) + P(Σ_q O_F), no masks (released)."""
    q, k, v = proj("linear_q_fine", O_F), proj("linear_k_fine", H_TEXT), proj("linear_v_fine", H_TEXT)
    fine = add(tanh(att(q[0], k, v)), tanh(att(q[1], k, v)))
    pooled = add(*O_F)  # [1, 2]
    expected = add(fine, tanh(pooled) if cam else pooled)
    got = fusion.full_image_path(t(O_F), None, t(H_TEXT), None, sum_pooling=True, tanh_pooled=cam)
    assert got[0].tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("cam", [True, False], ids=["CAMIM-tanh-pooled", "TMR-plain-pooled"])
def test_full_image_path_clean_reading(fusion, cam):
    """Clean reading: padded text keys masked, padded query rows dropped, sums divided by the real rows."""
    q_mask, text_mask = torch.tensor([[1, 1]]), torch.tensor([[1, 1, 0]])
    q, k, v = proj("linear_q_fine", O_F), proj("linear_k_fine", H_TEXT[:2]), proj("linear_v_fine", H_TEXT[:2])
    fine = scale(1 / 2, add(tanh(att(q[0], k, v)), tanh(att(q[1], k, v))))
    pooled = scale(1 / 2, add(*O_F))
    expected = add(fine, tanh(pooled) if cam else pooled)
    got = fusion.full_image_path(t(O_F), q_mask, t(H_TEXT), text_mask, sum_pooling=False, tanh_pooled=cam)
    assert got[0].tolist() == pytest.approx(expected, abs=1e-6)
    # a padded query row is dropped from both sums: only row 1 counts, n = 1
    q_mask = torch.tensor([[1, 0]])
    fine1 = tanh(att(q[0], k, v))
    expected1 = add(fine1, tanh(O_F[0]) if cam else O_F[0])
    got1 = fusion.full_image_path(t(O_F), q_mask, t(H_TEXT), text_mask, sum_pooling=False, tanh_pooled=cam)
    assert got1[0].tolist() == pytest.approx(expected1, abs=1e-6)
    # released sum pooling with the same masks: sums, not means
    got_sum = fusion.full_image_path(t(O_F), torch.tensor([[1, 1]]), t(H_TEXT), text_mask, True, cam)
    expected_sum = add(scale(2, fine), tanh(add(*O_F)) if cam else add(*O_F))
    assert got_sum[0].tolist() == pytest.approx(expected_sum, abs=1e-6)


@pytest.mark.parametrize("cam", [True, False], ids=["CAMIM-tanh-mean", "TMR-sum"])
@pytest.mark.parametrize("masked", [False, True], ids=["released-unmasked", "clean-masked"])
def test_object_path(fusion, cam, masked):
    """coarse + pooled = Σ_m tanh(att(q_coarse(o_m), k_coarse(H_phr), v_coarse(H_phr))) + tanh(mean_m o_m)
    (CAM) or Σ_m o_m (TMR); the clean reading masks padded phrase positions."""
    phr = H_PHR if not masked else H_PHR[:1]
    q, k, v = proj("linear_q_coarse", OBJECTS), proj("linear_k_coarse", phr), proj("linear_v_coarse", phr)
    coarse = add(tanh(att(q[0], k, v)), tanh(att(q[1], k, v)))
    pooled = tanh(scale(1 / 2, add(*OBJECTS))) if cam else add(*OBJECTS)
    mask = torch.tensor([[1, 0]]) if masked else None
    got = fusion.object_path(t(OBJECTS), t(H_PHR), mask, cam=cam)
    assert got[0].tolist() == pytest.approx(add(coarse, pooled), abs=1e-6)


def test_gate_and_final(fusion):
    """O_gated = strong · full + weak · objects; O_final = tanh(linear_extend_pic(O_gated))."""
    strong, weak = torch.tensor([0.25, 1.0]), torch.tensor([0.75, 0.0])
    full, objects = torch.tensor([[1.0, -2.0], [3.0, 4.0]]), torch.tensor([[4.0, 8.0], [9.0, 9.0]])
    got = gate(strong, full, weak, objects)
    assert got.tolist() == [[3.25, 5.5], [3.0, 4.0]]  # 0.25·1 + 0.75·4, 0.25·(-2) + 0.75·8; strong = 1
    w, b = WEIGHTS["linear_extend_pic"]
    expected = [tanh(linear(w, b, row)) for row in got.tolist()]
    assert fusion.final(got).tolist() == [pytest.approx(r, abs=1e-6) for r in expected]


@pytest.mark.parametrize("cam", ["none", "both"])
def test_tmr_gates_with_released_score_columns(text_dir, vision_dir, cam):
    """Scores are [weak_ori, strong_ori, weak_dif, strong_dif]: "strong" scales the full-image path and "weak"
    the object path, per side; the gated sums are what linear_extend_pic receives (ori first, then dif)."""
    torch.manual_seed(0)
    model = build_model(tiny_config(text_dir, vision_dir, cam=cam, mi=False), LABELS).eval()
    batch = model.processor(make_examples(2))
    seen: list[torch.Tensor] = []
    model.fusion.linear_extend_pic.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))

    def gated(scores: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        seen.clear()
        batch.scores = torch.tensor([scores, scores])
        with torch.no_grad():
            model(batch)
        return seen[0], seen[1]

    ori_obj, dif_obj = gated([1.0, 0.0, 1.0, 0.0])  # weak only: the object paths
    ori_full, dif_full = gated([0.0, 1.0, 0.0, 1.0])  # strong only: the full-image paths
    ori, dif = gated([0.3, 0.7, 0.6, 0.4])
    torch.testing.assert_close(ori, 0.3 * ori_obj + 0.7 * ori_full)
    torch.testing.assert_close(dif, 0.6 * dif_obj + 0.4 * dif_full)
    assert not torch.allclose(ori_obj, ori_full) and not torch.allclose(ori_full, dif_full)


# ----------------------------------------------------------------------------- backbone call order


def bn_stats(backbone) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in backbone.state_dict().items() if "running_" in k}


def assert_same_stats(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_tmr_backbone_calls_in_released_order(text_dir, vision_dir):
    """After one train-mode forward, the backbone's BN running mean/var equal those of four hand calls in the
    released order (generated image, original image, generated crops, original crops; CAMIM.forward)."""
    torch.manual_seed(0)
    model = build_model(tiny_config(text_dir, vision_dir, cam="both"), LABELS).train()
    batch = model.processor(make_examples(3))
    before = copy.deepcopy(model.resnet)
    model(batch)
    calls = {
        "generated": batch.generated_image,
        "original": batch.image,
        "generated crops": batch.generated_objects.flatten(0, 1),
        "original crops": batch.objects.flatten(0, 1),
    }

    def by_hand(order: list[str]) -> dict:
        backbone = copy.deepcopy(before).train()
        with torch.no_grad():
            for name in order:
                backbone.patch_tokens(calls[name])
        return bn_stats(backbone)

    assert_same_stats(
        bn_stats(model.resnet), by_hand(["generated", "original", "generated crops", "original crops"])
    )
    # the order matters (momentum 0.1): the paper-reading order gives other statistics
    other = by_hand(["original", "generated", "original crops", "generated crops"])
    assert not torch.allclose(bn_stats(model.resnet)["model.embedder.embedder.normalization.running_mean"],
                              other["model.embedder.embedder.normalization.running_mean"])  # fmt: skip


def test_hvpnet_backbone_calls_in_released_order(text_dir, vision_dir):
    """HVPNeT's ImageModel: the main image, then each of the 3 aux crops in turn (separate calls)."""
    torch.manual_seed(0)
    model = build_model(
        tiny_config(text_dir, vision_dir, name="hvpnet", image_size=64, cam="none", mi=False), LABELS
    ).train()
    batch = model.processor(make_examples(3))
    before = copy.deepcopy(model.resnet)
    model(batch)
    backbone = copy.deepcopy(before).train()
    with torch.no_grad():
        for pixels in [batch.image] + [batch.objects[:, i] for i in range(batch.objects.shape[1])]:
            backbone.stages(pixels)
    assert batch.objects.shape[1] == 3
    assert_same_stats(bn_stats(model.resnet), bn_stats(backbone))
