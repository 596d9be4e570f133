"""Czarnecki et al.'s update rules (`multidistill.update_rules`).

(a) every surrogate and per-step reward against numbers worked out here;
(b) on a tiny tabular MDP, the exact expected update of every rule the paper
    calls a gradient field equals the finite-difference gradient of the
    objective it names;
(c) on-policy distill's expected update is the gradient of no objective;
(d) the `UpdateRule` objective on a tiny multi-task student.
"""

import math

import numpy as np
import pytest
from conftest import finite_difference_gradient

from multidistill import networks
from multidistill import update_rules as ur

# -- helpers ------------------------------------------------------------------


def _grad(f, x):
    """d f(x) / dx for a scalar keras.ops function f, on the current backend."""
    import keras

    x = np.asarray(x, np.float32)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        v = tf.Variable(x)
        with tf.GradientTape() as tape:
            y = f(v)
        g = tape.gradient(y, v)  # None: y does not depend on x
        return np.zeros(x.shape) if g is None else np.asarray(g, np.float64)
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(f)(x), np.float64)
    pytest.skip(f"no gradient helper for the {backend} backend")


def _value(t):
    from keras import ops

    return np.asarray(ops.convert_to_numpy(t), np.float64)


def _log_softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


# -- (a) by hand ----------------------------------------------------------------
#
# One state, two actions: teacher outputs (0, ln 3) at tau = 1, so pi_T =
# (1/4, 3/4); student logits (0, 0), so pi_S = (1/2, 1/2); action 1; R = 2.
#   H_x(pi_T || pi_S) = -(1/4 ln 1/2 + 3/4 ln 1/2) = ln 2,    grad = pi_S - pi_T = (1/4, -1/4)
#   H_x(pi_S || pi_T) = -(1/2 ln 1/4 + 1/2 ln 3/4) = 1/2 ln(16/3) = 0.836988,
#       grad_k = -pi_S(k) (ln pi_T(k) + 0.836988) = (0.274653, -0.274653)
#   -R log pi_S(1) = 2 ln 2,   grad = -R (e_1 - pi_S) = (1, -1)

Q_T = np.array([[0.0, math.log(3.0)]], np.float32)
Z_S = np.array([[0.0, 0.0]], np.float32)
ACTION = np.array([1])
RET = np.array([2.0], np.float32)
LN2 = math.log(2.0)
H_ST = 0.5 * math.log(16.0 / 3.0)


@pytest.mark.parametrize("rule, value, grad", [
    ("teacher_distill", LN2, [0.25, -0.25]),
    ("on_policy_distill", LN2, [0.25, -0.25]),
    ("on_policy_distill_reward", LN2 + 2 * LN2, [1.25, -1.25]),
    ("entropy_regularised", 2 * LN2, [1.0, -1.0]),
    ("n_distill", LN2 + 2 * LN2, [1.25, -1.25]),
    ("expected_entropy_regularised", H_ST + 2 * LN2, [1.274653, -1.274653]),
    ("teacher_value_reward", 2 * LN2, [1.0, -1.0]),
])
def test_each_surrogate_and_its_gradient_by_hand(rule, value, grad):
    fn = ur.RULES[rule]
    kw = dict(actions=ACTION, returns=RET)
    assert _value(fn(Q_T, Z_S, **kw)) == pytest.approx(value, abs=1e-5)
    np.testing.assert_allclose(_grad(lambda z: fn(Q_T, z, **kw), Z_S)[0], grad, atol=1e-5)


def test_value_gated_distill_by_hand():
    """The gate: V_T = 1 > V_S = 0.5 keeps H_x; V_T = 0 < V_S closes it (the
    reward term stays either way)."""
    kw = dict(actions=ACTION, returns=RET)
    fn = ur.value_gated_distill
    g_open = _grad(lambda z: fn(Q_T, z, teacher_values=[1.0], student_values=[0.5], **kw), Z_S)
    g_shut = _grad(lambda z: fn(Q_T, z, teacher_values=[0.0], student_values=[0.5], **kw), Z_S)
    np.testing.assert_allclose(g_open[0], [1.25, -1.25], atol=1e-5)
    np.testing.assert_allclose(g_shut[0], [1.0, -1.0], atol=1e-5)
    assert _value(fn(Q_T, Z_S, teacher_values=[1.0], student_values=[0.5])) == pytest.approx(
        LN2, abs=1e-5)
    with pytest.raises(ValueError, match="rule 'value_gated_distill' needs teacher_values"):
        fn(Q_T, Z_S, student_values=[0.5])


def test_distill_rules_ignore_returns_and_rules_check_their_inputs():
    assert _value(ur.teacher_distill(Q_T, Z_S, actions=ACTION, returns=RET)) == pytest.approx(
        LN2, abs=1e-5)
    with pytest.raises(ValueError, match="^rule 'n_distill' needs returns$"):
        ur.n_distill(Q_T, Z_S, actions=ACTION)
    with pytest.raises(ValueError, match="^rule 'entropy_regularised' needs actions$"):
        ur.entropy_regularised(Q_T, Z_S, returns=RET)


def test_weights_temperature_and_masking_against_numpy():
    """Random batch, padding actions, per-sample tau, sample and importance
    weights: every rule's value and gradient against numpy."""
    rng = np.random.default_rng(1)
    b, a = 5, 4
    q = rng.normal(size=(b, a)).astype(np.float32)
    z = rng.normal(size=(b, a)).astype(np.float32)
    mask = np.ones((b, a), np.float32)
    mask[[1, 3], 3] = 0.0
    q[mask == 0] = 0.0
    z[mask == 0] = -1e9
    tau = np.array([0.5, 1.0, 2.0, 0.3, 1.0], np.float32)
    actions = np.array([0, 2, 1, 0, 3])
    ret = rng.normal(size=b).astype(np.float32)
    w = rng.uniform(0.5, 2.0, b).astype(np.float32)
    rho = rng.uniform(0.1, 1.0, b).astype(np.float32)
    v_t = np.array([1.0, 0.0, 2.0, -1.0, 0.5], np.float32)
    v_s = np.array([0.5, 0.5, 0.5, 0.5, 0.5], np.float32)

    ok = mask > 0
    log_t = np.where(ok, _log_softmax(np.where(ok, q / tau[:, None], -1e9)), 0.0)
    log_s = np.where(ok, _log_softmax(np.where(ok, z.astype(np.float64), -1e9)), 0.0)
    p_t, p_s = np.exp(log_t) * ok, np.exp(log_s) * ok
    onehot = np.eye(a)[actions]
    h_ts, h_st = -(p_t * log_s).sum(1), -(p_s * log_t).sum(1)
    g_ts = p_s - p_t
    g_st = -p_s * (log_t - (p_s * log_t).sum(1, keepdims=True)) * ok
    g_pg = -(rho * ret)[:, None] * (onehot - p_s)
    pg = -(rho * ret) * log_s[np.arange(b), actions]
    gate = (v_t > v_s).astype(float)
    h_t, h_s = -(p_t * log_t).sum(1), -(p_s * log_s).sum(1)
    g_neg_h_s = p_s * (log_s + h_s[:, None]) * ok  # gradient of -H(pi_S)
    for divergence in ("cross_entropy", "kl"):
        kl = divergence == "kl"
        d_ts = h_ts - h_t if kl else h_ts  # the teacher's entropy: no gradient
        d_st, g_d_st = (h_st - h_s, g_st + g_neg_h_s) if kl else (h_st, g_st)
        expected = {
            "teacher_distill": (d_ts, g_ts),
            "on_policy_distill": (d_ts, g_ts),
            "on_policy_distill_reward": (d_ts + pg, g_ts + g_pg),
            "entropy_regularised": (pg, g_pg),
            "n_distill": (d_ts + pg, g_ts + g_pg),
            "expected_entropy_regularised": (d_st + pg, g_d_st + g_pg),
            "teacher_value_reward": (pg, g_pg),
            "value_gated_distill": (gate * d_ts + pg, gate[:, None] * g_ts + g_pg),
        }
        assert set(expected) == set(ur.RULES)
        for rule, fn in ur.RULES.items():
            kw = dict(actions=actions, returns=ret, temperature=tau, action_mask=mask,
                      teacher_values=v_t, student_values=v_s, importance_weights=rho,
                      sample_weight=w, divergence=divergence)
            value, grad = expected[rule]
            assert _value(fn(q, z, **kw)) == pytest.approx(np.mean(w * value), rel=1e-4), rule
            got = _grad(lambda x, fn=fn, kw=kw: fn(q, x, **kw), z)
            np.testing.assert_allclose(got, w[:, None] * grad / b, atol=1e-5,
                                       err_msg=f"{rule} {divergence}")


def test_step_rewards_by_hand():
    """The same state twice as s_t and s_{t+1}; gamma = 0.9; reward 1;
    V_T(s_t) = 2, V_T(s_{t+1}) = 3; the second row ended the episode (its
    next-state inputs are NaN, and must be ignored)."""
    q = np.repeat(Q_T, 2, axis=0)
    z = np.repeat(Z_S, 2, axis=0)
    nan = np.full_like(q, np.nan)
    kw = dict(teacher_outputs=q, actions=np.array([1, 1]), rewards=np.array([1.0, 1.0]),
              next_teacher_outputs=np.where([[True], [False]], q, nan),
              next_student_logits=np.where([[True], [False]], z, nan),
              teacher_values=np.array([2.0, 2.0]), next_teacher_values=np.array([3.0, np.nan]),
              next_valid=np.array([1.0, 0.0]), gamma=0.9)

    def r(rule, **extra):
        return _value(ur.step_reward(rule, **dict(kw, **extra)))

    np.testing.assert_allclose(r("teacher_distill"), [0, 0])
    np.testing.assert_allclose(r("on_policy_distill_reward"), [1, 1])
    np.testing.assert_allclose(r("value_gated_distill"), [1, 1])
    np.testing.assert_allclose(r("entropy_regularised"), [math.log(0.75)] * 2, atol=1e-6)
    np.testing.assert_allclose(r("n_distill"), [-0.9 * LN2, 0.0], atol=1e-6)
    np.testing.assert_allclose(r("expected_entropy_regularised"), [-0.9 * H_ST, 0.0], atol=1e-6)
    np.testing.assert_allclose(r("expected_entropy_regularised", next_actions=np.array([0, 0])),
                               [0.9 * math.log(0.25), 0.0], atol=1e-6)
    np.testing.assert_allclose(r("teacher_value_reward"), [1 + 0.9 * 3 - 2, 1 - 2], atol=1e-6)
    # The KL reading: KL(pi_T || pi_S) = ln 2 - H(pi_T) = 0.130812, KL(pi_S || pi_T) =
    # 0.836988 - ln 2 = 0.143841; log pi_T(a) - log pi_S(a): ln(3/2) at a = 1, ln(1/2) at 0.
    np.testing.assert_allclose(r("n_distill", divergence="kl"), [-0.9 * 0.130812, 0.0],
                               atol=1e-6)
    np.testing.assert_allclose(r("expected_entropy_regularised", divergence="kl"),
                               [-0.9 * 0.143841, 0.0], atol=1e-6)
    np.testing.assert_allclose(r("expected_entropy_regularised", divergence="kl",
                                 next_actions=np.array([0, 0])), [0.9 * -LN2, 0.0], atol=1e-6)
    np.testing.assert_allclose(r("entropy_regularised", divergence="kl", student_logits=z),
                               [math.log(1.5)] * 2, atol=1e-6)
    with pytest.raises(ValueError, match=r"^divergence must be one of \['cross_entropy', 'kl'\]"):
        r("n_distill", divergence="js")
    with pytest.raises(ValueError, match=r"^rule must be one of \["):
        ur.step_reward("distill", **kw)
    # The next state's terms are rewards: no gradient reaches the student there.
    g = _grad(lambda v: ur.ops.sum(ur.step_reward("n_distill", **dict(
        kw, next_student_logits=v))), z)
    np.testing.assert_array_equal(g, 0.0)


# -- (b), (c): a tiny tabular MDP ----------------------------------------------------
#
# 4 states, 3 actions. From s under a, the episode continues to s' with
# probability P[a, s, s'] (rows sum to between 0.6 and 0.9) and ends otherwise;
# reward r[s, a] either way. Episodes start in state 0; no discount (the
# paper's setting). A tabular softmax student: theta[s] are the logits.

S, A = 4, 3


def _mdp(seed=0):
    rng = np.random.default_rng(seed)
    cont = rng.uniform(0.6, 0.9, (S, A))
    p = rng.dirichlet(np.ones(S), (A, S)) * cont.T[:, :, None]  # (A, S, S)
    return dict(P=p, r=rng.normal(size=(S, A)), q_t=rng.normal(size=(S, A)) * 2.0, tau=0.7,
                theta=rng.normal(size=(S, A)), rho0=np.eye(S)[0])


def _policy(logits):
    return np.exp(_log_softmax(logits))


def _visits(m, pi):
    """Expected visits of each state in an episode under pi."""
    p_pi = np.einsum("sa,ast->st", pi, m["P"])
    return np.linalg.solve((np.eye(S) - p_pi).T, m["rho0"])


def _q_values(m, pi, rhat):
    """E[sum_{i >= t} rhat_i | s_t = s, a_t = a] under pi, (S, A)."""
    p_pi = np.einsum("sa,ast->st", pi, m["P"])
    v = np.linalg.solve(np.eye(S) - p_pi, (pi * rhat).sum(1))
    return rhat + np.einsum("ast,t->sa", m["P"], v)


def _teacher(m):
    return _log_softmax(m["q_t"] / m["tau"])


def _objective(rule, m, theta, divergence="cross_entropy"):
    """The objective the paper names for `rule` (module docstring), exactly;
    with `divergence` "kl", KL in place of each cross-entropy."""
    log_t, log_s = _teacher(m), _log_softmax(theta)
    pi_s, pi_t = np.exp(log_s), np.exp(log_t)
    kl = divergence == "kl"
    if rule == "teacher_distill":
        return _visits(m, pi_t) @ -(pi_t * (log_s - kl * log_t)).sum(1)
    if rule == "n_distill":
        return _visits(m, pi_s) @ -(pi_t * (log_s - kl * log_t)).sum(1)
    if rule in ("entropy_regularised", "expected_entropy_regularised"):
        return _visits(m, pi_s) @ -(pi_s * (log_t - kl * log_s)).sum(1)
    if rule == "teacher_value_reward":
        return -(_visits(m, pi_s) @ (pi_s * m["r"]).sum(1))
    raise AssertionError(rule)


def _expected_rhat(rule, m, theta, v_t, divergence):
    """E[r^_t | s_t = s, a_t = a], (S, A), from `ur.step_reward` on every
    transition (s, a) -> s' or -> end, weighted by its probability; for the
    sampled form of expected entropy regularised, every next action too."""
    rows = [(s, a, s2) for s in range(S) for a in range(A) for s2 in range(S + 1)]
    s_, a_, s2_ = (np.array(c) for c in zip(*rows))
    valid = (s2_ < S).astype(np.float32)
    nxt = np.minimum(s2_, S - 1)
    prob = np.where(s2_ < S, m["P"][a_, s_, nxt], 1.0 - m["P"][a_, s_].sum(-1))
    kw = dict(teacher_outputs=m["q_t"][s_], actions=a_, rewards=m["r"][s_, a_],
              next_teacher_outputs=m["q_t"][nxt], next_student_logits=theta[nxt],
              teacher_values=v_t[s_], next_teacher_values=v_t[nxt], next_valid=valid,
              temperature=m["tau"], gamma=1.0, student_logits=theta[s_], divergence=divergence)
    if rule == "expected_entropy_regularised_sampled":
        pi_next = _policy(theta)[nxt]
        rhat = sum(pi_next[:, b] * _value(ur.step_reward(
            "expected_entropy_regularised", next_actions=np.full(len(rows), b), **kw))
            for b in range(A))
    else:
        rhat = _value(ur.step_reward(rule, **kw))
    return (prob * rhat).reshape(S, A, S + 1).sum(-1)


def _expected_update(rule, m, theta, sampled_next_action=False, divergence="cross_entropy"):
    """The rule's exact expected update (1), through its keras surrogate: one
    row per (s, a), weighted by the control policy's visits d(s) q(a|s), with
    R = the exact expected return of the rule's rewards."""
    pi_s, pi_t = _policy(theta), np.exp(_teacher(m))
    control = pi_t if ur.SPECS[rule].control == "teacher" else pi_s
    v_t = np.linalg.solve(np.eye(S) - np.einsum("sa,ast->st", pi_t, m["P"]),
                          (pi_t * m["r"]).sum(1))
    rows_s = np.repeat(np.arange(S), A)
    rows_a = np.tile(np.arange(A), S)
    weight = (_visits(m, control)[:, None] * control).reshape(-1) * S * A  # x B: ops.mean
    returns = None
    if rule in ur._REINFORCE_RULES:
        name = rule + ("_sampled" if sampled_next_action else "")
        rhat = _expected_rhat(name, m, theta, v_t, divergence)
        returns = _q_values(m, pi_s, rhat).reshape(-1)
    fn = ur.RULES[rule]
    grad = _grad(lambda z: fn(m["q_t"][rows_s], z, actions=rows_a, returns=returns,
                              temperature=m["tau"], sample_weight=weight,
                              divergence=divergence),
                 theta[rows_s])
    return grad.reshape(S, A, A).sum(1)  # rows of one state share its logits


GRADIENT_FIELDS = [r for r in ur.RULE_NAMES if ur.SPECS[r].gradient_field]


def test_the_paper_says_which_rules_are_gradient_fields():
    assert GRADIENT_FIELDS == ["teacher_distill", "entropy_regularised", "n_distill",
                               "expected_entropy_regularised", "teacher_value_reward"]


@pytest.mark.parametrize("rule, divergence", [(r, "cross_entropy") for r in GRADIENT_FIELDS] + [
    (r, "kl") for r in ("n_distill", "entropy_regularised", "expected_entropy_regularised")])
def test_expected_update_is_the_gradient_of_the_stated_objective(rule, divergence):
    """Exact expected update (visits by linear solve, returns exactly) ==
    finite-difference gradient of the objective, at two random students;
    under the KL reading too (its objectives: KL in place of H_x)."""
    m = _mdp(seed=3)
    for theta in (m["theta"], np.random.default_rng(7).normal(size=(S, A)) * 2.0):
        fd = finite_difference_gradient(lambda th: _objective(rule, m, th, divergence), theta)
        got = _expected_update(rule, m, theta, divergence=divergence)
        scale = np.abs(fd).max()
        assert scale > 1e-2
        np.testing.assert_allclose(got, fd, atol=2e-4 * scale, err_msg=rule)
        if rule == "expected_entropy_regularised":
            # The paper's sampled reward log pi_T(a_{t+1}|s_{t+1}) has the same expectation.
            np.testing.assert_allclose(
                _expected_update(rule, m, theta, True, divergence=divergence), fd,
                atol=2e-4 * scale)


def test_the_two_readings_differ_where_the_paper_is_uncertain():
    """N-distill's and expected entropy regularised's updates change with the
    reading (the student's entropy, and the teacher's as a reward, enter);
    teacher distill's does not (the teacher's entropy is a constant)."""
    m = _mdp(seed=3)
    theta = m["theta"]
    for rule, same in (("teacher_distill", True), ("n_distill", False),
                       ("expected_entropy_regularised", False)):
        a = _expected_update(rule, m, theta)
        b = _expected_update(rule, m, theta, divergence="kl")
        assert np.allclose(a, b, atol=1e-5) == same, rule


def _jacobian(f, theta, eps=1e-5):
    n = theta.size
    jac = np.zeros((n, n))
    for k in range(n):
        e = np.zeros(n)
        e[k] = eps
        jac[:, k] = (f(theta + e.reshape(theta.shape))
                     - f(theta - e.reshape(theta.shape))).reshape(-1) / (2 * eps)
    return jac


def test_on_policy_distill_is_the_gradient_of_no_objective():
    """On-policy distill's expected update g(theta) = sum_s d_theta(s)
    (pi_theta(s) - pi_T(s)) (checked here against its keras surrogate).

    If g were the gradient of some twice-differentiable F, its Jacobian
    would be F's Hessian, hence symmetric (and the line integral of g round
    any closed loop would vanish). The Jacobian measured here is far from
    symmetric, so no objective has g as its gradient: the update moves the
    state distribution d_theta without accounting for it. The natural
    candidate, E_theta[sum_t H_x(pi_T || pi_theta)(s_t)], has a different
    gradient (N-distill's update); N-distill's Jacobian is symmetric, as
    a Hessian must be, which shows that the asymmetry test can pass.
    """
    m = _mdp(seed=3)
    pi_t = np.exp(_teacher(m))

    def g_on(theta):
        return _visits(m, _policy(theta))[:, None] * (_policy(theta) - pi_t)

    theta = m["theta"]
    np.testing.assert_allclose(_expected_update("on_policy_distill", m, theta), g_on(theta),
                               atol=1e-5)
    jac = _jacobian(g_on, theta)
    asym = np.linalg.norm(jac - jac.T) / np.linalg.norm(jac)
    assert asym > 0.05, asym

    candidate = finite_difference_gradient(lambda th: _objective("n_distill", m, th), theta)
    assert np.linalg.norm(g_on(theta) - candidate) > 0.05 * np.linalg.norm(candidate)

    def g_n(theta):
        return finite_difference_gradient(lambda th: _objective("n_distill", m, th), theta,
                                          eps=1e-5)

    jac_n = _jacobian(g_n, theta, eps=1e-4)
    assert np.linalg.norm(jac_n - jac_n.T) / np.linalg.norm(jac_n) < 1e-3


# -- (d) the UpdateRule objective -----------------------------------------------------


def _student(objective=None):
    s = networks.MultiTaskStudent(
        games=["pong", "freeway"], num_actions=[6, 3], conv_filters=(4, 4, 4), fc_units=16,
        head_units=8, objective=objective)
    return s.build_for_inputs()


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    b = 6
    game_id = np.array([0, 1, 1, 0, 1, 0], np.int32)
    n_act = np.where(game_id == 0, 6, 3)
    frames = rng.integers(0, 256, (b, 4, 84, 84), dtype=np.uint8)
    next_frames = rng.integers(0, 256, (b, 4, 84, 84), dtype=np.uint8)
    next_valid = np.array([1, 1, 0, 1, 1, 0], np.float32)
    next_frames[next_valid == 0] = 0

    def outputs():
        out = rng.normal(size=(b, 6)).astype(np.float32)
        out[game_id == 1, 3:] = 0.0  # padding, as batch sources pad
        return out

    y = {"teacher_outputs": outputs(), "teacher_values": rng.normal(size=b).astype(np.float32),
         "actions": (rng.integers(0, 100, b) % n_act).astype(np.uint8),
         "behaviour_log_probs": np.log(rng.uniform(0.05, 1.0, b)).astype(np.float32),
         "rewards": np.array([0.0, 5.0, -2.0, 1.0, 0.5, 0.0], np.float32),
         "next_frames": next_frames, "next_teacher_outputs": outputs(),
         "next_teacher_values": rng.normal(size=b).astype(np.float32), "next_valid": next_valid}
    y["next_teacher_values"][next_valid == 0] = np.nan  # must be ignored there
    return {"frames": frames, "game_id": game_id}, y


def test_update_rule_fields_and_settings():
    kinds = ("q_values", "q_values")
    fields = {r: ur.UpdateRule(rule=r, teacher_kinds=kinds).fields for r in ur.RULE_NAMES}
    base = ("teacher_outputs",)
    pg = ("actions", "behaviour_log_probs")
    assert fields == {
        "teacher_distill": base,
        "on_policy_distill": base,
        "on_policy_distill_reward": base + pg + ("rewards",),
        "entropy_regularised": base + pg,
        "n_distill": base + pg + ("next_frames", "next_teacher_outputs", "next_valid"),
        "expected_entropy_regularised": base + pg + ("next_frames", "next_teacher_outputs",
                                                     "next_valid"),
        "teacher_value_reward": ("teacher_outputs", "teacher_values") + pg + (
            "rewards", "next_teacher_values", "next_valid"),
        "value_gated_distill": ("teacher_outputs", "teacher_values") + pg + ("rewards",),
    }
    assert ur.UpdateRule(rule="n_distill", importance_weighting=False).fields == (
        "teacher_outputs", "actions", "next_frames", "next_teacher_outputs", "next_valid")
    assert [r for r in ur.RULE_NAMES if ur.UpdateRule(rule=r, teacher_kinds=kinds)
            .needs_teacher_value] == ["teacher_value_reward", "value_gated_distill"]
    assert ur.UpdateRule().control_policy == "teacher"
    assert ur.UpdateRule(rule="n_distill").control_policy == "student"
    o = ur.UpdateRule(rule="n_distill", temperatures=(0.01, 1.0))
    assert not o.needs_feature_projections
    assert o.policy_loss == "kl"
    assert o.to_dict() == {"name": "update_rule", "rule": "n_distill", "temperatures": [0.01, 1.0],
                           "gamma": 0.99, "reward_clip": 1.0, "importance_weighting": True,
                           "max_importance_weight": 1.0, "teacher_kinds": [],
                           "divergence": "kl"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(rule="distill"), r"^rule must be one of \['teacher_distill', .*\], found 'distill'$"),
    (dict(temperatures=(1.0, 0.0)), r"^temperatures must be > 0, found \[1.0, 0.0\]$"),
    (dict(gamma=1.5), r"^gamma must be in \[0, 1\], found 1.5$"),
    (dict(reward_clip=0.0), r"^reward_clip must be > 0 or None, found 0.0$"),
    (dict(max_importance_weight=-1.0), r"^max_importance_weight must be > 0 or None"),
    (dict(teacher_kinds=("dqn",)), r"^teacher_kinds must each be one of"),
    (dict(temperatures=(1.0,), teacher_kinds=("q_values", "logits")),
     r"^teacher_kinds must have one entry per game"),
    (dict(divergence="js"), r"^divergence must be one of \['cross_entropy', 'kl'\], found 'js'$"),
    (dict(rule="value_gated_distill", teacher_kinds=("q_values", "logits")),
     r"^teacher_kinds must be 'q_values' for every game with rule 'value_gated_distill'"),
])
def test_update_rule_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ur.UpdateRule(**kwargs)


def _numpy_loss(rule, logits, next_logits, x, y, temps, divergence, gamma=0.99, clip=1.0,
                cap=1.0):
    """The UpdateRule loss of a batch, from the paper's definitions in numpy."""
    out = 0.0
    for i, g in enumerate(x["game_id"]):
        n = 6 if g == 0 else 3
        tau = temps[g]
        log_t = _log_softmax(y["teacher_outputs"][i, :n].astype(np.float64) / tau)
        log_s = _log_softmax(logits[i, :n])
        log_tn = _log_softmax(y["next_teacher_outputs"][i, :n].astype(np.float64) / tau)
        log_sn = _log_softmax(next_logits[i, :n])
        a, valid = int(y["actions"][i]), y["next_valid"][i] > 0
        r = float(np.clip(y["rewards"][i], -clip, clip))
        kl = divergence == "kl"

        def div(log_p, log_q, kl=kl):  # H_x(p || q), or KL(p || q)
            return -(np.exp(log_p) * (log_q - kl * log_p)).sum()

        h_ts = div(log_t, log_s)
        ell = {"teacher_distill": h_ts, "on_policy_distill": h_ts,
               "on_policy_distill_reward": h_ts, "n_distill": h_ts,
               "expected_entropy_regularised": div(log_s, log_t),
               "value_gated_distill": h_ts * float(
                   y["teacher_values"][i] > (np.exp(log_s) * y["teacher_outputs"][i, :n]).sum())
               }.get(rule, 0.0)
        ret = {"on_policy_distill_reward": r, "value_gated_distill": r,
               "entropy_regularised": log_t[a] - kl * log_s[a],
               "n_distill": -gamma * valid * div(log_tn, log_sn),
               "expected_entropy_regularised": -gamma * valid * div(log_sn, log_tn),
               "teacher_value_reward": r + gamma * (y["next_teacher_values"][i] if valid else 0.0)
               - y["teacher_values"][i]}.get(rule)
        if ret is not None:
            rho = min(math.exp(log_s[a] - y["behaviour_log_probs"][i]), cap)
            ell -= rho * ret * log_s[a]
        out += ell
    return out / len(x["game_id"])


@pytest.mark.parametrize("rule, divergence", [(r, "cross_entropy") for r in ur.RULE_NAMES] + [
    (r, "kl") for r in ("entropy_regularised", "n_distill", "expected_entropy_regularised")])
def test_update_rule_loss_on_a_tiny_student(rule, divergence):
    """Finite and equal to the rule's surrogate with one-step returns, worked
    out in numpy from the definitions (clipped rewards, truncated importance
    weights, terms at ended episodes dropped)."""
    temps = (0.5, 2.0)
    objective = ur.UpdateRule(rule=rule, temperatures=temps, divergence=divergence,
                              teacher_kinds=("q_values", "q_values"))
    s = _student(objective)
    x, y = _batch()
    y = {k: v for k, v in y.items() if k in objective.fields}
    pred = s(x)
    full = _batch()[1]
    logits = np.asarray(pred["logits"], np.float64)
    next_logits = np.asarray(s({"frames": full["next_frames"], "game_id": x["game_id"]})["logits"],
                             np.float64)
    want = _numpy_loss(rule, logits, next_logits, x, full, temps, divergence)
    total = float(_value(objective.loss(s, x, y, pred)))
    assert np.isfinite(total)
    assert total == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert float(_value(s.compute_loss(x, y, pred))) == pytest.approx(total, rel=1e-6)
    terms = objective.terms(s, x, y, pred)
    assert set(terms) == ({"reinforce"} if ur.SPECS[rule].loss == "0" else {"policy"}) | (
        {"reinforce"} if rule in ur._REINFORCE_RULES else set())


def test_update_rule_trains_with_keras_on_the_tensorflow_backend():
    """One compiled train step (symbolic tensors: the student is called on the
    next frames inside the step) changes the weights and gives a finite loss."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("train_on_batch covered on the TensorFlow backend")
    keras.utils.set_random_seed(0)
    s = _student(ur.UpdateRule(rule="expected_entropy_regularised", temperatures=(0.5, 2.0)))
    s.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = _batch()
    y = {k: v for k, v in y.items() if k in s.objective.fields}
    before = [np.array(w) for w in s.trainable_weights]
    loss = s.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert any(not np.allclose(b, np.array(w)) for b, w in zip(before, s.trainable_weights))


def test_a_teacher_without_value_is_refused():
    for rule in ("teacher_value_reward", "value_gated_distill"):
        objective = ur.UpdateRule(rule=rule, temperatures=(0.5, 2.0),
                                  teacher_kinds=("q_values", "q_values"))
        s = _student(objective)
        x, y = _batch()
        y["teacher_values"][2] = np.nan
        with pytest.raises(ValueError, match=f"^rule '{rule}' needs the teacher's state value"):
            objective.loss(s, x, y, s(x))


def test_importance_weights_are_truncated_ratios():
    objective = ur.UpdateRule(rule="on_policy_distill_reward", max_importance_weight=2.0)
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]], np.float32))
    y = {"actions": np.array([0, 1]), "behaviour_log_probs": np.log([0.1, 0.8])}
    rho = _value(objective.importance_weights(y, logits, np.ones((2, 3), np.float32)))
    np.testing.assert_allclose(rho, [2.0, 1.0], rtol=1e-5)  # 5 truncated to 2; 0.8 / 0.8
    off = ur.UpdateRule(rule="on_policy_distill_reward", importance_weighting=False)
    assert off.importance_weights(y, logits, None) is None
