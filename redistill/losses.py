"""Distillation losses: pure torch functions on already-aligned tensors.

Alignment convention: ``logits[b, t]`` is the student's prediction for ``labels[b, t]`` (the caller
shifts by one). Positions whose label is ``IGNORE`` (-100: prompt, padding) contribute nothing.

Sparse top-k KD (Gemma-style): the teacher API only returns its top-k logprobs per generated token, not
the full distribution. We therefore:

1. renormalise the teacher over its k ids at temperature T: ``p_i = softmax_i(teacher_logprob_i / T)``
   (k entries; missing slots are masked out with ``teacher_mask``);
2. take the student's log-softmax over the FULL vocabulary at temperature T and gather it at those
   ids: ``log q_i = log_softmax(z / T)[id_i]``. We deliberately do not renormalise the student over the
   k ids: the loss must also push the student's mass off tokens the teacher never ranked, otherwise a
   student spreading probability on junk tokens outside the top-k would look perfect;
3. per position ``KL = sum_i p_i (log p_i - log q_i)``. Because ``sum_i q_i <= 1`` this is >= 0
   (Gibbs), and 0 exactly when the student puts p on the teacher's top-k and nothing elsewhere;
4. average over positions that have teacher top-k, multiply by T^2 (Hinton et al.: keeps the soft
   term's gradient magnitude independent of T), and mix with hard-label CE:
   ``loss = alpha * T^2 * KL + (1 - alpha) * CE``. Positions without top-k get CE only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def sequence_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy on the teacher's text, over the positions whose label is not IGNORE."""
    vocab = logits.size(-1)
    mask = labels != IGNORE
    if not bool(mask.any()):
        return logits.sum() * 0.0  # keeps the graph alive for an all-masked batch
    return F.cross_entropy(logits.reshape(-1, vocab).float(), labels.reshape(-1), ignore_index=IGNORE)


def sparse_topk_kl(
    logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Mean per-position KL(teacher top-k renormalised || student at those ids), unscaled.

    Shapes: logits [B, T, V]; teacher_ids/teacher_logprobs/teacher_mask [B, T, K]. A position counts when
    at least one of its K slots is set in ``teacher_mask``.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    position_has = teacher_mask.any(dim=-1)
    if not bool(position_has.any()):
        return logits.sum() * 0.0
    neg_inf = torch.finfo(torch.float32).min
    t_scaled = (teacher_logprobs.float() / temperature).masked_fill(~teacher_mask, neg_inf)
    p = torch.softmax(t_scaled, dim=-1)
    log_p = torch.log_softmax(t_scaled, dim=-1)
    log_q_full = torch.log_softmax(logits.float() / temperature, dim=-1)
    log_q = torch.gather(log_q_full, -1, teacher_ids.clamp(min=0))
    per_slot = torch.where(teacher_mask, p * (log_p - log_q), torch.zeros_like(p))
    per_position = per_slot.sum(dim=-1)
    return per_position[position_has].mean()


def topk_kd_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_mask: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``alpha * T^2 * sparse_topk_kl + (1 - alpha) * sequence_ce`` (see the module docstring)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    kl = sparse_topk_kl(logits, teacher_ids, teacher_logprobs, teacher_mask, temperature)
    ce = sequence_ce(logits, labels)
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce
