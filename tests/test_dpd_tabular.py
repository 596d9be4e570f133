"""The tabular study of Czarnecki et al. (benchmarks/dpd_tabular.py): the
quick run writes its report and figure; its exact updates are the gradients
the paper names; and a few behaviours that must hold."""

import dataclasses

import numpy as np
import pytest
from conftest import REPO, finite_difference_gradient


@pytest.fixture(scope="module")
def dpd(tmp_path_factory):
    import sys

    sys.path.insert(0, str(REPO))  # `benchmarks` is not an installed package.
    try:
        from benchmarks import dpd_tabular
    finally:
        sys.path.remove(str(REPO))
    return dpd_tabular


@pytest.fixture(scope="module")
def quick(dpd, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpd")
    result = dpd.main(["--quick", "--output", str(out / "report.md"),
                       "--plot", str(out / "figure.png")])
    return out, result


def test_the_rule_names_are_those_of_update_rules(dpd):
    from multidistill import update_rules

    assert dpd.RULE_NAMES == update_rules.RULE_NAMES


def test_quick_run_writes_the_report_and_the_figure(dpd, quick):
    out, result = quick
    text = (out / "report.md").read_text()
    assert text == result["report"]
    for heading in ("## Results", "## What the paper found, and whether it reproduces here",
                    "## The MDPs and the teacher", "## Settings"):
        assert heading in text
    assert "Command: `python -m benchmarks.dpd_tabular --quick --output " in text
    assert "Seed: 0; 4 MDPs of 5 x 5 cells (25 states), 4 actions; 150 updates per run." in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ")]
    for c in dpd.CONFIGS:
        row = next(ln for ln in rows if ln.startswith(f"| {c.name} | {c.control} |"))
        cells = [x.strip() for x in row.strip("|").split("|")]
        assert len(cells) == 8, row
        assert cells[2].endswith("%") and cells[3].endswith("%")
        float(cells[6]), float(cells[7])  # the final KLs are numbers
    for f in dataclasses.fields(dpd.Settings):
        assert any(ln.startswith(f"| {f.name} | ") for ln in rows), f.name
    for k in range(1, 7):
        assert f"\n{k}. " in text
    assert "REPRODUCE" in text and "NOT TESTED" in text
    png = (out / "figure.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert f"]({(out / 'figure.png').resolve()})" in text


def test_quick_run_behaviour(dpd, quick):
    """Teacher distill is gradient descent on a convex objective whose value is
    the KL on the teacher's states (plus a constant): it falls at every
    evaluation, to under a tenth of its start, on every MDP. Entropy
    regularised and expected entropy regularised share one expected update:
    equal curves. Under the KL reading N-distill's objective is >= 0 and 0 at
    the teacher, so no student scores below the teacher. On-policy distill
    ends within 5 % of the teacher's return on every quick MDP."""
    _, result = quick
    curves, summary = result["curves"], result["summary"]
    kl_t = curves["teacher_distill"]["kl_teacher"]
    assert np.all(np.diff(kl_t, axis=1) <= 1e-12)
    assert np.all(kl_t[:, -1] < 0.1 * kl_t[:, 0])
    np.testing.assert_allclose(curves["entropy_regularised"]["return"],
                               curves["expected_entropy_regularised"]["return"], atol=1e-9)
    assert summary["n_distill, KL reading"]["below_teacher_objective"] == 0.0
    assert 0.0 <= summary["n_distill"]["below_teacher_objective"] <= 1.0
    assert summary["on_policy_distill"]["converged"] == 1.0
    assert np.all(result["problem"].optimal_return >= 1.0)
    assert np.all(result["problem"].teacher_return > 0.0)


def test_mdps_follow_the_generator(dpd):
    s = dpd.Settings(num_mdps=3, grid_size=5, seed=4)
    m = dpd.make_mdps(s)
    centre = 2 * 5 + 2
    assert m.P.shape == (3, 4, 25, 25) and m.R.shape == (3, 25, 4)
    assert np.all(m.start[:, centre] == 1.0) and np.all(m.kind[:, centre] == 0)
    live = np.broadcast_to((m.kind == 0)[:, None, :], (3, 4, 25))
    rows = m.P.sum(-1)  # probability of continuing from (s, a)
    # From a live cell, at least the 1 % reset ends the episode; walls and
    # terminal cells are never acted in.
    assert np.all(rows[live] <= 1 - s.reset_probability + 1e-12)
    assert rows[live].max() == pytest.approx(1 - s.reset_probability)
    assert np.all(rows[~live] == 0.0)
    # Nobody enters a wall or continues from a terminal cell.
    blocked = np.broadcast_to((m.kind != 0)[:, None, None, :], m.P.shape)
    assert np.all(m.P[blocked] == 0.0)
    assert dpd.make_mdps(s).kind.tolist() == m.kind.tolist()  # seeded


@pytest.mark.parametrize("name", [
    "teacher_distill", "entropy_regularised", "n_distill", "expected_entropy_regularised",
    "teacher_value_reward", "n_distill, KL reading", "expected_entropy_regularised, KL reading"])
def test_exact_updates_are_the_gradients_the_paper_names(dpd, name):
    """The benchmark's exact expected update, times the control's episode
    length (it is a per-step mean), is the finite-difference gradient of the
    rule's objective (multidistill.update_rules' table) on small grid worlds."""
    s = dpd.Settings(num_mdps=2, grid_size=3, goal_probability=0.3, wall_probability=0.1,
                     trap_probability=0.2, seed=1)
    prob = dpd.make_problem(s)
    config = next(c for c in dpd.CONFIGS if c.name == name)
    kl = config.divergence == "kl"
    P, start, log_t = prob.mdps.P, prob.mdps.start, prob.log_pi_t
    pi_t = np.exp(log_t)

    def objective(theta):
        log_s = dpd.log_softmax(theta)
        pi_s = np.exp(log_s)
        d_s = dpd.visits(P, pi_s, start)
        if config.rule == "teacher_distill":
            return np.sum(prob.d_t * -(pi_t * log_s).sum(-1))
        if config.rule == "n_distill":
            return np.sum(d_s * -(pi_t * (log_s - kl * log_t)).sum(-1))
        if config.rule in ("entropy_regularised", "expected_entropy_regularised"):
            return np.sum(d_s * -(pi_s * (log_t - kl * log_s)).sum(-1))
        return -np.sum(dpd.values(P, pi_s, prob.mdps.R) * start)

    theta = np.random.default_rng(0).normal(size=(2, 9, 4))
    control = pi_t if config.control == "teacher" else dpd.softmax(theta)
    length = dpd.visits(P, control, start).sum(-1)
    got = dpd.expected_update(config, prob, theta)[0] * length[:, None, None]
    want = finite_difference_gradient(objective, theta)
    assert np.abs(want).max() > 1e-2
    np.testing.assert_allclose(got, want, atol=1e-6 * np.abs(want).max() + 1e-8)


def test_settings_are_checked(dpd):
    with pytest.raises(ValueError, match="^grid_size must be >= 3, found 2$"):
        dpd.Settings(grid_size=2)
    with pytest.raises(ValueError, match=r"^transition_noise must be in \[0, 1\], found 2.0$"):
        dpd.Settings(transition_noise=2.0)
    with pytest.raises(SystemExit):
        dpd.parse_args(["--num_mdps", "many"])
