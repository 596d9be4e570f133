"""Game registry, preprocessing spec, frame stacking."""

import numpy as np
import pytest

from multidistill import environments, games


def test_known_games_and_minimal_action_sets():
    assert games.get_game("pong").num_actions == 6
    assert games.get_game("qbert").num_actions == 6
    assert games.get_game("freeway").num_actions == 3
    assert games.get_game("Q*bert").name == "qbert"
    assert games.get_game("MsPacman").name == "ms_pacman"
    assert games.get_game("pong", full_action_space=True).num_actions == 18


@pytest.mark.parametrize("game, expected", [
    ("pong", (0, 1, 3, 4, 11, 12)),  # NOOP FIRE RIGHT LEFT RIGHTFIRE LEFTFIRE
    ("qbert", (0, 1, 2, 3, 4, 5)),  # NOOP FIRE UP RIGHT LEFT DOWN
    ("freeway", (0, 2, 5)),  # NOOP UP DOWN
])
def test_minimal_actions_map_into_the_full_action_set_by_ale_meanings(game, expected):
    from ale_py.env import AtariEnv

    minimal, full = AtariEnv(game=game), AtariEnv(game=game, full_action_space=True)
    try:
        minimal_meanings, full_meanings = (minimal.get_action_meanings(),
                                           full.get_action_meanings())
    finally:
        minimal.close()
        full.close()
    info = games.get_game(game)
    assert len(full_meanings) == games.NUM_ALE_ACTIONS
    assert info.ale_action_indices == expected
    assert info.action_meanings == tuple(minimal_meanings)
    assert [full_meanings[i] for i in info.ale_action_indices] == minimal_meanings
    # With the full action space, action i is ALE's action i.
    assert games.get_game(game, full_action_space=True).ale_action_indices == tuple(range(18))


def test_unknown_game_lists_valid_names():
    with pytest.raises(ValueError, match="unknown game 'pongg'.*freeway.*pong.*qbert"):
        games.get_game("pongg")


def test_parse_games_errors():
    assert games.parse_games("pong, Qbert ,freeway") == ["pong", "qbert", "freeway"]
    with pytest.raises(ValueError, match="--games is empty"):
        games.parse_games(" , ")
    with pytest.raises(ValueError, match="names the game 'pong' twice"):
        games.parse_games("pong,qbert,Pong")
    with pytest.raises(ValueError, match="--games: unknown game 'nope'"):
        games.parse_games("pong,nope")


def test_human_normalised_score():
    pong = games.get_game("pong")
    # (score - random) / (human - random) with random -20.7, human 14.6.
    assert pong.human_normalized(14.6) == pytest.approx(1.0)
    assert pong.human_normalized(-3.05) == pytest.approx((-3.05 + 20.7) / 35.3)
    assert games.get_game("pitfall").human_normalized(0.0) is not None
    assert games.get_game("adventure").human_normalized(1.0) is None


def test_preprocessing_round_trip_and_validation():
    spec = environments.Preprocessing(sticky_action_prob=0.25)
    assert environments.Preprocessing.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="unknown preprocessing settings \\['colour'\\]"):
        environments.Preprocessing.from_dict({"colour": True}, "card.json")
    with pytest.raises(ValueError, match="sticky_action_prob must be in \\[0, 1\\]"):
        environments.Preprocessing(sticky_action_prob=1.5)
    diffs = spec.differences(environments.Preprocessing())
    assert diffs == ["sticky_action_prob: 0.25 here vs 0.0"]


def test_stack_frames_never_crosses_episode_start():
    frames = np.arange(1, 7, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    # Two episodes: steps 0-3 and 4-5.
    offsets = np.array([0, 1, 2, 3, 0, 1])
    before = frames.copy()
    obs = environments.stack_frames(frames, np.arange(6), offsets, 4)
    np.testing.assert_array_equal(frames, before)  # The input is left alone.
    firsts = obs[:, :, 0, 0]
    expected = np.array([
        [0, 0, 0, 1],
        [0, 0, 1, 2],
        [0, 1, 2, 3],
        [1, 2, 3, 4],
        [0, 0, 0, 5],
        [0, 0, 5, 6],
    ])
    np.testing.assert_array_equal(firsts, expected)
    # Some rows only, in any order.
    some = environments.stack_frames(frames, np.array([5, 2]), offsets[[5, 2]], 4)
    np.testing.assert_array_equal(some[:, :, 0, 0], expected[[5, 2]])


def test_stack_frames_with_a_stride_and_wrapping():
    # Two interleaved streams, a (1, 2, 3, ...) and b (101, 102, ...): a_k at 2k, b_k at 2k+1.
    frames = np.zeros((10, 1, 1), np.uint8)
    frames[0::2, 0, 0] = np.arange(1, 6)
    frames[1::2, 0, 0] = np.arange(101, 106)
    obs = environments.stack_frames(frames, np.array([8, 5, 3]), np.array([4, 2, 0]), 3,
                                    stride=2)
    np.testing.assert_array_equal(obs[:, :, 0, 0], [[3, 4, 5], [101, 102, 103], [0, 0, 102]])
    # A circular memory of 5 frames: row 1's history wraps to rows 4, 3, ...
    ring = np.array([6, 7, 3, 4, 5], np.uint8)[:, None, None]
    obs = environments.stack_frames(ring, np.array([1, 1]), np.array([4, 2]), 4)
    np.testing.assert_array_equal(obs[:, :, 0, 0], [[4, 5, 6, 7], [0, 5, 6, 7]])


def test_vector_env_matches_spec():
    spec = environments.Preprocessing()
    env = environments.make_vector_env("freeway", spec, 2, num_threads=1)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2,) + spec.observation_shape and obs.dtype == np.uint8
    # After a reset the frames before the first are zeros (datasets rely on it).
    assert obs[:, :3].max() == 0 and obs[:, 3].max() > 0
    env.close()
