"""Codistillation: the staleness schedule, the peer term, the data shares, the
driver (alternation, stale copies, resume), the flags, the disagreement."""

import numpy as np
import pytest
from conftest import flag_parser, new_writer, synthetic_episode

from multidistill import codistill, disagreement, distiller, objectives, pipeline, statistics


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory, spec):
    """Two games of 12 synthetic episodes each (enough to split into shares)."""
    d = tmp_path_factory.mktemp("codistill_datasets")
    for gi, (game, n_actions, n_feat) in enumerate([("pong", 6, 5), ("freeway", 3, 2)]):
        with new_writer(d / f"{game}.h5", spec, game=game, num_actions=n_actions,
                        feature_dim=n_feat) as w:
            for e in range(12):
                w.append_episode(synthetic_episode(30 + 5 * e, n_actions, n_feat,
                                                   seed=100 * gi + e))
    return d


def _config(num_grad_steps=12, refresh=4, burn_in=2, weight=1.0, **kw):
    base = dict(games=("pong", "freeway"),
                objective=codistill.Codistillation(
                    base=objectives.Distillation(temperatures=(0.01, 1.0)), weight=weight,
                    refresh_steps=refresh, burn_in_steps=burn_in),
                student_size="net3", head_units=16, num_grad_steps=num_grad_steps,
                checkpoint_every_steps=6, eval_every_steps=6, learning_rate=1e-3,
                pipeline=pipeline.PipelineConfig(batch_size_per_game=4, block_rows=64,
                                                 blocks_in_memory=4))
    base.update(kw)
    return distiller.DistillConfig(**base)


def _paths(datasets_dir, config):
    return [str(datasets_dir / f"{g}.h5") for g in config.games]


def _run(run_dir, datasets_dir, spec, config):
    sources = codistill.open_sources(
        _paths(datasets_dir, config), config,
        distiller.data_prefix(codistill.student_dir(run_dir, 0)))
    try:
        return codistill.Codistiller(run_dir, config, sources, spec, ["q_values", "logits"])
    except BaseException:
        for s in sources:
            s.close()
        raise


# -- the schedule ----------------------------------------------------------------------

def test_the_staleness_schedule_by_hand():
    k = 4
    assert [codistill.snapshot_step(i, k) for i in range(10)] == [0, 0, 0, 0, 4, 4, 4, 4, 8, 8]
    assert [i for i in range(10) if codistill.is_refresh(i, k)] == [0, 4, 8]
    assert [codistill.peer_active(i, 3) for i in range(5)] == [False, False, False, True, True]
    assert codistill.peer_active(0, 0)
    assert codistill.student_seed(7, 0) == 7 and codistill.student_seed(7, 1) == 1007


# -- the objective -----------------------------------------------------------------------

class _Student:
    """What an objective reads of a student: the action mask."""

    def __init__(self, mask):
        self.mask = np.asarray(mask, np.float32)

    def action_mask(self, game_id):
        from keras import ops

        return ops.take(ops.convert_to_tensor(self.mask), game_id, axis=0)


def _kl(p, q):
    return float(np.sum(p * (np.log(p) - np.log(q))))


def _softmax(z):
    e = np.exp(z - np.max(z))
    return e / e.sum()


def test_the_peer_term_against_a_hand_computation():
    from keras import ops

    student = _Student([[1, 1, 1], [1, 1, 0]])  # Game 1 has two actions.
    x = {"game_id": np.array([0, 1], np.int32)}
    z = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]], np.float32)
    peer = np.array([[1.0, 0.0, -1.0], [0.0, 2.0, 9.0]], np.float32)
    teacher = np.array([[0.2, 0.1, 0.3], [1.0, -1.0, 0.0]], np.float32)
    obj = codistill.Codistillation(base=objectives.Distillation(temperatures=(0.5, 1.0)),
                                   weight=0.3)
    y = {"teacher_outputs": teacher, "peer_logits": peer,
         "peer_active": np.ones(2, np.float32)}
    terms = obj.terms(student, x, y, {"logits": ops.convert_to_tensor(z)})
    peer_term = np.mean([_kl(_softmax(peer[0]), _softmax(z[0])),
                         _kl(_softmax(peer[1, :2]), _softmax(z[1, :2]))])
    policy = np.mean([_kl(_softmax(teacher[0] / 0.5), _softmax(z[0])),
                      _kl(_softmax(teacher[1, :2]), _softmax(z[1, :2]))])
    np.testing.assert_allclose(float(terms["peers"]), 0.3 * peer_term, rtol=1e-5)
    np.testing.assert_allclose(float(terms["policy"]), policy, rtol=1e-5)
    np.testing.assert_allclose(float(obj.loss(student, x, y, {"logits": z})),
                               policy + 0.3 * peer_term, rtol=1e-5)
    off = dict(y, peer_active=np.zeros(2, np.float32))  # During the burn-in.
    assert float(obj.terms(student, x, off, {"logits": z})["peers"]) == 0.0
    assert obj.fields == ("teacher_outputs", "peer_logits", "peer_active")
    assert obj.temperatures == (0.5, 1.0) and obj.policy_loss == "kl"


def test_mean_policy_logits_averages_policies():
    mask = np.array([[1, 1, 0]], np.float32)
    a, b = np.array([[0.0, 1.0, 5.0]]), np.array([[2.0, -1.0, 0.0]])
    out = codistill.mean_policy_logits([a, b], mask)
    mean = 0.5 * (_softmax(a[0, :2]) + _softmax(b[0, :2]))
    np.testing.assert_allclose(_softmax(out[0, :2]), mean, rtol=1e-5)
    assert out[0, 2] < -1e8


def test_objective_errors():
    for kw, msg in [({"weight": -1}, "weight must be >= 0"),
                    ({"num_students": 1}, "num_students must be >= 2"),
                    ({"refresh_steps": 0}, "refresh_steps must be >= 1"),
                    ({"burn_in_steps": -1}, "burn_in_steps must be >= 0")]:
        with pytest.raises(ValueError, match=msg):
            codistill.Codistillation(**kw)


# -- the shares ----------------------------------------------------------------------

def test_shares_cover_the_training_episodes_once_and_share_the_heldout(datasets_dir):
    path = str(datasets_dir / "pong.h5")
    config = pipeline.PipelineConfig(batch_size_per_game=4, block_rows=16, blocks_in_memory=2)
    whole = pipeline.HDF5Source([path], config)
    w = whole.windows[0]
    assert whole.identity().get("share") is None  # Identities of earlier runs unchanged.
    n_train = int(np.searchsorted(w.ds.episode_starts, w.holdout_range[0]))
    for n in (2, 3):
        covered = []
        for i in range(n):
            s = pipeline.HDF5Source([path], config, share=(i, n))
            sw = s.windows[0]
            assert sw.holdout_range == w.holdout_range
            assert s.identity()["share"] == [i, n]
            # Every block drawn lies in the share.
            assert all(sw.train_range[0] <= sw._block_start(slot, g)
                       and sw._block_start(slot, g) + sw.block_rows <= sw.train_range[1]
                       for slot in range(2) for g in range(5))
            covered.append(sw.train_range)
            hx, _ = s.holdout(0)
            wx, _ = whole.holdout(0)
            np.testing.assert_array_equal(hx["frames"], wx["frames"])
            s.close()
        assert covered[0][0] == 0 and covered[-1][1] == w.holdout_range[0]
        assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
        # Shares start on episode boundaries.
        assert all(r[0] in set(w.ds.episode_starts.tolist()) for r in covered)
        firsts = [pipeline.share_episodes(n_train, (i, n)) for i in range(n)]
        assert sum(b - a for a, b in firsts) == n_train
    whole.close()
    with pytest.raises(ValueError, match="share must be"):
        pipeline.HDF5Source([path], config, share=(2, 2))


# -- the driver ------------------------------------------------------------------------

def test_students_alternate_and_copies_lag_as_scheduled(tmp_path, datasets_dir, spec):
    config = _config(num_grad_steps=10, refresh=4, burn_in=2)
    run = _run(tmp_path / "run", datasets_dir, spec, config)
    seen = []  # (student, batch, copy step, copies' weights = students' then?)
    history = {0: [run.students[0].student.get_weights()],
               1: [run.students[1].student.get_weights()]}
    label = [run._labeller(0), run._labeller(1)]

    def spy(i):
        def f(index, x):
            out = label[i](index, x)
            seen.append((i, index, run.snapshot_at, out[1]))
            if out[1]:
                peer = 1 - i  # The copy holds the peer's weights after snapshot_at steps.
                for a, b in zip(run.stale[peer].get_weights(), history[peer][run.snapshot_at]):
                    np.testing.assert_array_equal(a, b)
            return out
        return f

    for i in range(2):
        run.students[i].source._label = spy(i)
    order = []
    for i, r in run.steps():
        order.append((i, r.grad_step))
        history[i].append(run.students[i].student.get_weights())
    run.close()
    assert order == [(i % 2, i // 2 + 1) for i in range(20)]
    assert [(i, b) for i, b, _, _ in seen] == [(i % 2, i // 2) for i in range(20)]
    assert [s for i, b, s, a in seen if a] == [codistill.snapshot_step(b, 4)
                                               for i, b, _, a in seen if a]
    assert [a for _, b, _, a in seen] == [float(b >= 2) for _, b, _, _ in seen]
    assert (tmp_path / "run" / "stale_step8.npz").exists()


def _weights(run):
    return [[np.asarray(v) for v in d.student.weights] for d in run.students]


def test_resume_reproduces_the_uninterrupted_run(tmp_path, datasets_dir, spec):
    straight = _run(tmp_path / "a", datasets_dir, spec, _config(num_grad_steps=10))
    straight.train(progress=False)
    w_straight = _weights(straight)
    straight.close()

    # Stopped at step 6 (a checkpoint between refreshes at 4 and 8): the
    # copies of step 4 come back from stale_step4.npz.
    first = _run(tmp_path / "b", datasets_dir, spec, _config(num_grad_steps=6))
    first.train(progress=False)
    first.close()
    assert (tmp_path / "b" / "stale_step4.npz").exists()
    assert not (tmp_path / "b" / "stale_step0.npz").exists()  # Past every checkpoint.
    resumed = _run(tmp_path / "b", datasets_dir, spec, _config(num_grad_steps=10))
    assert resumed.grad_steps == [6, 6]
    summary = resumed.train(progress=False)
    assert summary["grad_steps"] == 10 and summary["students"] == 2
    for a, b in zip(w_straight, _weights(resumed)):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    resumed.close()
    for i in range(2):
        assert (tmp_path / "b" / f"student_{i}" / "student.keras").exists()


def test_the_peer_term_changes_training_and_the_students_differ(tmp_path, datasets_dir, spec):
    run = _run(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=4, burn_in=0,
                                                             refresh=2))
    run.train(progress=False)
    w = _weights(run)
    cfg = [d.config for d in run.students]
    ident = [d.source.identity()["share"] for d in run.students]
    run.close()
    assert ident == [[0, 2], [1, 2]]
    assert cfg[0].pipeline.seed == 0 and cfg[1].pipeline.seed == 1000
    assert any(not np.allclose(a, b) for a, b in zip(w[0], w[1]))


def test_a_missing_snapshot_is_a_clear_error(tmp_path, datasets_dir, spec):
    first = _run(tmp_path / "b", datasets_dir, spec, _config(num_grad_steps=6))
    first.train(progress=False)
    first.close()
    (tmp_path / "b" / "stale_step4.npz").unlink()
    resumed = _run(tmp_path / "b", datasets_dir, spec, _config(num_grad_steps=10))
    with pytest.raises(distiller.TrainingError, match="stale_step4.npz is missing"):
        resumed.train(progress=False)
    resumed.close()


def test_a_run_resumes_only_with_its_schedule(tmp_path, datasets_dir, spec):
    first = _run(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=2))
    first.train(progress=False)
    first.close()
    with pytest.raises(distiller.TrainingError, match="other settings"):
        _run(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=4, refresh=5))


def test_plain_configs_keep_their_identity():
    plain = distiller.DistillConfig(games=("pong",),
                                    objective=objectives.Distillation(temperatures=(1.0,)))
    assert plain.objective.to_dict() == {"name": "distillation", "policy_loss": "kl",
                                         "temperatures": [1.0], "feature_beta": 0.0,
                                         "policy_weight": 1.0}
    assert "codistill" not in str(plain.identity())
    co = _config()
    assert co.identity()["objective"]["name"] == "codistillation"
    assert co.identity()["objective"]["refresh_steps"] == 4


# -- flags -------------------------------------------------------------------------------

@pytest.fixture
def parse():
    yield from flag_parser()


def test_flags_build_the_objective(parse):
    cli = parse("--codistill=2", "--codistill_weight=0.5", "--codistill_refresh_steps=7",
                "--codistill_burn_in_steps=3", "--feature_beta=0.01")
    c = cli.distill_config_from_flags(["pong", "freeway"], ["q_values", "logits"])
    assert c.objective == codistill.Codistillation(
        base=objectives.Distillation(temperatures=(0.01, 1.0), feature_beta=0.01),
        weight=0.5, num_students=2, refresh_steps=7, burn_in_steps=3)
    for off in ("--codistill=0", "--codistill=1"):
        c = parse(off).distill_config_from_flags(["pong"], ["q_values"])
        assert isinstance(c.objective, objectives.Distillation)


@pytest.mark.parametrize("argv,msg", [
    (["--codistill_weight=2"], "--codistill_weight applies with --codistill=2"),
    (["--codistill=1", "--codistill_refresh_steps=3"], "--codistill_refresh_steps applies"),
    (["--codistill=-1"], "--codistill must be >= 0"),
    (["--codistill=2", "--iekd"], "--codistill adds its peer term"),
    (["--codistill=2", "--update_rule=teacher_distill"], "--codistill adds its peer term"),
    (["--codistill=2", "--codistill_weight=-1"], "--codistill_weight must be >= 0"),
    (["--codistill=2", "--codistill_refresh_steps=0"], "--codistill_refresh_steps must be >= 1"),
    (["--codistill=2", "--codistill_burn_in_steps=-2"],
     "--codistill_burn_in_steps must be >= 0"),
    (["--codistill=2", "--distribution=multi_worker"], "one process"),
])
def test_flag_errors(parse, argv, msg):
    cli = parse(*argv)
    with pytest.raises(cli.UsageError, match=msg):
        cli.distill_config_from_flags(["pong"], ["q_values"])


# -- disagreement ------------------------------------------------------------------------

def test_policy_disagreement_by_hand():
    a = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    b = np.log(np.array([[0.5, 0.4, 0.1], [0.6, 0.3, 0.1]]))
    d = disagreement.policy_disagreement(a, b)
    assert d["disagreement"] == 0.5 and d["num_states"] == 2
    np.testing.assert_allclose(d["tv"], np.mean([0.2, 0.7]))
    same = disagreement.policy_disagreement(a, a + 3.0)  # Same policies.
    assert same["disagreement"] == 0 and same["tv"] < 1e-12
    with pytest.raises(ValueError, match="one shape"):
        disagreement.policy_disagreement(a, b[:1])
    m = disagreement.state_measures(a, b)
    np.testing.assert_allclose(m["disagreement"], [0.0, 1.0])
    np.testing.assert_allclose(m["tv"], [0.2, 0.7])


def test_block_resampled_means_by_hand():
    """Blocks of array_split, drawn by index; a resample's mean is the mean
    of all the values of its blocks (a block of 3 weighs more than one of 2)."""
    class Draws:  # The resamples' block indices, as rng.integers would give them.
        def integers(self, low, high, size):
            assert (low, high, size) == (0, 2, (3, 2))
            return np.array([[0, 1], [1, 1], [0, 0]])

    got = statistics.block_resampled_means([1, 2, 3, 4, 5], 2, 3, Draws())
    np.testing.assert_allclose(got, [15 / 5, 18 / 4, 12 / 6])
    # More blocks than values: one value a block.
    rng = np.random.default_rng(0)
    got = statistics.block_resampled_means([0.0, 1.0], 16, 1000, rng)
    assert set(np.round(got, 6)) == {0.0, 0.5, 1.0}


def test_summarise_gives_intervals_per_game_and_over_games():
    per_game = {"pong": {"disagreement": np.ones(32), "tv": np.full(32, 0.25)},
                "freeway": {"disagreement": np.r_[np.zeros(16), np.ones(16)],
                            "tv": np.zeros(32)}}
    s = disagreement.summarise(per_game, statistics.Bootstrap(resamples=2000))
    pong, freeway = s["games"]["pong"], s["games"]["freeway"]
    assert pong["disagreement"] == 1.0 and pong["disagreement_ci"] == [1.0, 1.0]
    assert pong["tv_ci"] == [0.25, 0.25] and pong["num_states"] == 32
    # Freeway's first half agrees, its second does not: blocks of 2 states,
    # so resamples range widely around 0.5.
    assert freeway["disagreement"] == 0.5
    lo, hi = freeway["disagreement_ci"]
    assert 0.2 < lo < 0.5 < hi < 0.8
    # Over games: the mean of the games' means, its interval half as wide.
    assert s["mean"]["disagreement"] == 0.75
    mlo, mhi = s["mean"]["disagreement_ci"]
    np.testing.assert_allclose([mlo, mhi], [(1 + lo) / 2, (1 + hi) / 2], atol=0.02)
    assert s["mean"]["tv"] == 0.125 and s["mean"]["tv_ci"] == [0.125, 0.125]
    # One state: no interval, for the game or the mean.
    one = disagreement.summarise({"pong": {"disagreement": np.ones(1), "tv": np.ones(1)}})
    assert one["games"]["pong"]["disagreement_ci"] is None and one["mean"]["tv_ci"] is None
    table = disagreement.disagreement_markdown({"x": s, "y": one})
    assert (f"| x | 50.0 [{100 * lo:.1f}, {100 * hi:.1f}] / 0.0 [0.0, 0.0] | 100.0 [100.0, "
            "100.0] / 25.0 [25.0, 25.0] | 75.0 [") in table
    assert "| y | - | 100.0 / 100.0 | 100.0 | 100.0 |" in table


def test_heldout_disagreement_of_two_runs(tmp_path, datasets_dir, spec):
    run = _run(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=2))
    run.train(progress=False)
    run.close()
    a, b = (codistill.student_dir(tmp_path / "run", i) for i in range(2))
    paths = _paths(datasets_dir, _config())
    d = disagreement.heldout_disagreement(a, b, paths, max_rows=64)
    assert set(d["games"]) == {"pong", "freeway"} and d["games"]["pong"]["num_states"] > 0
    assert d["mean"]["disagreement_ci"] is not None
    same = disagreement.heldout_disagreement(a, a, paths, max_rows=64)
    assert same["games"]["pong"]["tv"] == 0 and same["mean"]["disagreement_ci"] == [0.0, 0.0]
