"""The update rules of Czarnecki et al., "Distilling Policy Distillation"
(AISTATS 2019, arXiv 1902.02186), as surrogate losses, and `UpdateRule`, an
objective that trains the Atari student with one of them.

The paper's general update (its Eq. 1): for a control policy q (who acts),
a per-state loss l and a per-step "reward" r^_i, the student's parameters
theta descend

    E_{trajectories of q} [ sum_t  grad l(s_t)  -  grad log pi_S(a_t|s_t) * R_t ],
    R_t = sum_{i >= t} gamma^(i-t) r^_i                                      (1)

(the paper: gamma = 1, episodic). H_x(p || q) = -sum_a p(a) log q(a) is
Shannon's cross-entropy, pi_T = softmax(q_T / tau) the teacher, pi_S =
softmax(z_S) the student. The rules (the paper's Table 1 and its
actor-critic section 4; "grad field" says whether the paper shows that the
expected update (1) is the gradient of an objective, and of which):

| rule                         | q    | l(s_t)                    | r^_i                          |
|------------------------------|------|---------------------------|-------------------------------|
| teacher_distill              | pi_T | H_x(pi_T || pi_S)         | 0                             |
| on_policy_distill            | pi_S | H_x(pi_T || pi_S)         | 0                             |
| on_policy_distill_reward     | pi_S | H_x(pi_T || pi_S)         | r_i (environment)             |
| entropy_regularised          | pi_S | 0                         | log pi_T(a_i|s_i)             |
| n_distill                    | pi_S | H_x(pi_T || pi_S)         | -H_x(pi_T || pi_S)(s_{i+1})   |
| expected_entropy_regularised | pi_S | H_x(pi_S || pi_T)         | log pi_T(a_{i+1}|s_{i+1})     |
| teacher_value_reward         | pi_S | 0                         | r_i + V_T(s_{i+1}) - V_T(s_i) |
| value_gated_distill          | pi_S | H_x(pi_T||pi_S) [V_T>V_S] | r_i (environment)             |

| rule                         | gradient field? | objective minimised                    |
|------------------------------|-----------------|----------------------------------------|
| teacher_distill              | yes             | E_{pi_T}[sum_t H_x(pi_T || pi_S)(s_t)] |
| on_policy_distill            | no (Theorem 1)  |                                        |
| on_policy_distill_reward     | no              |                                        |
| entropy_regularised          | yes             | -E_{pi_S}[sum_t log pi_T(a_t|s_t)]     |
| n_distill                    | yes             | E_{pi_S}[sum_t H_x(pi_T || pi_S)(s_t)] |
| expected_entropy_regularised | yes             | -E_{pi_S}[sum_t log pi_T(a_t|s_t)]     |
| teacher_value_reward         | yes             | -E_{pi_S}[sum_t r_t] (+ V_T(s_0))      |
| value_gated_distill          | no              |                                        |

Where each row comes from and how sure it is:
  * Eq. (1), the rows teacher/on-policy distill, entropy regularised,
    N-distill, expected entropy regularised and teacher V reward, and the
    yes/no column: the paper's Table 1. The paper's own PDF could not be
    read when this was written; the rows are those of two public summaries
    of it (an annotated reading note and this project's METHODS.md, which
    flags the two entropy rows as uncertain), which agree, checked for
    consistency with the paper's Theorem 2, which says that adding the
    reward r^_i = -l(s_{i+1}) to a one-step on-policy update makes it the
    gradient of E_{pi_S}[sum_t l(s_t)] (and, for a loss of the form
    E_{a ~ pi_S} l^(a), the sampled reward -l^(a_{i+1})). N-distill is
    Theorem 2 applied to H_x(pi_T || pi_S); expected entropy regularised is
    Theorem 2 applied to H_x(pi_S || pi_T) = E_{a~pi_S}[-log pi_T(a)], which
    makes its objective the same as entropy regularised's (the log-
    likelihood, under the teacher, of the student's own actions along its
    own trajectories): the "expected" rule computes the immediate term
    analytically instead of sampling it. tests/test_update_rules.py checks
    every "yes" row numerically.
  * UNCERTAIN: whether the paper measures these divergences as cross-
    entropies H_x (as the sources read give, and as implemented by
    default) or as KL divergences (the entropy-regularised rewards then
    carry the student's term, log pi_T(a) - log pi_S(a), as in KL-
    regularised RL). The two give the same gradient wherever only the
    teacher's entropy separates them inside a loss, but not inside a
    reward or where the student's entropy enters: with cross-entropies the
    objectives of N-distill and the entropy-regularised rules also reward
    short episodes (every step costs at least an entropy), so their optimum
    need not be pi_S = pi_T where an episode can be ended early; with KL
    divergences it is. Every function takes `divergence` = "cross_entropy"
    (default) or "kl"; the KL objectives are those of the second table
    with KL(pi_T || pi_S) (N-distill) and KL(pi_S || pi_T) (both entropy-
    regularised rules) in place of the cross-entropies.
  * on-policy distill + R (env reward r_i): the paper's Sec. 3.1 shows that
    adding the environment's reward to on-policy distillation can make the
    dynamics cycle (not a gradient field either).
  * value_gated_distill: the paper's actor-critic section defines the loss
    l(s) = H_x(pi_T(s) || pi_S(s)) * [V_T(s) - V_S(s) > 0] (distil only
    where the teacher's value exceeds the student's own value V_S =
    V^{pi_S}); its experiment runs it as "on-policy distill + R + V cond",
    so r^_i is the environment's reward here. The paper claims a bound on
    the value at convergence (its Prop. 2), not a gradient field.
  * teacher_value_reward: the shaped reward r_i + gamma V_T(s_{i+1}) -
    V_T(s_i) (potential-based shaping with the teacher's critic; its
    Prop. 4: off-teacher actions are penalised at once when the teacher is
    optimal). Its returns telescope to G_t - V_T(s_t), so (1) is REINFORCE
    on the environment's return with the baseline V_T: the gradient of
    -E[return]. The paper also discusses "TD + V_T", bootstrapping from the
    teacher's critic (its Prop. 3): that is what teacher_value_reward
    becomes under one-step truncation (below).

Surrogates. For a batch of sampled steps, each rule's surrogate is

    mean_batch  w_t * ( l(s_t) - stop_gradient(rho_t * R_t) * log pi_S(a_t|s_t) )

whose gradient with respect to the student's logits, descended, is the
rule's update (1) for those steps: w_t are sample weights (default 1),
rho_t importance weights of the REINFORCE term (default 1; see
`UpdateRule`). The value of the REINFORCE part means nothing (only its
gradient does); l is the paper's cross-entropy, so the l term of the
distill rules equals the KL plus the teacher's entropy (same gradient). The
caller gives R_t; `step_reward` gives each rule's r^_t for one transition.
`RULES` maps each rule's name to its surrogate; `SPECS` to its row above.

Masking conventions are those of `multidistill.losses`: (B, A) teacher
outputs and student logits, action_mask 0/1 (padding actions excluded from
every softmax), temperature tau scalar or (B,) dividing the teacher only.
Everything is written with `keras.ops` and runs on every Keras backend.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

import multidistill

multidistill.import_keras_quietly()

from keras import ops  # noqa: E402

_NEG = -1e9

RULE_NAMES = (
    "teacher_distill",
    "on_policy_distill",
    "on_policy_distill_reward",
    "entropy_regularised",
    "n_distill",
    "expected_entropy_regularised",
    "teacher_value_reward",
    "value_gated_distill",
)

# How a rule's divergences are measured: the paper's cross-entropies H_x as
# read (default), or the KL divergences (the UNCERTAIN alternative reading;
# the module docstring).
DIVERGENCES = ("cross_entropy", "kl")

# The rules with a reward, hence a REINFORCE term.
_REINFORCE_RULES = tuple(r for r in RULE_NAMES
                         if r not in ("teacher_distill", "on_policy_distill"))


@dataclasses.dataclass(frozen=True)
class RuleSpec:
    """One row of the table in the module docstring.

    Attributes:
      name: the rule's name (a key of `RULES`).
      control: who acts, "teacher" or "student".
      loss: l(s_t), in words.
      reward: r^_i, in words.
      gradient_field: whether the paper shows the expected update to be the
        gradient of an objective.
      objective: that objective (minimised), or "" where there is none.
      paper: where in the paper the rule is defined.
      one_step: what the one-step truncation of `UpdateRule` keeps of R_t.
    """

    name: str
    control: str
    loss: str
    reward: str
    gradient_field: bool
    objective: str
    paper: str
    one_step: str


SPECS: dict[str, RuleSpec] = {s.name: s for s in (
    RuleSpec("teacher_distill", "teacher", "H_x(pi_T(s_t) || pi_S(s_t))", "0", True,
             "E_{pi_T}[sum_t H_x(pi_T || pi_S)(s_t)]", "Table 1, 'Teacher distill'",
             "exact: no reward, nothing to truncate"),
    RuleSpec("on_policy_distill", "student", "H_x(pi_T(s_t) || pi_S(s_t))", "0", False, "",
             "Table 1, 'On-policy distill'; Theorem 1",
             "exact: no reward, nothing to truncate"),
    RuleSpec("on_policy_distill_reward", "student", "H_x(pi_T(s_t) || pi_S(s_t))",
             "r_i (environment reward)", False, "",
             "Sec. 3 (on-policy distill with the environment's reward, 'distill + R')",
             "R_t = r_t: the rewards after step t are dropped"),
    RuleSpec("entropy_regularised", "student", "0", "log pi_T(a_i|s_i)", True,
             "-E_{pi_S}[sum_t log pi_T(a_t|s_t)]", "Table 1, 'Entropy regularised'",
             "R_t = log pi_T(a_t|s_t): the log-probabilities of later actions are dropped"),
    RuleSpec("n_distill", "student", "H_x(pi_T(s_t) || pi_S(s_t))",
             "-H_x(pi_T(s_{i+1}) || pi_S(s_{i+1}))", True,
             "E_{pi_S}[sum_t H_x(pi_T || pi_S)(s_t)]", "Table 1, 'N-distill'; Theorem 2",
             "R_t = -gamma H_x(pi_T || pi_S)(s_{t+1}): the losses at s_{t+2}, ... are dropped"),
    RuleSpec("expected_entropy_regularised", "student", "H_x(pi_S(s_t) || pi_T(s_t))",
             "log pi_T(a_{i+1}|s_{i+1})", True, "-E_{pi_S}[sum_t log pi_T(a_t|s_t)]",
             "Table 1, 'Expected entropy regularised'; Theorem 2",
             "R_t = -gamma H_x(pi_S || pi_T)(s_{t+1}) (the expectation over a_{t+1} ~ pi_S of "
             "the sampled reward): the terms at s_{t+2}, ... are dropped"),
    RuleSpec("teacher_value_reward", "student", "0", "r_i + gamma V_T(s_{i+1}) - V_T(s_i)",
             True, "-E_{pi_S}[sum_t gamma^t r_t] (+ V_T(s_0))",
             "Sec. 4, reward from the teacher's critic (Prop. 4)",
             "R_t = r_t + gamma V_T(s_{t+1}) - V_T(s_t): the TD error under the teacher's "
             "critic ('TD + V_T', Prop. 3); no longer a gradient field"),
    RuleSpec("value_gated_distill", "student",
             "H_x(pi_T(s_t) || pi_S(s_t)) * [V_T(s_t) > V_S(s_t)]", "r_i (environment reward)",
             False, "", "Sec. 4, distillation conditioned on the teacher's value (Prop. 2); "
             "run as 'on-policy distill + R + V cond'",
             "R_t = r_t: the rewards after step t are dropped"),
)}


# -- shared pieces ------------------------------------------------------------


def _mask_for(x, action_mask):
    return ops.ones_like(x) if action_mask is None else ops.cast(action_mask, "float32")


def _tau(temperature):
    tau = ops.cast(temperature, "float32")
    if len(ops.shape(tau)) == 1:
        tau = ops.expand_dims(tau, -1)
    return tau


def teacher_log_probs(teacher_outputs, temperature=1.0, action_mask=None):
    """log pi_T = log_softmax(q_T / tau) over the masked actions, (B, A)."""
    q = ops.cast(teacher_outputs, "float32")
    mask = _mask_for(q, action_mask)
    return ops.log_softmax(ops.where(mask > 0, q / _tau(temperature), _NEG), axis=-1)


def student_log_probs(student_logits, action_mask=None):
    """log pi_S = log_softmax(z_S) over the masked actions, (B, A)."""
    z = ops.cast(student_logits, "float32")
    mask = _mask_for(z, action_mask)
    return ops.log_softmax(ops.where(mask > 0, z, _NEG), axis=-1)


def cross_entropy(log_p, log_q, action_mask=None):
    """H_x(p || q) = -sum_a p(a) log q(a) per sample, (B,), from log-probabilities."""
    mask = _mask_for(log_p, action_mask)
    return -ops.sum(ops.where(mask > 0, ops.exp(log_p) * log_q, 0.0), axis=-1)


def _picked(log_p, actions):
    one_hot = ops.one_hot(ops.cast(actions, "int32"), ops.shape(log_p)[-1])
    return ops.sum(log_p * one_hot, axis=-1)


def _require(rule, **given):
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise ValueError(f"rule {rule!r} needs {', '.join(missing)}")


def per_state_loss(rule, teacher_outputs, student_logits, temperature=1.0, action_mask=None,
                   teacher_values=None, student_values=None, divergence="cross_entropy"):
    """The rule's l(s) per sample, (B,), or None where l = 0 (entropy
    regularised, teacher V reward):

      H_x(pi_T || pi_S)                   teacher/on-policy distill (+ R), N-distill
      H_x(pi_S || pi_T)                   expected entropy regularised
      H_x(pi_T || pi_S) [V_T > V_S]       value-gated distill (V_S: no gradient)

    `divergence` "kl" replaces each H_x(p || q) by KL(p || q) = H_x(p || q) -
    H(p): the same gradient where p is the teacher, a different one for
    expected entropy regularised (the student's entropy enters).
    """
    if rule in ("entropy_regularised", "teacher_value_reward"):
        return None
    if rule not in SPECS:
        raise ValueError(f"rule must be one of {list(RULE_NAMES)}, found {rule!r}")
    _check_divergence(divergence)
    _require(rule, teacher_outputs=teacher_outputs)
    log_t = teacher_log_probs(teacher_outputs, temperature, action_mask)
    log_s = student_log_probs(student_logits, action_mask)
    if rule == "expected_entropy_regularised":
        return _divergence(log_s, log_t, action_mask, divergence)
    loss = _divergence(log_t, log_s, action_mask, divergence)
    if rule == "value_gated_distill":
        _require(rule, teacher_values=teacher_values, student_values=student_values)
        gate = ops.greater(ops.cast(teacher_values, "float32"),
                           ops.stop_gradient(ops.cast(student_values, "float32")))
        loss = ops.cast(gate, "float32") * loss
    return loss


def _check_divergence(divergence):
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {list(DIVERGENCES)}, found {divergence!r}")


def _divergence(log_p, log_q, action_mask, divergence):
    """H_x(p || q), or KL(p || q) = H_x(p || q) - H(p), per sample."""
    out = cross_entropy(log_p, log_q, action_mask)
    if divergence == "kl":
        out = out - cross_entropy(log_p, log_p, action_mask)
    return out


def _surrogate(per_state_loss, log_pi_s, actions, returns, importance_weights, sample_weight):
    """mean_batch w * (l - stop_gradient(rho * R) * log pi_S(a|s)); l may be None."""
    value = 0.0 if per_state_loss is None else per_state_loss
    if returns is not None:
        weight = ops.cast(returns, "float32")
        if importance_weights is not None:
            weight = weight * ops.cast(importance_weights, "float32")
        value = value - ops.stop_gradient(weight) * _picked(log_pi_s, actions)
    if sample_weight is not None:
        value = value * ops.cast(sample_weight, "float32")
    return ops.mean(value)


def _rule_surrogate(rule, teacher_outputs, student_logits, actions, returns, temperature,
                    action_mask, teacher_values, student_values, importance_weights,
                    sample_weight, divergence):
    if rule not in _REINFORCE_RULES:
        returns = None  # r^ = 0: no REINFORCE term, whatever the caller gives.
    elif rule != "value_gated_distill":
        _require(rule, returns=returns)
    if returns is not None:
        _require(rule, actions=actions)
    else:
        actions = importance_weights = None  # No reward: the rule has no REINFORCE term.
    loss = per_state_loss(rule, teacher_outputs, student_logits, temperature, action_mask,
                          teacher_values, student_values, divergence)
    log_s = student_log_probs(student_logits, action_mask)
    return _surrogate(loss, log_s, actions, returns, importance_weights, sample_weight)


# -- the rules' surrogates ----------------------------------------------------
#
# One signature for all, so that `RULES` can be called generically; inputs a
# rule does not read are ignored, inputs it needs are checked.


def teacher_distill(teacher_outputs, student_logits, actions=None, returns=None,
                    temperature=1.0, action_mask=None, teacher_values=None,
                    student_values=None, importance_weights=None, sample_weight=None,
                    divergence="cross_entropy"):
    """Teacher distill (Table 1): the teacher acts; l = H_x(pi_T || pi_S), r^ = 0.

        surrogate = mean_batch w * H_x(pi_T(s) || pi_S(s))

    A gradient field: the gradient of E_{pi_T}[sum_t H_x(pi_T || pi_S)(s_t)]
    (the control policy does not depend on the student). Rusu et al.'s KL
    with the same gradient (the two differ by the teacher's entropy).
    """
    return _rule_surrogate(
        "teacher_distill", teacher_outputs, student_logits, actions, returns, temperature,
        action_mask, teacher_values, student_values, importance_weights, sample_weight,
        divergence)


def on_policy_distill(teacher_outputs, student_logits, actions=None, returns=None,
                      temperature=1.0, action_mask=None, teacher_values=None,
                      student_values=None, importance_weights=None, sample_weight=None,
                      divergence="cross_entropy"):
    """On-policy distill (Table 1): the student acts; l = H_x(pi_T || pi_S), r^ = 0.

        surrogate = mean_batch w * H_x(pi_T(s) || pi_S(s))

    The same per-sample loss as teacher distill: the rules differ only in
    who generated the states. Not a gradient field (Theorem 1): the
    expected update sum_s d_{pi_S}(s) grad H_x(s) ignores how the student's
    state distribution d_{pi_S} moves with theta, and its Jacobian is not
    symmetric (tests/test_update_rules.py shows one).
    """
    return _rule_surrogate(
        "on_policy_distill", teacher_outputs, student_logits, actions, returns, temperature,
        action_mask, teacher_values, student_values, importance_weights, sample_weight,
        divergence)


def on_policy_distill_reward(teacher_outputs, student_logits, actions=None, returns=None,
                             temperature=1.0, action_mask=None, teacher_values=None,
                             student_values=None, importance_weights=None,
                             sample_weight=None, divergence="cross_entropy"):
    """On-policy distill + R: the student acts; l = H_x(pi_T || pi_S), r^_i = r_i.

        surrogate = mean_batch w * ( H_x(pi_T(s) || pi_S(s))
                                     - stop_gradient(rho R) log pi_S(a|s) ),
        R_t = sum_{i >= t} gamma^(i-t) r_i  (the environment's return)

    Not a gradient field (Theorem 1 applies to its distillation part; the
    paper's Sec. 3 shows such dynamics can cycle).
    """
    return _rule_surrogate(
        "on_policy_distill_reward", teacher_outputs, student_logits, actions, returns, temperature,
        action_mask, teacher_values, student_values, importance_weights, sample_weight,
        divergence)


def entropy_regularised(teacher_outputs, student_logits, actions=None, returns=None,
                        temperature=1.0, action_mask=None, teacher_values=None,
                        student_values=None, importance_weights=None, sample_weight=None,
                        divergence="cross_entropy"):
    """Entropy regularised (Table 1): the student acts; l = 0, r^_i = log pi_T(a_i|s_i).

        surrogate = mean_batch w * ( -stop_gradient(rho R) log pi_S(a|s) ),
        R_t = sum_{i >= t} gamma^(i-t) log pi_T(a_i|s_i)

    A gradient field: REINFORCE on the objective -E_{pi_S}[sum_t log
    pi_T(a_t|s_t)]. The whole distillation signal is in the reward, whose
    variance grows with the number of actions (the paper's Fig. 4).
    `teacher_outputs` is not read (R_t carries the teacher).
    """
    return _rule_surrogate(
        "entropy_regularised", teacher_outputs, student_logits, actions, returns, temperature,
        action_mask, teacher_values, student_values, importance_weights, sample_weight,
        divergence)


def n_distill(teacher_outputs, student_logits, actions=None, returns=None, temperature=1.0,
              action_mask=None, teacher_values=None, student_values=None,
              importance_weights=None, sample_weight=None,
              divergence="cross_entropy"):
    """N-distill (Table 1, Theorem 2): the student acts; l = H_x(pi_T || pi_S),
    r^_i = -H_x(pi_T(s_{i+1}) || pi_S(s_{i+1})).

        surrogate = mean_batch w * ( H_x(pi_T(s) || pi_S(s))
                                     - stop_gradient(rho R) log pi_S(a|s) ),
        R_t = -sum_{i > t} gamma^(i-t) H_x(pi_T || pi_S)(s_i)

    A gradient field: the gradient of E_{pi_S}[sum_t H_x(pi_T || pi_S)(s_t)]
    (the reward is the correction of Theorem 2 for the moving state
    distribution).
    """
    return _rule_surrogate(
        "n_distill", teacher_outputs, student_logits, actions, returns, temperature,
        action_mask, teacher_values, student_values, importance_weights, sample_weight,
        divergence)


def expected_entropy_regularised(teacher_outputs, student_logits, actions=None, returns=None,
                                 temperature=1.0, action_mask=None, teacher_values=None,
                                 student_values=None, importance_weights=None,
                                 sample_weight=None, divergence="cross_entropy"):
    """Expected entropy regularised (Table 1, Theorem 2; the paper's
    recommendation): the student acts; l = H_x(pi_S || pi_T),
    r^_i = log pi_T(a_{i+1}|s_{i+1}).

        surrogate = mean_batch w * ( H_x(pi_S(s) || pi_T(s))
                                     - stop_gradient(rho R) log pi_S(a|s) ),
        H_x(pi_S || pi_T) = -sum_a pi_S(a|s) log pi_T(a|s),
        R_t = sum_{i > t} gamma^(i-t) log pi_T(a_i|s_i)

    A gradient field, of the same objective as entropy regularised,
    -E_{pi_S}[sum_t log pi_T(a_t|s_t)]: the immediate term is taken in
    expectation (through l) instead of sampled, so it has less variance.
    """
    return _rule_surrogate(
        "expected_entropy_regularised", teacher_outputs, student_logits, actions, returns,
        temperature, action_mask, teacher_values, student_values, importance_weights,
        sample_weight, divergence)


def teacher_value_reward(teacher_outputs, student_logits, actions=None, returns=None,
                         temperature=1.0, action_mask=None, teacher_values=None,
                         student_values=None, importance_weights=None, sample_weight=None,
                         divergence="cross_entropy"):
    """Teacher V reward (Table 1, Sec. 4): the student acts; l = 0,
    r^_i = r_i + gamma V_T(s_{i+1}) - V_T(s_i).

        surrogate = mean_batch w * ( -stop_gradient(rho R) log pi_S(a|s) ),
        R_t = sum_{i >= t} gamma^(i-t) (r_i + gamma V_T(s_{i+1}) - V_T(s_i))
            = G_t - V_T(s_t)          (V_T = 0 after the episode's end)

    A gradient field: REINFORCE with baseline V_T on the environment's
    return, the gradient of -E_{pi_S}[sum_t gamma^t r_t]. The teacher enters
    through R_t only (`teacher_outputs` is not read).
    """
    return _rule_surrogate(
        "teacher_value_reward", teacher_outputs, student_logits, actions, returns, temperature,
        action_mask, teacher_values, student_values, importance_weights, sample_weight,
        divergence)


def value_gated_distill(teacher_outputs, student_logits, actions=None, returns=None,
                        temperature=1.0, action_mask=None, teacher_values=None,
                        student_values=None, importance_weights=None, sample_weight=None,
                        divergence="cross_entropy"):
    """Distillation gated by the teacher's value (Sec. 4, Prop. 2), run with
    the environment's reward ('on-policy distill + R + V cond'): the student
    acts; l = H_x(pi_T || pi_S) [V_T(s) > V_S(s)], r^_i = r_i.

        surrogate = mean_batch w * ( [V_T(s) > V_S(s)] H_x(pi_T(s) || pi_S(s))
                                     - stop_gradient(rho R) log pi_S(a|s) )

    V_S(s) is the student's own value (the caller's estimate; see
    `UpdateRule` for the Atari one). `returns` may be None (no reward term).
    Not a gradient field.
    """
    return _rule_surrogate(
        "value_gated_distill", teacher_outputs, student_logits, actions, returns, temperature,
        action_mask, teacher_values, student_values, importance_weights, sample_weight,
        divergence)


RULES = {
    "teacher_distill": teacher_distill,
    "on_policy_distill": on_policy_distill,
    "on_policy_distill_reward": on_policy_distill_reward,
    "entropy_regularised": entropy_regularised,
    "n_distill": n_distill,
    "expected_entropy_regularised": expected_entropy_regularised,
    "teacher_value_reward": teacher_value_reward,
    "value_gated_distill": value_gated_distill,
}
assert tuple(RULES) == RULE_NAMES == tuple(SPECS)


# -- per-step rewards -----------------------------------------------------------


def step_reward(rule, *, teacher_outputs=None, student_logits=None, actions=None,
                rewards=None, next_teacher_outputs=None, next_student_logits=None,
                next_actions=None, teacher_values=None, next_teacher_values=None,
                next_valid=None, temperature=1.0, action_mask=None, gamma=1.0,
                divergence="cross_entropy"):
    """The rule's reward r^_t for the transition (s_t, a_t, r_t, s_{t+1}, a_{t+1}),
    (B,), with no gradient, so that R_t = sum_{i >= t} gamma^(i-t) r^_i.

    `next_valid` (B,) is 1 where s_{t+1} exists and 0 where step t ended the
    episode: there the terms at s_{t+1} are 0 (the loss and the teacher's
    value after the end are 0); None means all valid. `next_*` inputs at
    invalid rows are ignored even if NaN.

      teacher_distill, on_policy_distill: 0
      on_policy_distill_reward, value_gated_distill: r_t
      entropy_regularised: log pi_T(a_t|s_t)
      n_distill: -gamma H_x(pi_T(s_{t+1}) || pi_S(s_{t+1}))
      expected_entropy_regularised: gamma log pi_T(a_{t+1}|s_{t+1}) given
        `next_actions` (the paper's sampled form); without them its
        expectation over a_{t+1} ~ pi_S, -gamma H_x(pi_S(s_{t+1}) || pi_T(s_{t+1}))
      teacher_value_reward: r_t + gamma V_T(s_{t+1}) - V_T(s_t)

    `divergence` "kl" (the alternative reading): N-distill's reward is
    -gamma KL(pi_T || pi_S)(s_{t+1}); the entropy-regularised rewards gain the
    student's term, log pi_T(a) - log pi_S(a) (entropy regularised: at a_t,
    needing `student_logits`; expected: at a_{t+1}, or in expectation
    -gamma KL(pi_S || pi_T)(s_{t+1})).

    The temperature and action mask of s_t serve s_{t+1} too (same game).
    """
    if rule not in SPECS:
        raise ValueError(f"rule must be one of {list(RULE_NAMES)}, found {rule!r}")
    _check_divergence(divergence)
    gamma = float(gamma)
    kl = divergence == "kl"

    def at_next(value, valid):
        if valid is None:
            return value
        return ops.where(ops.cast(valid, "float32") > 0, value, 0.0)

    if rule in ("teacher_distill", "on_policy_distill"):
        _require(rule, teacher_outputs=teacher_outputs)
        return ops.zeros_like(ops.cast(teacher_outputs, "float32")[:, 0])
    if rule in ("on_policy_distill_reward", "value_gated_distill"):
        _require(rule, rewards=rewards)
        return ops.cast(rewards, "float32")
    if rule == "entropy_regularised":
        _require(rule, teacher_outputs=teacher_outputs, actions=actions)
        out = _picked(teacher_log_probs(teacher_outputs, temperature, action_mask), actions)
        if kl:
            _require(rule, student_logits=student_logits)
            out = out - _picked(student_log_probs(student_logits, action_mask), actions)
    elif rule == "n_distill":
        _require(rule, next_teacher_outputs=next_teacher_outputs,
                 next_student_logits=next_student_logits)
        h = _divergence(teacher_log_probs(next_teacher_outputs, temperature, action_mask),
                        student_log_probs(next_student_logits, action_mask), action_mask,
                        divergence)
        out = -gamma * at_next(h, next_valid)
    elif rule == "expected_entropy_regularised":
        _require(rule, next_teacher_outputs=next_teacher_outputs)
        log_t = teacher_log_probs(next_teacher_outputs, temperature, action_mask)
        if next_actions is not None:
            r = _picked(log_t, next_actions)
            if kl:
                _require(rule, next_student_logits=next_student_logits)
                r = r - _picked(student_log_probs(next_student_logits, action_mask),
                                next_actions)
            out = gamma * at_next(r, next_valid)
        else:
            _require(rule, next_student_logits=next_student_logits)
            h = _divergence(student_log_probs(next_student_logits, action_mask), log_t,
                            action_mask, divergence)
            out = -gamma * at_next(h, next_valid)
    else:  # teacher_value_reward
        _require(rule, rewards=rewards, teacher_values=teacher_values,
                 next_teacher_values=next_teacher_values)
        next_v = at_next(ops.cast(next_teacher_values, "float32"), next_valid)
        out = ops.cast(rewards, "float32") + gamma * next_v - ops.cast(teacher_values,
                                                                       "float32")
    return ops.stop_gradient(out)


def check_finite(values, message):
    """`values` unchanged, or ValueError(message) if any is NaN or infinite.

    Eager tensors and arrays are checked here. Inside a compiled TensorFlow
    step the check becomes a graph assertion (it fails the step with
    `message`); under a JAX jit nothing can raise, and NaN values make the
    loss NaN.
    """
    try:
        concrete = np.asarray(ops.convert_to_numpy(values))
    except Exception:  # A symbolic tensor or a tracer: no values to look at here.
        concrete = None
    if concrete is not None:
        if not np.all(np.isfinite(concrete)):
            raise ValueError(message)
        return values
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.debugging.assert_all_finite(values, message)
    return values


# -- the Atari objective ----------------------------------------------------------

_FIELD_ORDER = ("teacher_outputs", "teacher_values", "actions", "behaviour_log_probs",
                "rewards", "next_frames", "next_teacher_outputs", "next_teacher_values",
                "next_valid")
_NEXT_STATE_RULES = ("n_distill", "expected_entropy_regularised", "teacher_value_reward")
_VALUE_RULES = ("teacher_value_reward", "value_gated_distill")
_TEACHER_KINDS = ("q_values", "logits")


@dataclasses.dataclass(frozen=True)
class UpdateRule:
    """Trains the multi-task student with one of Czarnecki et al.'s rules,
    on batches of single steps drawn from stored trajectories.

    The interface of `objectives.Distillation` (`fields`,
    `needs_feature_projections`, `to_dict`, `terms`, `loss`). The loss of a
    batch is the rule's surrogate (`RULES`) with the returns R_t truncated
    to ONE step: R_t = r^_t from `step_reward`, i.e. what the rule adds at
    step t; everything later in the episode is dropped (per rule:
    `SPECS[rule].one_step`). Consequences:
      * teacher_distill, on_policy_distill: unchanged (no reward). They
        compute the same loss; which one a run is depends on who acted in
        the data (`control_policy` says who should).
      * on_policy_distill_reward, value_gated_distill: only the immediate
        (clipped) reward r_t: a one-step policy gradient.
      * entropy_regularised: R_t = log pi_T(a_t|s_t); in expectation over
        a_t ~ pi_S this is exactly the l of expected_entropy_regularised at
        s_t, so both rules keep the same expected per-state term.
      * n_distill, expected_entropy_regularised: R_t = -gamma l(s_{t+1})
        from the student's and the teacher's outputs at the stored next
        observation (the student's treated as a constant); expected entropy
        regularised uses the expectation over a_{t+1} ~ pi_S (the stored
        a_{t+1} is the behaviour's, not the student's). The Theorem 2
        correction is kept for one step only, so neither stays an exact
        gradient field.
      * teacher_value_reward: R_t = r_t + gamma V_T(s_{t+1}) - V_T(s_t), the
        TD error under the teacher's critic (the paper's "TD + V_T" with
        baseline V_T): biased by the teacher's critic, no longer a gradient
        field, but the paper's Prop. 3 bounds its fixed point below by the
        teacher's value (tabular).
    The gamma^t weighting of a discounted state distribution is not applied
    (as in common actor-critic practice).

    Off-policy data. The rules assume the control policy generated the
    steps. Where the steps come from another behaviour policy mu (stored
    `behaviour_log_probs`), `importance_weighting` multiplies each
    REINFORCE term by rho_t = min(pi_S(a_t|s_t) / mu(a_t|s_t),
    max_importance_weight) (no gradient; V-trace's truncation, 1 by
    default), which corrects the action choice at s_t but not the state
    distribution (nothing can, from single steps). The per-state loss l is
    never reweighted.

    Rewards are the raw environment rewards clipped to [-reward_clip,
    reward_clip] (1: the clipping the project's DQN and PPO teachers were
    trained with, so that they match the teachers' values V_T; None: raw).

    V_S for value_gated_distill: the student has no critic, so its value at
    s_t is estimated one step ahead under the teacher's critic,
    V_S(s) ~ sum_a pi_S(a|s) Q_T(s, a), from the teacher's Q-values (every
    game's teacher must be of kind "q_values": `teacher_kinds`). With such
    a teacher V_T(s) = max_a Q_T(s, a), so the gate is closed only where
    the student already puts all its probability on the teacher's best
    actions. This estimate is an ASSUMPTION of this implementation: the
    paper's V_S is the student's true value, which single steps cannot give.

    Attributes:
      rule: one of `RULE_NAMES`.
      temperatures: per game (in the student's head order) tau dividing the
        teacher's outputs in pi_T = softmax(q_T / tau) (as in
        `objectives.Distillation`).
      gamma: discount of the one-step returns (0.99: the teachers'; the
        paper's theory is undiscounted, with a 1 % chance of ending the
        episode at every step, an expected horizon of 100 steps alike).
      reward_clip: clip of the environment's rewards (None: raw).
      importance_weighting: weight REINFORCE terms by rho_t (above).
      max_importance_weight: truncation of rho_t (None: none).
      teacher_kinds: per game the teacher's kind ("q_values" or "logits");
        read (and required) by value_gated_distill only.
      divergence: "kl" (default) or "cross_entropy" (the paper's H_x, as
        read; see the module docstring; it changes the updates of n_distill
        and the two entropy-regularised rules only). KL is the default of
        this objective because its optimum is the teacher: in the tabular
        study (benchmarks/dpd_tabular.md) the cross-entropy reading makes
        N-distill end below the teacher on 44 % of the MDPs (ending
        episodes early lowers its objective) and expected entropy
        regularised copy only the teacher's top action, while the KL
        reading converges to the teacher on 88 % and 97 %. With a
        near-deterministic teacher (Q-values at tau = 0.01) the two readings
        nearly agree.
    """

    rule: str = "teacher_distill"
    temperatures: tuple[float, ...] = ()
    gamma: float = 0.99
    reward_clip: float | None = 1.0
    importance_weighting: bool = True
    max_importance_weight: float | None = 1.0
    teacher_kinds: tuple[str, ...] = ()
    divergence: str = "kl"

    # Read by the distiller for its held-out metrics only (KL to the teacher).
    policy_loss: ClassVar[str] = "kl"

    def __post_init__(self):
        if self.rule not in SPECS:
            raise ValueError(f"rule must be one of {list(RULE_NAMES)}, found {self.rule!r}")
        if any(not t > 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be > 0, found {list(self.temperatures)}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], found {self.gamma}")
        if self.reward_clip is not None and not self.reward_clip > 0:
            raise ValueError(f"reward_clip must be > 0 or None, found {self.reward_clip}")
        if self.max_importance_weight is not None and not self.max_importance_weight > 0:
            raise ValueError(f"max_importance_weight must be > 0 or None, found "
                             f"{self.max_importance_weight}")
        bad = [k for k in self.teacher_kinds if k not in _TEACHER_KINDS]
        if bad:
            raise ValueError(f"teacher_kinds must each be one of {list(_TEACHER_KINDS)}, "
                             f"found {list(self.teacher_kinds)}")
        if self.teacher_kinds and self.temperatures and (
                len(self.teacher_kinds) != len(self.temperatures)):
            raise ValueError(f"teacher_kinds must have one entry per game "
                             f"({len(self.temperatures)} temperatures), found "
                             f"{list(self.teacher_kinds)}")
        _check_divergence(self.divergence)
        if self.rule == "value_gated_distill" and (
                not self.teacher_kinds or any(k != "q_values" for k in self.teacher_kinds)):
            raise ValueError(
                "teacher_kinds must be 'q_values' for every game with rule "
                "'value_gated_distill' (the student's value is estimated from the teacher's "
                f"Q-values), found {list(self.teacher_kinds)}")

    # -- what the rule needs -------------------------------------------------

    @property
    def spec(self) -> RuleSpec:
        return SPECS[self.rule]

    @property
    def control_policy(self) -> str:
        """Who should act in the data: "teacher" or "student"."""
        return self.spec.control

    @property
    def needs_teacher_value(self) -> bool:
        """Whether the rule reads the teacher's state value (NaN for a
        teacher without one: refuse such a teacher before training)."""
        return self.rule in _VALUE_RULES

    @property
    def fields(self) -> tuple[str, ...]:
        """The batch fields (`y` keys) the rule reads."""
        need = {"teacher_outputs"}  # teacher_value_reward's loss does not, the held-out KL does.
        if self.rule in _REINFORCE_RULES:
            need.add("actions")
            if self.importance_weighting:
                need.add("behaviour_log_probs")
        if self.rule in ("on_policy_distill_reward", "teacher_value_reward",
                         "value_gated_distill"):
            need.add("rewards")
        if self.needs_teacher_value:
            need.add("teacher_values")
        if self.rule in _NEXT_STATE_RULES:
            need.add("next_valid")
            if self.rule == "teacher_value_reward":
                need.add("next_teacher_values")
            else:
                need.update(("next_frames", "next_teacher_outputs"))
        return tuple(f for f in _FIELD_ORDER if f in need)

    @property
    def needs_feature_projections(self) -> bool:
        return False

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), name="update_rule",
                    temperatures=list(self.temperatures),
                    teacher_kinds=list(self.teacher_kinds))

    # -- the loss --------------------------------------------------------------

    def one_step_returns(self, student, x, y, temperature, mask, logits):
        """R_t = r^_t of the rule (one-step truncation), (B,), no gradient;
        None for the rules without reward."""
        if self.rule not in _REINFORCE_RULES:
            return None
        rewards = None
        if "rewards" in y:
            rewards = ops.cast(y["rewards"], "float32")
            if self.reward_clip is not None:
                rewards = ops.clip(rewards, -self.reward_clip, self.reward_clip)
        kw = dict(rewards=rewards, temperature=temperature, action_mask=mask,
                  gamma=self.gamma, actions=y.get("actions"), divergence=self.divergence)
        if self.rule in _NEXT_STATE_RULES:
            kw["next_valid"] = y["next_valid"]
        if self.needs_teacher_value:
            kw["teacher_values"] = check_finite(
                ops.cast(y["teacher_values"], "float32"),
                f"rule {self.rule!r} needs the teacher's state value, but teacher_values "
                "holds NaN: the teacher has no value (a logits teacher without a critic)")
        if self.rule == "teacher_value_reward":
            valid = ops.cast(y["next_valid"], "float32") > 0
            next_v = ops.where(valid, ops.cast(y["next_teacher_values"], "float32"), 0.0)
            kw["next_teacher_values"] = check_finite(
                next_v, f"rule {self.rule!r} needs the teacher's state value, but "
                "next_teacher_values holds NaN at a valid next state")
        if self.rule in ("n_distill", "expected_entropy_regularised"):
            kw["next_teacher_outputs"] = y["next_teacher_outputs"]
            kw["next_student_logits"] = ops.stop_gradient(student(
                {"frames": y["next_frames"], "game_id": x["game_id"]})["logits"])
        if self.rule == "entropy_regularised":
            kw["teacher_outputs"] = y["teacher_outputs"]
            kw["student_logits"] = ops.stop_gradient(logits)
        return step_reward(self.rule, **kw)

    def importance_weights(self, y, logits, mask):
        """rho_t = min(pi_S(a_t|s_t) / mu(a_t|s_t), max_importance_weight), no
        gradient; None when `importance_weighting` is off or the rule has no
        REINFORCE term."""
        if not self.importance_weighting or self.rule not in _REINFORCE_RULES:
            return None
        log_s = _picked(student_log_probs(logits, mask), y["actions"])
        rho = ops.exp(log_s - ops.cast(y["behaviour_log_probs"], "float32"))
        if self.max_importance_weight is not None:
            rho = ops.minimum(rho, self.max_importance_weight)
        return ops.stop_gradient(rho)

    def terms(self, student, x, y, y_pred) -> dict:
        """The loss terms of a batch, each a scalar tensor: "policy" (the
        per-state loss l, absent where l = 0) and "reinforce" (the
        REINFORCE surrogate, absent where r^ = 0; its value is meaningless,
        its gradient is the update).

        Args:
          student: the `MultiTaskStudent` (its action masks; it is called
            again on `next_frames` by the rules with next-state terms).
          x: {"frames", "game_id"}.
          y: the batch fields of `fields`.
          y_pred: the student's outputs {"logits", ...}.
        """
        game_id = ops.cast(x["game_id"], "int32")
        tau = ops.take(ops.convert_to_tensor(list(self.temperatures), "float32"), game_id,
                       axis=0)
        mask = student.action_mask(game_id)
        logits = ops.cast(y_pred["logits"], "float32")
        student_values = teacher_values = None
        if self.rule == "value_gated_distill":
            teacher_values = check_finite(
                ops.cast(y["teacher_values"], "float32"),
                f"rule {self.rule!r} needs the teacher's state value, but teacher_values "
                "holds NaN: the teacher has no value")
            student_values = self.student_values(y, logits, mask)
        out = {}
        loss = per_state_loss(self.rule, y.get("teacher_outputs"), logits, tau, mask,
                              teacher_values, student_values, self.divergence)
        if loss is not None:
            out["policy"] = ops.mean(loss)
        returns = self.one_step_returns(student, x, y, tau, mask, logits)
        if returns is not None:
            out["reinforce"] = _surrogate(None, student_log_probs(logits, mask), y["actions"],
                                          returns, self.importance_weights(y, logits, mask),
                                          None)
        return out

    def student_values(self, y, logits, mask):
        """V_S(s_t) ~ sum_a pi_S(a|s_t) Q_T(s_t, a) (value_gated_distill), no gradient."""
        pi_s = ops.exp(student_log_probs(logits, mask))
        q = ops.cast(y["teacher_outputs"], "float32")
        return ops.stop_gradient(ops.sum(ops.where(mask > 0, pi_s * q, 0.0), axis=-1))

    def loss(self, student, x, y, y_pred):
        """The scalar loss of a batch: the sum of `terms`."""
        total = 0.0
        for value in self.terms(student, x, y, y_pred).values():
            total = total + value
        return total

