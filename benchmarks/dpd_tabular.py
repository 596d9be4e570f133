"""The tabular study of Czarnecki et al., "Distilling Policy Distillation"
(AISTATS 2019): every update rule of `multidistill.update_rules`, under the
control policies the paper studies, on random grid-world MDPs, with a
tabular softmax student and exact expected updates.

    python -m benchmarks.dpd_tabular            # default sizes: a few minutes on 2 cores
    python -m benchmarks.dpd_tabular --quick    # tiny sizes: a smoke test
    python -m benchmarks.dpd_tabular --help     # every setting, with its unit

Writes a Markdown report (`--output`, default benchmarks/dpd_tabular.md) and
a figure (`--plot`, default benchmarks/dpd_tabular.png). numpy only (and
matplotlib for the figure); no deep-learning framework is imported. BLAS
runs on one thread (set before numpy loads; a caller that imports numpy
first should set OPENBLAS_NUM_THREADS=1 itself: threaded BLAS on these
small solves was 25 times slower on a loaded machine).

The MDPs (the paper's appendix, "Experimental details"; values the text
read did not give are marked CHOSEN):
  * an N x N grid (the paper: 20 x 20; here 10 x 10 by default, CHOSEN for
    time), one state per cell, the initial state in the centre;
  * four actions, up, down, left and right (plus `--extra_actions` that
    leave the agent where it is, for larger action spaces); a move that
    would leave the grid or enter a wall leaves the agent in place;
  * transition noise eta: the intended move with probability 1 - eta, and
    with probability eta/4 each of the four moves (eta = 0.1: the figure of
    a summary of the paper, not read in the paper itself);
  * after every action, with probability 0.01 the agent is moved to a
    special reset state, which ends the episode (no reward);
  * rewards belong to states and are deterministic; some states are
    terminal: entering one gives its reward and ends the episode;
  * the generator visits every cell from the upper-left corner, row by row,
    and changes at most one thing per cell: a wall with probability
    p_wall, else a +10 terminal with probability p_goal, else a -10
    terminal with probability p_trap (the three probabilities CHOSEN: the
    text read names the steps, not their values); the centre cell is left
    empty. An MDP whose optimal return from the start is below 1 (no goal
    within reach) is redrawn (CHOSEN: the teacher's return must be
    positive for "% of the teacher's return" to mean something); the
    report counts the redraws.
The paper averages over 1000 MDPs; the default here is 64.

The teacher (CHOSEN): softmax(Q* / T) of the optimal action values Q*
(policy iteration, undiscounted), T = `--teacher_temperature`: near-optimal
but stochastic, so that its cross-entropy and its KL differ. (The paper's
teachers were trained by Q-learning or A2C, at several temperatures.)

The student: one logit per state and action, all 0 at the start (uniform).

Updates. Exact expected updates (not sampled, as the paper's are): for the
control policy q, the expected visits d_q(s) of each state in an episode
(a linear solve), and for rules with a reward the exact expected return
Q^(s, a) = E[sum_{i >= t} r^_i | s_t = s, a_t = a] under the student (a
second solve), then

    g(theta)_s = d_q(s) / L_q * ( grad l(s) - sum_a pi_S(a|s) grad log pi_S(a|s) Q^(s, a) ),

with L_q = sum_s d_q(s) the expected episode length (the per-step mean a
minibatch of sampled steps would estimate), and theta <- theta - lr g.
Exact updates have no variance: entropy regularised and expected entropy
regularised, whose expected updates are equal, give the same curves here,
so the paper's finding about their variance is not tested (see the
report). Control policies: teacher distill (the teacher acts), on-policy
distill (the student), the same loss under uniform random control and
under a 1/2 teacher / 1/2 student mixture; every other rule under student
control, as in the paper. N-distill and expected entropy regularised also
run under the alternative "KL" reading of the paper's divergences (see
`multidistill.update_rules`: KL in place of each cross-entropy).

Metrics, every `--eval_every` updates: the student's expected return from
the initial state (exact), as % of the teacher's; KL(pi_T || pi_S) averaged
over the states the student visits (weights d_S) and over those the
teacher visits (d_T). "Reached 95 %": the first update at which the return
is >= 95 % of the teacher's; "converged": >= 95 % at the last update.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

# One BLAS thread: the solves are small (S x S, S = cells), and OpenBLAS's
# spinning threads slowed them 25-fold on a loaded 2-core machine. Effective
# when this module imports numpy first (python -m benchmarks.dpd_tabular).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "benchmarks" / "dpd_tabular.md"
DEFAULT_PLOT = REPO / "benchmarks" / "dpd_tabular.png"

# Names of multidistill.update_rules.RULE_NAMES (a test checks they agree;
# this module does not import Keras).
RULE_NAMES = (
    "teacher_distill", "on_policy_distill", "on_policy_distill_reward", "entropy_regularised",
    "n_distill", "expected_entropy_regularised", "teacher_value_reward", "value_gated_distill",
)


@dataclasses.dataclass(frozen=True)
class Config:
    """One curve of the study: a rule's loss and reward under a control policy."""

    name: str
    rule: str
    control: str  # "teacher", "student", "uniform" or "mixture"
    divergence: str = "cross_entropy"  # or "kl": the uncertain reading (update_rules)


CONFIGS = (
    Config("teacher_distill", "teacher_distill", "teacher"),
    Config("on_policy_distill", "on_policy_distill", "student"),
    Config("distill, uniform control", "on_policy_distill", "uniform"),
    Config("distill, mixture control", "on_policy_distill", "mixture"),
    Config("on_policy_distill_reward", "on_policy_distill_reward", "student"),
    Config("entropy_regularised", "entropy_regularised", "student"),
    Config("n_distill", "n_distill", "student"),
    Config("expected_entropy_regularised", "expected_entropy_regularised", "student"),
    Config("teacher_value_reward", "teacher_value_reward", "student"),
    Config("value_gated_distill", "value_gated_distill", "student"),
    Config("n_distill, KL reading", "n_distill", "student", "kl"),
    Config("expected_entropy_regularised, KL reading", "expected_entropy_regularised",
           "student", "kl"),
)
assert {c.rule for c in CONFIGS} == set(RULE_NAMES)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the study runs (each field is the flag of that name; units in `FLAG_HELP`)."""

    num_mdps: int = 64
    grid_size: int = 10
    updates: int = 800
    eval_every: int = 5
    learning_rate: float = 2.0
    teacher_temperature: float = 0.1
    transition_noise: float = 0.1
    reset_probability: float = 0.01
    wall_probability: float = 0.15
    goal_probability: float = 0.02
    trap_probability: float = 0.04
    extra_actions: int = 0
    seed: int = 0

    def __post_init__(self):
        for name in ("num_mdps", "grid_size", "updates", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")
        if self.grid_size < 3:
            raise ValueError(f"grid_size must be >= 3, found {self.grid_size}")
        for name in ("transition_noise", "reset_probability", "wall_probability",
                     "goal_probability", "trap_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], found {getattr(self, name)}")
        if not self.reset_probability > 0:
            raise ValueError("reset_probability must be > 0 (episodes must end)")
        for name in ("learning_rate", "teacher_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, found {getattr(self, name)}")
        if self.extra_actions < 0:
            raise ValueError(f"extra_actions must be >= 0, found {self.extra_actions}")

    @property
    def num_actions(self) -> int:
        return 4 + self.extra_actions


QUICK = Settings(num_mdps=4, grid_size=5, updates=150, eval_every=5)

FLAG_HELP = {
    "num_mdps": "random MDPs (count)",
    "grid_size": "cells per side of the grid (the paper: 20)",
    "updates": "expected updates per run (count)",
    "eval_every": "updates between two evaluations (count)",
    "learning_rate": "step size of theta <- theta - lr * g (per-step mean update)",
    "teacher_temperature": "T of the teacher softmax(Q*/T) (reward units)",
    "transition_noise": "eta: probability of a uniformly random move instead (probability)",
    "reset_probability": "chance per action of the episode-ending reset (probability)",
    "wall_probability": "chance of a wall per cell (probability)",
    "goal_probability": "chance of a +10 terminal per non-wall cell (probability)",
    "trap_probability": "chance of a -10 terminal per remaining cell (probability)",
    "extra_actions": "actions beyond the four moves, each leaving the agent in place (count; "
                     "exact updates: no variance to study)",
    "seed": "seed of the MDP generator (integer)",
}


# -- MDPs ---------------------------------------------------------------------------


@dataclasses.dataclass
class MDPs:
    """A batch of M MDPs of S = N*N states (cells) and A actions.

    P: (M, A, S, S) probability of continuing from s to s' under a (the
      reset and the terminal states excluded: rows sum to < 1).
    R: (M, S, A) expected reward of an action.
    start: (M, S) one-hot initial state.
    kind: (M, S) 0 empty, 1 wall, 2 goal (+10, terminal), 3 trap (-10, terminal).
    redrawn: MDPs drawn and rejected (no goal within reach).
    """

    P: np.ndarray
    R: np.ndarray
    start: np.ndarray
    kind: np.ndarray
    redrawn: int


def _draw_layout(n: int, s: Settings, rng: np.random.Generator) -> np.ndarray:
    kind = np.zeros(n * n, np.int8)
    centre = (n // 2) * n + n // 2
    for cell in range(n * n):  # row by row from the upper-left corner
        if cell == centre:
            continue
        if rng.random() < s.wall_probability:
            kind[cell] = 1
        elif rng.random() < s.goal_probability:
            kind[cell] = 2
        elif rng.random() < s.trap_probability:
            kind[cell] = 3
    return kind


def _dynamics(kind: np.ndarray, n: int, s: Settings):
    """P (A, S, S) and R (S, A) of one layout."""
    num_s, num_a = n * n, s.num_actions
    moves = ((-1, 0), (1, 0), (0, -1), (0, 1))
    z = np.zeros((4, num_s), np.int64)  # where each move leads
    for cell in range(num_s):
        i, j = divmod(cell, n)
        for a, (di, dj) in enumerate(moves):
            ii, jj = i + di, j + dj
            ok = 0 <= ii < n and 0 <= jj < n and kind[ii * n + jj] != 1
            z[a, cell] = ii * n + jj if ok else cell
    noise = np.zeros((num_s, num_s))
    for a in range(4):
        noise[np.arange(num_s), z[a]] += 0.25
    t = np.zeros((num_a, num_s, num_s))
    for a in range(num_a):
        target = z[a] if a < 4 else np.arange(num_s)
        t[a] = s.transition_noise * noise
        t[a][np.arange(num_s), target] += 1.0 - s.transition_noise
    reward = np.where(kind == 2, 10.0, np.where(kind == 3, -10.0, 0.0))
    terminal = (kind >= 2)
    live = 1.0 - s.reset_probability
    p = live * t * (~terminal)[None, None, :]
    p[:, (kind != 0), :] = 0.0  # walls are never entered; terminal states end the episode
    r = live * np.einsum("ast,t->sa", t, reward)
    r[kind != 0] = 0.0
    return p, r


def make_mdps(s: Settings) -> MDPs:
    """`s.num_mdps` random grid worlds (the module docstring), seeded by `s.seed`."""
    rng = np.random.default_rng(s.seed)
    n = s.grid_size
    ps, rs, kinds, redrawn = [], [], [], 0
    start = np.zeros(n * n)
    start[(n // 2) * n + n // 2] = 1.0
    while len(ps) < s.num_mdps:
        kind = _draw_layout(n, s, rng)
        p, r = _dynamics(kind, n, s)
        q_star = optimal_q(p[None], r[None])[0]
        if q_star.max(-1) @ start < 1.0:
            redrawn += 1
            continue
        ps.append(p)
        rs.append(r)
        kinds.append(kind)
    m = len(ps)
    return MDPs(np.stack(ps), np.stack(rs), np.tile(start, (m, 1)), np.stack(kinds), redrawn)


# -- exact policy evaluation -------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _policy_p(P: np.ndarray, pi: np.ndarray) -> np.ndarray:
    return np.einsum("msa,mast->mst", pi, P)


def values(P: np.ndarray, pi: np.ndarray, rhat: np.ndarray) -> np.ndarray:
    """V(s) = E_pi[sum_t rhat(s_t, a_t) | s_0 = s], (M, S): (I - P_pi) V = r_pi."""
    eye = np.eye(P.shape[-1])
    return np.linalg.solve(eye - _policy_p(P, pi), (pi * rhat).sum(-1)[..., None])[..., 0]


def visits(P: np.ndarray, pi: np.ndarray, start: np.ndarray) -> np.ndarray:
    """d(s) = expected visits of s in an episode under pi, (M, S)."""
    eye = np.eye(P.shape[-1])
    a = np.swapaxes(eye - _policy_p(P, pi), -1, -2)
    return np.linalg.solve(a, start[..., None])[..., 0]


def q_values(P: np.ndarray, pi: np.ndarray, rhat: np.ndarray) -> np.ndarray:
    """Q(s, a) = rhat(s, a) + sum_s' P(s'|s, a) V(s'), (M, S, A)."""
    return rhat + np.einsum("mast,mt->msa", P, values(P, pi, rhat))


def optimal_q(P: np.ndarray, R: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Q* by policy iteration (undiscounted; the reset ends every episode)."""
    pi = np.full(R.shape, 1.0 / R.shape[-1])
    for _ in range(iterations):
        q = q_values(P, pi, R)
        greedy = np.eye(R.shape[-1])[q.argmax(-1)]
        if np.array_equal(greedy, pi):
            break
        pi = greedy
    return q


# -- the rules' exact expected updates ---------------------------------------------------


@dataclasses.dataclass
class Problem:
    """The MDPs and their teacher."""

    mdps: MDPs
    log_pi_t: np.ndarray  # (M, S, A)
    v_t: np.ndarray  # (M, S) the teacher's value
    d_t: np.ndarray  # (M, S) the teacher's visits
    teacher_return: np.ndarray  # (M,)
    optimal_return: np.ndarray  # (M,)


def make_problem(s: Settings) -> Problem:
    mdps = make_mdps(s)
    q_star = optimal_q(mdps.P, mdps.R)
    log_pi_t = log_softmax(q_star / s.teacher_temperature)
    pi_t = np.exp(log_pi_t)
    v_t = values(mdps.P, pi_t, mdps.R)
    d_t = visits(mdps.P, pi_t, mdps.start)
    return Problem(mdps, log_pi_t, v_t, d_t, (v_t * mdps.start).sum(-1),
                   (q_star.max(-1) * mdps.start).sum(-1))


def _cross_entropy(log_p, log_q):
    return -(np.exp(log_p) * log_q).sum(-1)


def _divergence(log_p, log_q, divergence):
    """H_x(p || q) per state, or KL(p || q)."""
    out = _cross_entropy(log_p, log_q)
    return out - _cross_entropy(log_p, log_p) if divergence == "kl" else out


def expected_update(config: Config, prob: Problem, theta: np.ndarray):
    """g(theta) of the module docstring, (M, S, A), and the student's values
    under the environment's reward (M, S)."""
    P, R = prob.mdps.P, prob.mdps.R
    log_s = log_softmax(theta)
    pi_s, pi_t, log_t = np.exp(log_s), np.exp(prob.log_pi_t), prob.log_pi_t
    control = {"teacher": pi_t, "student": pi_s, "mixture": 0.5 * (pi_t + pi_s),
               "uniform": np.full_like(pi_s, 1.0 / pi_s.shape[-1])}[config.control]
    d = visits(P, control, prob.mdps.start)
    weight = d / d.sum(-1, keepdims=True)
    v_s = values(P, pi_s, R)
    rule = config.rule
    # grad of l(s) with respect to the logits of s
    if rule in ("entropy_regularised", "teacher_value_reward"):
        grad_l = np.zeros_like(theta)
    elif rule == "expected_entropy_regularised":
        u = log_t - log_s if config.divergence == "kl" else log_t
        grad_l = -pi_s * (u - (pi_s * u).sum(-1, keepdims=True))
    else:
        grad_l = pi_s - pi_t
        if rule == "value_gated_distill":
            grad_l = grad_l * (prob.v_t > v_s)[..., None]
    # expected per-step reward r^(s, a)
    rhat = None
    if rule in ("on_policy_distill_reward", "value_gated_distill"):
        rhat = R
    elif rule == "entropy_regularised":
        rhat = log_t
    elif rule == "n_distill":
        rhat = -np.einsum("mast,mt->msa", P, _divergence(log_t, log_s, config.divergence))
    elif rule == "expected_entropy_regularised":
        rhat = -np.einsum("mast,mt->msa", P, _divergence(log_s, log_t, config.divergence))
    elif rule == "teacher_value_reward":
        rhat = R + np.einsum("mast,mt->msa", P, prob.v_t) - prob.v_t[..., None]
    g = grad_l
    if rhat is not None:
        q = q_values(P, pi_s, rhat)
        g = g - pi_s * (q - (pi_s * q).sum(-1, keepdims=True))
    return weight[..., None] * g, v_s


def _kl(log_p, log_q):
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def run_config(config: Config, prob: Problem, s: Settings) -> dict:
    """Trains one student per MDP with `config`; the curves, (M, evals)."""
    m, num_s = prob.mdps.start.shape
    theta = np.zeros((m, num_s, s.num_actions))
    steps, returns, kl_s, kl_t = [], [], [], []
    for k in range(s.updates + 1):
        g, v_s = expected_update(config, prob, theta)
        if k % s.eval_every == 0 or k == s.updates:
            log_s = log_softmax(theta)
            d_s = visits(prob.mdps.P, np.exp(log_s), prob.mdps.start)
            kl = _kl(prob.log_pi_t, log_s)
            steps.append(k)
            returns.append((v_s * prob.mdps.start).sum(-1))
            kl_s.append((d_s * kl).sum(-1) / d_s.sum(-1))
            kl_t.append((prob.d_t * kl).sum(-1) / prob.d_t.sum(-1))
        if k < s.updates:
            theta = theta - s.learning_rate * g
    return {"steps": np.array(steps), "return": np.array(returns).T,
            "kl_student": np.array(kl_s).T, "kl_teacher": np.array(kl_t).T, "theta": theta}


def objective(config: Config, prob: Problem, pi: np.ndarray) -> np.ndarray:
    """The objective (minimised) of a gradient-field rule at the policy pi, (M,)
    (multidistill.update_rules' table; KL in place of H_x under the KL reading)."""
    log_t = prob.log_pi_t
    log_p = np.log(np.maximum(pi, 1e-300))
    kl = config.divergence == "kl"
    d = visits(prob.mdps.P, pi, prob.mdps.start)
    if config.rule == "n_distill":
        per_state = -(np.exp(log_t) * (log_p - kl * log_t)).sum(-1)
    elif config.rule in ("entropy_regularised", "expected_entropy_regularised"):
        per_state = -(pi * (log_t - kl * log_p)).sum(-1)
    else:
        raise ValueError(f"no objective here for {config.rule!r}")
    return (d * per_state).sum(-1)


# -- summary and report ---------------------------------------------------------------------


def summarise(config: Config, curves: dict, prob: Problem) -> dict:
    """Per config: share converged, updates to 95 %, final return % and KLs;
    for N-distill, the share of MDPs where the final student's objective is
    below the teacher's own (the teacher is not the optimum)."""
    pct = 100.0 * curves["return"] / prob.teacher_return[:, None]
    reached = pct >= 95.0
    first = np.where(reached.any(1), curves["steps"][reached.argmax(1)], np.inf)
    below = np.nan
    if config.rule == "n_distill":
        mine = objective(config, prob, softmax(curves["theta"]))
        below = float(np.mean(mine < objective(config, prob, np.exp(prob.log_pi_t)) - 1e-6))
    return {
        "below_teacher_objective": below,
        "converged": float(np.mean(pct[:, -1] >= 95.0)),
        "reached": float(np.mean(np.isfinite(first))),
        "updates_to_95": first,
        "final_return_pct": pct[:, -1],
        "final_kl_student": curves["kl_student"][:, -1],
        "final_kl_teacher": curves["kl_teacher"][:, -1],
        "return_pct": pct,
    }


_NEVER = 1e300  # stands for "not reached" (inf) inside percentiles


def _percentiles(x: np.ndarray, q) -> np.ndarray:
    """Percentiles where inf (not reached) counts as larger than any number."""
    out = np.percentile(np.where(np.isinf(x), _NEVER, x), q)
    return np.where(out >= _NEVER / 2, np.inf, out)


def _median_iqr(x: np.ndarray, fmt: str = "{:.0f}") -> str:
    lo, med, hi = _percentiles(x, [25, 50, 75])

    def f(v):
        return ">budget" if np.isinf(v) else fmt.format(v)

    return f"{f(med)} [{f(lo)}, {f(hi)}]"


def findings(summary: dict, s: Settings) -> list[str]:
    """The paper's qualitative findings, each checked against this run."""

    def med(name, key):
        return float(_percentiles(summary[name][key], 50))

    out = []
    t, o, u = "teacher_distill", "on_policy_distill", "distill, uniform control"
    t95, o95, u95 = (med(n, "updates_to_95") for n in (t, o, u))
    verdict = "REPRODUCES" if o95 < t95 else "DOES NOT REPRODUCE"
    out.append(f"Student-driven distillation reaches 95 % of the teacher's return sooner than "
               f"teacher-driven (the paper: about 3x faster): {verdict} (median updates "
               f"{o95:g} vs {t95:g}; converged {summary[o]['converged']:.0%} vs "
               f"{summary[t]['converged']:.0%}).")
    ks = (med(o, "final_kl_student"), med(t, "final_kl_student"))
    kt = (med(o, "final_kl_teacher"), med(t, "final_kl_teacher"))
    verdict = "REPRODUCES" if ks[0] < ks[1] and kt[1] <= kt[0] else (
        "PARTLY REPRODUCES" if ks[0] < ks[1] or kt[1] <= kt[0] else "DOES NOT REPRODUCE")
    out.append(f"Student-driven gives the lower KL on the student's own states, teacher-driven "
               f"the lower KL on the teacher's states (the paper's one exception): {verdict} "
               f"(final KL on student states "
               f"{ks[0]:.3g} vs {ks[1]:.3g}; on teacher states {kt[0]:.3g} vs {kt[1]:.3g}).")
    verdict = "REPRODUCES" if u95 >= max(o95, t95) else "DOES NOT REPRODUCE"
    out.append(f"Uniform control is the slowest of the three: {verdict} (median updates "
               f"{u95:g}).")
    er, eer = summary["entropy_regularised"], summary["expected_entropy_regularised"]
    same = np.allclose(er["return_pct"], eer["return_pct"], atol=1e-6)
    out.append("Entropy regularised is worse than expected entropy regularised in large action "
               "spaces because of its variance (the paper's Fig. 4): NOT TESTED, exact expected "
               "updates have no variance; the two rules share one objective and one expected "
               f"update, and their curves here are {'identical' if same else 'NOT identical'} "
               "(a check of the implementation).")
    nd, ndk = summary["n_distill"], summary["n_distill, KL reading"]
    eer, eerk = summary["expected_entropy_regularised"], summary[
        "expected_entropy_regularised, KL reading"]
    xent, kls = min(nd["converged"], eer["converged"]), min(ndk["converged"], eerk["converged"])
    verdict = ("REPRODUCES under the KL reading only" if kls >= 0.85 and kls > xent + 0.2 else
               "REPRODUCES" if min(xent, kls) >= 0.85 else "DOES NOT REPRODUCE")
    out.append(
        "The gradient-field rules N-distill and expected entropy regularised converge "
        f"reliably: {verdict}. Converged: N-distill {nd['converged']:.0%} (cross-entropy, "
        f"as read) vs {ndk['converged']:.0%} (KL reading); expected entropy regularised "
        f"{eer['converged']:.0%} vs {eerk['converged']:.0%}. With cross-entropies every step "
        "costs at least an entropy, so ending an episode early (into a -10 terminal) can "
        "lower the objective: N-distill's worst quartile ends at "
        f"{float(_percentiles(nd['final_return_pct'], 25)):.0f} % of the teacher's return "
        f"(KL reading: {float(_percentiles(ndk['final_return_pct'], 25)):.0f} %), and on "
        f"{nd['below_teacher_objective']:.0%} of the MDPs its final student scores a lower "
        "objective than the teacher itself (under the KL reading: "
        f"{ndk['below_teacher_objective']:.0%}): the optimum, not the optimisation, departs "
        "from the teacher. Expected "
        "entropy regularised with cross-entropy is mode-seeking (its optimum is the "
        "teacher's most likely action; final KL on student states "
        f"{med('expected_entropy_regularised', 'final_kl_student'):.3g} vs "
        f"{med('expected_entropy_regularised, KL reading', 'final_kl_student'):.3g} under "
        "the KL reading).")
    tv = med("teacher_value_reward", "updates_to_95")
    verdict = "REPRODUCES" if tv > o95 else "DOES NOT REPRODUCE"
    out.append(f"With a good teacher, the teacher-value reward learns more slowly than policy "
               f"copying (the paper's Fig. 6): {verdict} (median updates {tv:g} vs on-policy "
               f"distill {o95:g}); it optimises the return itself, and ends at "
               f"{med('teacher_value_reward', 'final_return_pct'):.0f} % of the teacher's "
               "return (it may exceed the teacher).")
    return out


def render_report(settings: Settings, prob: Problem, summary: dict, seconds: float,
                  command: str) -> str:
    m = prob.mdps
    kinds = m.kind
    n_states = settings.grid_size ** 2
    rows = ["| config | control | converged | reached 95 % | updates to 95 % median [IQR] "
            "| final return, % of teacher, median [IQR] | final KL, student states, median "
            "| final KL, teacher states, median |", "|---|---|---|---|---|---|---|---|"]
    for c in CONFIGS:
        r = summary[c.name]
        rows.append(
            f"| {c.name} | {c.control} | {r['converged']:.0%} | {r['reached']:.0%} "
            f"| {_median_iqr(r['updates_to_95'])} "
            f"| {_median_iqr(r['final_return_pct'])} "
            f"| {np.median(r['final_kl_student']):.3g} "
            f"| {np.median(r['final_kl_teacher']):.3g} |")
    setting_rows = ["| setting | value | unit |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        setting_rows.append(f"| {f.name} | {getattr(settings, f.name)} | {FLAG_HELP[f.name]} |")
    ratio = prob.teacher_return / prob.optimal_return
    lines = [
        "# Distilling Policy Distillation: the tabular study",
        "",
        "Czarnecki et al., AISTATS 2019 (arXiv 1902.02186): every update rule of",
        "`multidistill.update_rules` on random grid worlds, tabular softmax student,",
        "**exact expected updates** (no sampling). Generated by `benchmarks/dpd_tabular.py`",
        "(its docstring says what follows the paper and what was chosen).",
        "",
        f"Command: `{command}`  ",
        f"Seed: {settings.seed}; {m.P.shape[0]} MDPs of {settings.grid_size} x "
        f"{settings.grid_size} cells ({n_states} states), {settings.num_actions} actions; "
        f"{settings.updates} updates per run.  ",
        f"Wall time: {seconds:.0f} s on {os.cpu_count()} CPU(s), Python "
        f"{platform.python_version()}, numpy {np.__version__}.",
        "",
        "## Results",
        "",
        *rows,
        "",
        "converged: share of MDPs whose student return is >= 95 % of the teacher's at the last "
        "update; reached 95 %: at any evaluated update; updates to 95 %: the first such "
        "update (`>budget`: not reached, counted as infinite in the median). One step size "
        "serves every rule, so a rule whose update is larger (a reward channel in units of "
        "the +-10 rewards, or of log-probabilities) also moves further per update: counts "
        "of updates compare rules at equal step size, not at their best step sizes.",
        "",
        "## What the paper found, and whether it reproduces here",
        "",
        *[f"{i + 1}. {line}" for i, line in enumerate(findings(summary, settings))],
        "",
        "## The MDPs and the teacher",
        "",
        f"Per MDP, mean: {np.mean((kinds == 1).sum(1)):.1f} walls, "
        f"{np.mean((kinds == 2).sum(1)):.1f} +10 terminals, "
        f"{np.mean((kinds == 3).sum(1)):.1f} -10 terminals; {m.redrawn} draws rejected (no "
        "goal within reach).  ",
        f"Teacher softmax(Q*/{settings.teacher_temperature:g}): return from the start, "
        f"median {np.median(prob.teacher_return):.2f} (optimal "
        f"{np.median(prob.optimal_return):.2f}; teacher / optimal median "
        f"{np.median(ratio):.2f}).",
        "",
        "## Settings",
        "",
        *setting_rows,
        "",
        "![curves](dpd_tabular.png)",
        "",
    ]
    return "\n".join(lines)


def plot(path: Path, curves: dict, summary: dict) -> None:
    """Curves (median over MDPs) of return and KLs, then the summary figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.name for c in CONFIGS]
    colors = [*plt.get_cmap("tab10").colors, "black", "saddlebrown"][:len(names)]
    styles = ["--" if c.divergence == "kl" else "-" for c in CONFIGS]
    fig = plt.figure(figsize=(19, 11), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    axes = np.array([top.subplots(1, 3), bottom.subplots(1, 3)])
    panels = (("return_pct", "return, % of the teacher's", "Return", "linear"),
              ("kl_student", "KL(pi_T || pi_S) on the student's states", "KL, student's states",
               "log"),
              ("kl_teacher", "KL(pi_T || pi_S) on the teacher's states", "KL, teacher's states",
               "log"))
    for ax, (key, ylabel, title, scale) in zip(axes[0], panels):
        for name, col, ls in zip(names, colors, styles):
            data = summary[name][key] if key == "return_pct" else curves[name][key]
            ax.plot(curves[name]["steps"], np.median(data, 0), color=col, ls=ls, label=name)
        ax.set(xlabel="update", ylabel=ylabel + " (median over MDPs)", title=title,
               yscale=scale)
        if key == "return_pct":
            ax.axhline(95, color="grey", lw=0.8, ls=":")
            ax.set_ylim(40, 110)
    y = np.arange(len(names))
    ax = axes[1, 0]
    ax.barh(y, [100 * summary[n]["converged"] for n in names], color=colors)
    ax.set(yticks=y, yticklabels=names, xlabel="% of MDPs",
           title="Converged (>= 95 % of the teacher's return at the end)", xlim=(0, 100))
    ax.invert_yaxis()
    ax = axes[1, 1]
    med = [float(_percentiles(summary[n]["updates_to_95"], 50)) for n in names]
    budget = max(curves[names[0]]["steps"])
    ax.barh(y, [budget if np.isinf(v) else v for v in med], color=colors)
    for yi, v in zip(y, med):
        if np.isinf(v):
            ax.text(budget, yi, " not reached", va="center", fontsize=8)
    ax.set(yticks=y, yticklabels=names, xlabel="updates (median over MDPs)",
           title="Updates to reach 95 % of the teacher's return")
    ax.invert_yaxis()
    ax = axes[1, 2]
    ax.boxplot([summary[n]["final_return_pct"] for n in names], orientation="horizontal",
               tick_labels=names, showfliers=False)
    ax.axvline(95, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="final return, % of the teacher's (box: quartiles)",
           title="Final return over MDPs")
    ax.invert_yaxis()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    top.legend(handles, labels, loc="outside right upper", fontsize=9)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def run(settings: Settings, output: Path, plot_path: Path, command: str,
        progress: bool = True) -> dict:
    """Runs the study; writes the report and the figure; returns the summary."""
    t0 = time.perf_counter()
    prob = make_problem(settings)
    curves, summary = {}, {}
    for c in CONFIGS:
        t1 = time.perf_counter()
        curves[c.name] = run_config(c, prob, settings)
        summary[c.name] = summarise(c, curves[c.name], prob)
        if progress:
            print(f"{c.name:32s} converged {summary[c.name]['converged']:6.0%}  "
                  f"({time.perf_counter() - t1:.1f} s)", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    output = Path(output)
    plot_path = Path(plot_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    plot(plot_path, curves, summary)
    text = render_report(settings, prob, summary, seconds, command)
    if plot_path.parent.resolve() != output.parent.resolve() or plot_path.name != (
            "dpd_tabular.png"):
        text = text.replace("](dpd_tabular.png)", f"]({plot_path.resolve()})")
    output.write_text(text)
    return {"summary": summary, "curves": curves, "problem": prob, "seconds": seconds,
            "report": text}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dpd_tabular",
        description="The tabular study of Czarnecki et al. (2019): every distillation update "
                    "rule on random grid worlds, exact expected updates.")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (4 MDPs of 5 x 5, 150 updates): a smoke test; "
                             "size flags given explicitly still apply")
    for f in dataclasses.fields(Settings):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=None,
                            help=f"{FLAG_HELP[f.name]} (default {f.default}; --quick: "
                                 f"{getattr(QUICK, f.name)})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="Markdown report to write (path)")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT,
                        help="PNG figure to write (path)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    base = QUICK if args.quick else Settings()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
             if getattr(args, f.name) is not None}
    settings = dataclasses.replace(base, **given)
    command = "python -m benchmarks.dpd_tabular" + "".join(
        f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    result = run(settings, args.output, args.plot, command)
    print(result["report"])
    return result


if __name__ == "__main__":
    main()
