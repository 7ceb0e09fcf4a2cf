"""Losses against values worked out by hand."""
import math

import pytest
import torch

from redistill.losses import IGNORE, sequence_ce, sparse_topk_kl, topk_kd_loss


def _uniform(v=3):
    return torch.zeros(1, 1, v, requires_grad=True)


def test_sequence_ce_uniform_is_log_vocab_and_ignores_masked():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0] = torch.tensor([10.0, 0, 0, 0])  # masked position: must not count
    labels = torch.tensor([[IGNORE, 2, 3]])
    assert sequence_ce(logits, labels).item() == pytest.approx(math.log(4))


def test_sequence_ce_confident_correct_is_small():
    logits = torch.tensor([[[0.0, math.log(9.0)]]])  # p(label=1) = 0.9
    assert sequence_ce(logits, torch.tensor([[1]])).item() == pytest.approx(-math.log(0.9))


def test_topk_kl_renormalises_teacher_over_k_ids():
    # Teacher top-2: 0.5 and 0.25 -> renormalised 2/3, 1/3. Student uniform over 3 -> q = 1/3.
    ids = torch.tensor([[[0, 1]]])
    lps = torch.tensor([[[math.log(0.5), math.log(0.25)]]])
    mask = torch.ones(1, 1, 2, dtype=torch.bool)
    expected = (2 / 3) * math.log((2 / 3) / (1 / 3)) + (1 / 3) * math.log((1 / 3) / (1 / 3))
    assert sparse_topk_kl(_uniform(), ids, lps, mask, 1.0).item() == pytest.approx(expected, rel=1e-5)


def test_topk_kl_zero_when_student_matches_and_masked_slot_ignored():
    ids = torch.tensor([[[0, 1, 2]]])
    lps = torch.tensor([[[math.log(0.8), math.log(0.2), 0.0]]])
    mask = torch.tensor([[[True, True, False]]])
    logits = torch.tensor([[[math.log(0.8), math.log(0.2), -1e4]]])
    assert sparse_topk_kl(logits, ids, lps, mask, 1.0).item() == pytest.approx(0.0, abs=1e-5)


def test_kd_mix_with_temperature_matches_hand_value():
    ids = torch.tensor([[[0, 1]]])
    lps = torch.tensor([[[math.log(0.5), math.log(0.25)]]])
    mask = torch.ones(1, 1, 2, dtype=torch.bool)
    t = 2.0
    a, b = math.sqrt(0.5), math.sqrt(0.25)  # exp(logp / T)
    p = [a / (a + b), b / (a + b)]
    kl = sum(pi * math.log(pi / (1 / 3)) for pi in p)
    expected = 0.5 * t * t * kl + 0.5 * math.log(3)
    logits = _uniform()
    loss = topk_kd_loss(logits, torch.tensor([[1]]), ids, lps, mask, temperature=t, alpha=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()  # differentiable end to end
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_positions_without_topk_get_ce_only():
    ids = torch.zeros(1, 1, 2, dtype=torch.long)
    mask = torch.zeros(1, 1, 2, dtype=torch.bool)
    loss = topk_kd_loss(_uniform(), torch.tensor([[0]]), ids, torch.zeros(1, 1, 2), mask, temperature=2.0, alpha=0.5)
    assert loss.item() == pytest.approx(0.5 * math.log(3))


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        topk_kd_loss(_uniform(), torch.tensor([[0]]), torch.zeros(1, 1, 1, dtype=torch.long), torch.zeros(1, 1, 1),
                     torch.ones(1, 1, 1, dtype=torch.bool), temperature=1.0, alpha=1.5)
