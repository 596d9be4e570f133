"""Distillation losses: pure functions of tensors, averaged over the batch.

Notation for one sample: q_T the teacher's outputs (Q-values or logits) over
the game's actions, z_S the student's logits, tau > 0 the temperature, m the
action mask (1 for the game's actions, 0 for padding when games of different
action counts share a batch). Softmaxes run over the masked actions only.

IE-KD's terms (Huang et al. 2021) compare factors: k numbers per sample
that an encoder computes from a feature vector (the teacher's features, or
one half of the student's shared hidden layer).

All functions are written with `keras.ops` and run on every Keras backend.
"""

from __future__ import annotations

import multidistill

multidistill.import_keras_quietly()

from keras import ops  # noqa: E402

_NEG = -1e9


def _masked(x, mask):
    return ops.where(mask > 0, x, _NEG)


def kl(teacher_outputs, student_logits, temperature=1.0, action_mask=None):
    """Temperature-sharpened KL divergence, teacher || student (Rusu et al.).

        p_T = softmax(q_T / tau),  log p_S = log_softmax(z_S)
        loss = mean_batch  sum_a p_T(a) * (log p_T(a) - log p_S(a))

    The temperature divides the teacher only: tau < 1 sharpens Q-values whose
    action gaps are small (0.01 was best on Atari); tau = 1 keeps a policy
    teacher's distribution as it is.

    Args:
      teacher_outputs: (B, A) float.
      student_logits: (B, A) float.
      temperature: scalar or (B,) per sample.
      action_mask: (B, A) or (A,) of 0/1; None means all actions valid.

    Returns:
      Scalar, the batch mean.
    """
    teacher_outputs = ops.cast(teacher_outputs, "float32")
    student_logits = ops.cast(student_logits, "float32")
    mask = ops.ones_like(teacher_outputs) if action_mask is None else action_mask
    tau = ops.cast(temperature, "float32")
    if len(ops.shape(tau)) == 1:
        tau = ops.expand_dims(tau, -1)
    log_p_t = ops.log_softmax(_masked(teacher_outputs / tau, mask), axis=-1)
    log_p_s = ops.log_softmax(_masked(student_logits, mask), axis=-1)
    p_t = ops.exp(log_p_t) * mask
    per_sample = ops.sum(ops.where(mask > 0, p_t * (log_p_t - log_p_s), 0.0), axis=-1)
    return ops.mean(per_sample)


def nll(teacher_outputs, student_logits, temperature=None, action_mask=None):
    """Negative log-likelihood of the teacher's best action.

        a* = argmax_a q_T(a)
        loss = mean_batch  -log softmax(z_S)(a*)

    `temperature` is accepted (and ignored) so all policy losses share one
    signature.
    """
    del temperature
    teacher_outputs = ops.cast(teacher_outputs, "float32")
    mask = ops.ones_like(teacher_outputs) if action_mask is None else action_mask
    best = ops.argmax(_masked(teacher_outputs, mask), axis=-1)
    log_p_s = ops.log_softmax(_masked(ops.cast(student_logits, "float32"), mask), axis=-1)
    picked = ops.sum(log_p_s * ops.one_hot(best, ops.shape(log_p_s)[-1]), axis=-1)
    return -ops.mean(picked)


def mse(teacher_outputs, student_logits, temperature=None, action_mask=None):
    """Squared error between teacher outputs and student outputs.

        loss = mean_batch  sum_a m(a) * (q_T(a) - z_S(a))^2

    `temperature` is accepted (and ignored) so all policy losses share one
    signature.
    """
    del temperature
    teacher_outputs = ops.cast(teacher_outputs, "float32")
    mask = ops.ones_like(teacher_outputs) if action_mask is None else action_mask
    diff = teacher_outputs - ops.cast(student_logits, "float32")
    return ops.mean(ops.sum(ops.where(mask > 0, ops.square(diff), 0.0), axis=-1))


def feature_regression(student_projection, teacher_features, feature_mask=None):
    """Actor-Mimic feature regression (before its weight beta).

        loss = mean_batch  || f_game(h_S) - h_T ||^2

    where f_game(h_S) is the student's projection of its shared hidden layer
    for the sample's game and h_T the teacher's last hidden layer; dimensions
    outside `feature_mask` (padding) are ignored.
    """
    diff = ops.cast(student_projection, "float32") - ops.cast(teacher_features, "float32")
    sq = ops.square(diff)
    if feature_mask is not None:
        sq = ops.where(feature_mask > 0, sq, 0.0)
    return ops.mean(ops.sum(sq, axis=-1))


def l2_normalised(factors, factor_mask=None, eps=1e-12):
    """Each sample's factors over their L2 norm (IE-KD's and factor transfer's
    normalisation; padding outside `factor_mask` stays 0).

        u = F / ||F||_2   (0 where ||F||_2 <= eps, with no gradient)

    Returns:
      (B, K) float32.
    """
    f = ops.cast(factors, "float32")
    if factor_mask is not None:
        f = ops.where(factor_mask > 0, f, 0.0)
    # A vector shorter than eps (a zero one: a sample whose half of the hidden
    # layer is all ReLU-dead and an encoder without bias yet) is mapped to 0
    # with a zero gradient, instead of sqrt's 0 * inf = NaN at 0 or F / eps's
    # gradient of 1 / eps.
    squared = ops.sum(ops.square(f), axis=-1, keepdims=True)
    norm = ops.sqrt(ops.maximum(squared, eps * eps))
    return ops.where(squared > eps * eps, f / norm, 0.0)


def factor_distance(student_factors, teacher_factors, factor_mask=None):
    """Factor transfer's distance (Kim et al. 2018), IE-KD's similarity
    measure: the L1 distance of the L2-normalised factors, per factor.

        u = F_S / ||F_S||_2,  v = F_T / ||F_T||_2
        d = mean_batch (1/k) sum_j |u_j - v_j|

    k is the sample's factor count (the ones in `factor_mask`; all without
    one), so with one k for the whole batch this is the mean over every
    element, as the IE-KD authors' code divides the batch's L1 norm by its
    element count.
    """
    u = l2_normalised(student_factors, factor_mask)
    v = l2_normalised(teacher_factors, factor_mask)
    per_factor = ops.abs(u - v)
    if factor_mask is None:
        return ops.mean(per_factor)
    mask = ops.cast(factor_mask > 0, "float32")
    per_sample = ops.sum(per_factor * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)
    return ops.mean(per_sample)


def inheritance_loss(inheritance_factors, teacher_factors, factor_mask=None):
    """IE-KD's inheritance (similarity) loss, before its weight lambda_inh:
    the inheritance half's factors pulled toward the teacher's.

        L_inh = mean_batch (1/k) || F_inh/||F_inh||_2 - F_T/||F_T||_2 ||_1

    F_inh: the student's inheritance factors (its encoder on the first half
    of the shared hidden layer); F_T: the teacher's factors (the encoder of
    the auto-encoder fitted on its features). See `factor_distance`.
    """
    return factor_distance(inheritance_factors, teacher_factors, factor_mask)


def exploration_loss(exploration_factors, teacher_factors, factor_mask=None):
    """IE-KD's exploration (dis-similarity) loss, before its weight
    lambda_exp: the exploration half's factors pushed away from the
    teacher's. The same distance as `inheritance_loss`, negated:

        L_exp = - mean_batch (1/k) || F_exp/||F_exp||_2 - F_T/||F_T||_2 ||_1

    Bounded below: two unit vectors are at most 2 sqrt(k) apart in L1, so
    L_exp >= -2 / sqrt(k).
    """
    return -factor_distance(exploration_factors, teacher_factors, factor_mask)


def reconstruction_l1(features, reconstruction):
    """The auto-encoder's reconstruction loss (IE-KD's compact knowledge
    extraction; L1, as the authors' code):

        L_rec = mean_batch (1/d) || h_T - D(E(h_T)) ||_1
    """
    diff = ops.cast(features, "float32") - ops.cast(reconstruction, "float32")
    return ops.mean(ops.abs(diff))


def top1_agreement(teacher_outputs, student_logits, action_mask=None):
    """Fraction of samples where argmax student == argmax teacher."""
    mask = ops.ones_like(teacher_outputs) if action_mask is None else action_mask
    a_t = ops.argmax(_masked(ops.cast(teacher_outputs, "float32"), mask), axis=-1)
    a_s = ops.argmax(_masked(ops.cast(student_logits, "float32"), mask), axis=-1)
    return ops.mean(ops.cast(ops.equal(a_t, a_s), "float32"))


POLICY_LOSSES = {"kl": kl, "nll": nll, "mse": mse}


def policy_loss(name, teacher_outputs, student_logits, action_mask=None, temperature=1.0):
    """Dispatches to the policy loss called `name` (kl, nll or mse)."""
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown loss {name!r}: expected one of {sorted(POLICY_LOSSES)}")
    return POLICY_LOSSES[name](
        teacher_outputs, student_logits, temperature=temperature, action_mask=action_mask
    )
