"""Side-by-side videos: frame count, size and timing of the GIF, same seed ->
same game, the twin RGB environment in sync with the protocol one, argument
checks, the cap, frozen columns and atomic writing.

Players are small numpy functions, not networks; episodes are capped at
1,200 emulator frames (conftest `spec`)."""

import json

import numpy as np
import pytest
from PIL import Image

from multidistill import environments, files, videos

SEED = 1_000_000
WIDTH_2 = 2 * videos.SCREEN_WIDTH + videos.GAP  # Two players: 324 pixels.
HEIGHT = videos.CAPTION_HEIGHT + videos.SCREEN_HEIGHT  # 238 pixels.


def constant(values):
    """A predict function that returns the same outputs for every observation."""
    row = np.asarray(values, np.float32)[None]
    return lambda obs: np.repeat(row, len(obs), axis=0)


def looking(num_actions):
    """A predict function that depends on the observation (so that different
    games make it act differently)."""
    weights = np.random.default_rng(0).normal(size=(4 * 84 * 84, num_actions)).astype(np.float32)

    def predict(obs):
        x = obs.reshape(len(obs), -1).astype(np.float32) / 255.0
        return x @ weights

    return predict


def decode(path):
    """All frames of a GIF as (N, H, W, 3) uint8, and the per-frame delays (ms)."""
    frames, delays = [], []
    with Image.open(path) as im:
        for k in range(im.n_frames):
            im.seek(k)
            frames.append(np.asarray(im.convert("RGB")))
            delays.append(im.info["duration"])
    return np.stack(frames), delays


def columns(frames):
    """The two players' columns (caption and screen) of decoded frames."""
    left = frames[:, :, :videos.SCREEN_WIDTH]
    right = frames[:, :, videos.SCREEN_WIDTH + videos.GAP:]
    return left, right


def test_gif_has_the_frames_size_and_delays_it_says(tmp_path, spec):
    out = tmp_path / "v" / "pong.gif"
    result = videos.record_side_by_side(
        "pong", [("student", looking(6), "logits"), ("teacher", constant([0, 1, 0, 0, 0, 0]),
                                                      "q_values")],
        spec, SEED, 0.05, out, max_seconds=2.0, fps=15)
    with Image.open(out) as im:
        assert im.format == "GIF"
        assert im.n_frames == 30
        assert im.size == (WIDTH_2, HEIGHT) == (324, 238)
        assert im.info["loop"] == 0
    frames, delays = decode(out)
    # 1000/15 ms in GIF's 10 ms units: 70, 60, 70, ... adding up to 2 s exactly.
    assert delays[:3] == [70, 60, 70]
    assert sum(delays) == 2000
    assert len(frames) == 30
    assert json.loads(json.dumps(result)) == result
    assert result["path"] == str(out)
    assert result["frames"] == 30 and result["fps"] == 15 and result["seed"] == SEED
    assert result["bytes"] == out.stat().st_size
    assert result["size"] == [324, 238]
    assert result["desynced_at_step"] is None and result["desync"] is None
    assert set(result["players"]) == {"student", "teacher"}
    for p in result["players"].values():
        assert p["steps"] == 29 and not p["episode_over"]
    assert not files.temporary_path(out).exists()
    # Consecutive frames differ (the step counter), so none was merged.
    assert all((frames[k] != frames[k + 1]).any() for k in range(len(frames) - 1))


@pytest.mark.parametrize("fps,expected", [(15, [70, 60, 70]), (10, [100] * 3), (30, [30, 40, 30]),
                                          (50, [20] * 3)])
def test_delays_keep_the_average_exact(fps, expected):
    delays = videos._durations(3 * fps, fps)
    assert delays[:3] == expected
    assert sum(delays) == 3000
    assert min(delays) >= 20


def test_identical_players_show_identical_games(tmp_path, spec):
    """Same predict, logits sampling and epsilon 0.3: the random draws are the
    same too, so both columns match pixel for pixel (labels aside)."""
    predict = looking(6)
    result = videos.record_side_by_side(
        "pong", [("a", predict, "logits"), ("b", predict, "logits")],
        spec, SEED, 0.3, tmp_path / "same.gif", max_seconds=4.0, fps=15)
    frames, _ = decode(result["path"])
    left, right = columns(frames)
    label_line = slice(0, 14)  # "a" / "b" differ; the step counter is there too.
    assert np.array_equal(left[:, label_line.stop:], right[:, label_line.stop:])
    a, b = result["players"]["a"], result["players"]["b"]
    assert a == b
    # Not vacuous: the game moves, and a different player differs.
    screens = left[:, videos.CAPTION_HEIGHT:]
    assert len({s.tobytes() for s in screens}) > 20
    other = videos.record_side_by_side(
        "pong", [("a", predict, "logits"), ("c", constant([0, 0, 1, 0, 0, 0]), "q_values")],
        spec, SEED, 0.3, tmp_path / "other.gif", max_seconds=4.0, fps=15)
    frames, _ = decode(other["path"])
    left2, right2 = columns(frames)
    assert np.array_equal(left2[:, 14:], left[:, 14:])  # The same player plays the same.
    assert not np.array_equal(left2[:, 14:], right2[:, 14:])


def test_screen_twin_reproduces_the_protocol_observation(spec):
    """The RGB twin, reset with the same seed and sent the same actions, shows
    what the policy sees (grayscale, resized); seeded otherwise it does not."""
    env = environments.make_vector_env("qbert", spec, 1, num_threads=1)
    same, other = videos.make_screen_env("qbert", spec), videos.make_screen_env("qbert", spec)
    try:
        obs, info = env.reset(seed=np.array([SEED]))
        screen, same_info = same.reset(seed=np.array([SEED]))
        other_screen, other_info = other.reset(seed=np.array([SEED + 1]))
        assert screen.shape == (1, 1, 210, 160, 3) and screen.dtype == np.uint8
        rng = np.random.default_rng(0)
        same_darker, same_brighter, other_darker, other_problems = 0, 0, [], 0
        for _ in range(150):
            frame = obs[0, -1].astype(int)
            difference = videos.observation_frame(screen[0, 0], spec) - frame
            same_darker = max(same_darker, int((difference < -16).sum()))
            same_brighter = max(same_brighter, int((difference > 16).sum()))
            difference = videos.observation_frame(other_screen[0, 0], spec) - frame
            other_darker.append(int((difference < -16).sum()))
            action = rng.integers(0, 6, size=1).astype(np.int32)
            for e in (env, same, other):
                e.send(action)
            obs, reward, terminated, truncated, info = env.recv()
            screen, s_reward, s_terminated, s_truncated, same_info = same.recv()
            other_screen, *other_step = other.recv()
            assert reward[0] == s_reward[0] and terminated[0] == s_terminated[0]
            assert info["episode_frame_number"][0] == same_info["episode_frame_number"][0]
            assert not videos._check_sync(spec, obs[0], screen[0, 0],
                                          (reward, terminated, truncated, info),
                                          (s_reward, s_terminated, s_truncated, same_info))
            # The picture alone (same rewards and counters) tells the other apart.
            other_problems += "picture" in videos._check_sync(
                spec, obs[0], other_screen[0, 0], (reward, terminated, truncated, info),
                (reward, terminated, truncated, info))
        # The same game: only max-pooling's flicker (a few brighter pixels).
        assert same_darker == 0 and same_brighter < 0.005 * 84 * 84
        assert np.median(other_darker) > 20
        assert other_problems > 120
    finally:
        environments.close_all([env, same, other])


def test_a_twin_seeded_otherwise_is_caught_at_the_reset(tmp_path, spec, monkeypatch):
    make = videos.make_screen_env

    class Reseeded:
        def __init__(self, *args):
            self.env = make(*args)

        def reset(self, seed):
            return self.env.reset(seed=seed + 1)

        def __getattr__(self, name):
            return getattr(self.env, name)

    monkeypatch.setattr(videos, "make_screen_env", Reseeded)
    out = tmp_path / "never.gif"
    result = videos.record_side_by_side("pong", [("a", constant([1, 0, 0, 0, 0, 0]), "q_values")],
                                        spec, SEED, 0.0, out, max_seconds=1.0)
    assert result["desynced_at_step"] == 0
    assert "'a'" in result["desync"] and "episode_frame_number" in result["desync"]
    assert result["frames"] == 0 and result["path"] is None and result["bytes"] == 0
    assert not out.exists()


def test_a_twin_that_drifts_stops_the_recording_there(tmp_path, spec, monkeypatch):
    """From step 20 on the twin of player b gets another action: the pictures
    part, the recording stops at the first step that disagrees."""
    make = videos.make_screen_env
    made = []

    class Drifting:
        def __init__(self, *args):
            self.env, self.steps = make(*args), 0
            made.append(self)
            self.drifts = len(made) == 2  # Player b's twin only.

        def send(self, action):
            self.steps += 1
            drift = self.drifts and self.steps > 20
            self.env.send(np.array([2], np.int32) if drift else action)

        def __getattr__(self, name):
            return getattr(self.env, name)

    monkeypatch.setattr(videos, "make_screen_env", Drifting)
    down = constant([0, 0, 0, 0, 0, 1])
    result = videos.record_side_by_side("pong", [("a", down, "q_values"), ("b", down, "q_values")],
                                        spec, SEED, 0.0, tmp_path / "drift.gif", max_seconds=10.0)
    at = result["desynced_at_step"]
    assert at is not None and 20 < at < 40, result
    assert "'b'" in result["desync"] and "'a'" not in result["desync"]
    assert result["frames"] == at
    with Image.open(result["path"]) as im:
        assert im.n_frames == at


@pytest.mark.parametrize("change,named", [
    (dict(players=[]), "players"),
    (dict(players=[("a", None, "q_values")]), "predict"),
    (dict(players=[("a", constant([0] * 6), "softmax")]), "kind"),
    (dict(players=[("a", constant([0] * 6), "logits")] * 2), "labels must be distinct"),
    (dict(players=[("", constant([0] * 6), "logits")]), "label"),
    (dict(fps=0), "fps"),
    (dict(fps=2.5), "fps"),
    (dict(fps=60), "fps"),
    (dict(max_seconds=0), "max_seconds"),
    (dict(max_seconds=-1.0), "max_seconds"),
    (dict(max_seconds=0.01), "max_seconds * fps"),
    (dict(max_seconds=float("inf")), "max_seconds"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(epsilon=1.5), "epsilon"),
    (dict(game="pongg"), "unknown game"),
])
def test_bad_arguments_raise_value_errors_naming_them(tmp_path, spec, change, named):
    args = dict(game="pong", players=[("a", constant([0] * 6), "logits")],
                preprocessing=spec, seed=SEED, epsilon=0.05, out_path=tmp_path / "x.gif")
    args.update(change)
    with pytest.raises(ValueError, match=named.replace("*", r"\*")) as e:
        videos.record_side_by_side(**args)
    assert "found" in str(e.value) or "expected" in str(e.value)
    assert not (tmp_path / "x.gif").exists()


def test_outputs_of_the_wrong_shape_are_refused(tmp_path, spec):
    with pytest.raises(ValueError, match=r"player 'a'.*\(1, 6\).*\(1, 4\)"):
        videos.record_side_by_side("pong", [("a", constant([0] * 4), "logits")], spec, SEED,
                                   0.05, tmp_path / "x.gif", max_seconds=1.0)
    assert not (tmp_path / "x.gif").exists()


@pytest.mark.parametrize("max_seconds,fps", [(1.0, 15), (1.3, 10), (0.5, 7)])
def test_the_cap_is_max_seconds_times_fps_frames(tmp_path, spec, max_seconds, fps):
    result = videos.record_side_by_side("freeway", [("up", constant([0, 1, 0]), "q_values")],
                                        spec, SEED, 0.05, tmp_path / "c.gif",
                                        max_seconds=max_seconds, fps=fps)
    expected = int(max_seconds * fps)
    assert result["frames"] == expected
    assert result["players"]["up"]["steps"] == expected - 1
    with Image.open(result["path"]) as im:
        assert im.n_frames == expected
        assert im.size == (videos.SCREEN_WIDTH, HEIGHT)  # One player: no gap.


def test_an_episode_that_ends_first_freezes_its_column(tmp_path, spec):
    """Q*bert jumping UP off the pyramid ends at 275 agent steps; standing
    still is cut at 300 (the test spec's 1,200 frames). The recording runs
    until both are over (301 frames: the reset's and one per step), the
    first column unchanged from its last step on."""
    result = videos.record_side_by_side(
        "qbert", [("up", constant([0, 0, 1, 0, 0, 0]), "q_values"),
                  ("still", constant([1, 0, 0, 0, 0, 0]), "q_values")],
        spec, 3, 0.0, tmp_path / "q.gif", max_seconds=60.0)
    up, still = result["players"]["up"], result["players"]["still"]
    assert up["episode_over"] and still["episode_over"]
    assert up["steps"] < still["steps"] == 300
    assert result["frames"] == 301
    frames, _ = decode(result["path"])
    left, right = columns(frames)
    end = up["steps"]
    assert all(np.array_equal(left[k], left[end]) for k in range(end, len(frames)))
    assert not np.array_equal(left[end - 1], left[end])  # "episode over" appears.
    assert not np.array_equal(right[end], right[-1])


def test_a_failed_recording_leaves_no_file(tmp_path, spec):
    out = tmp_path / "broken.gif"
    out.write_bytes(b"old")
    calls = []

    def failing(obs):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("network died")
        return np.zeros((len(obs), 6), np.float32)

    with pytest.raises(RuntimeError, match="network died"):
        videos.record_side_by_side("pong", [("a", failing, "logits")], spec, SEED, 0.05, out,
                                   max_seconds=2.0)
    assert out.read_bytes() == b"old"
    assert not files.temporary_path(out).exists()


def test_palette_keeps_the_exact_colours():
    palette = videos._Palette()
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(40, 3), dtype=np.uint8)
    frames = [colours[rng.integers(0, 20 + 10 * k, size=(6, 7))] for k in range(3)]
    indices = [palette.index(f) for f in frames]
    images, transparent = palette.images(indices)
    assert transparent == len(palette.colours) <= 40
    table = np.array(images[0].getpalette()[:3 * len(palette.colours)], np.uint8).reshape(-1, 3)
    for frame, idx in zip(frames, indices):
        assert np.array_equal(table[idx], frame)


# -- the area resize (what ALE does to the screen, without OpenCV) ----------------


def test_area_resize_matches_a_hand_computation():
    # 5 rows -> 2 (scale 2.5): rows 0,1 whole and half of row 2 -> weights .4 .4 .2, then
    # .2 .4 .4; 4 columns -> 2 (scale 2): pairs averaged.
    image = np.array([[0, 20, 100, 110],
                      [0, 20, 100, 110],
                      [50, 70, 200, 210],
                      [10, 30, 20, 30],
                      [30, 50, 40, 50]], np.uint8)
    # Column pairs: (10, 105) (10, 105) (60, 205) (20, 25) (40, 45), then
    # .4*10 + .4*10 + .2*60 = 20, .4*105 + .4*105 + .2*205 = 125,
    # .2*60 + .4*20 + .4*40 = 36, .2*205 + .4*25 + .4*45 = 69.
    assert videos.area_resize(image, 2, 2).tolist() == [[20, 125], [36, 69]]
    # 3 columns -> 2 (scale 1.5): weights 2/3 1/3 0 and 0 1/3 2/3: 1 and 1 + 170.
    assert videos.area_resize(np.array([[0, 3, 255]], np.uint8), 1, 2).tolist() == [[1, 171]]
    # A constant image stays constant; the same size is the identity.
    assert (videos.area_resize(np.full((210, 160), 77, np.uint8), 84, 84) == 77).all()
    assert np.array_equal(videos.area_resize(image, 5, 4), image)
    with pytest.raises(ValueError, match=r"found shape \(5, 4\)"):
        videos.area_resize(image, 6, 4)


def test_area_resize_agrees_with_opencv_within_a_grey_level():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for k in range(20):
        image = rng.integers(0, 256, (210, 160), dtype=np.uint8)
        if k % 2:  # Few grey levels, as on an Atari screen.
            image = (rng.integers(0, 4, (210, 160)) * 85).astype(np.uint8)
        ours = videos.area_resize(image, 84, 84).astype(int)
        theirs = cv2.resize(image, (84, 84), interpolation=cv2.INTER_AREA)
        difference = np.abs(ours - theirs)
        # Differences are ties (an exact .5) that OpenCV's float32 sums round otherwise.
        assert difference.max() <= 1 and (difference > 0).mean() < 0.05, k
