"""The teachers committed in teachers/: they load and are what their cards say."""

import numpy as np
import pytest

from multidistill import environments, teachers

GAMES = ("pong", "qbert", "freeway")


@pytest.mark.parametrize("game", GAMES)
def test_shipped_teacher_loads_and_matches_its_card(game):
    spec = environments.Preprocessing()  # train.py's default preprocessing.
    t = teachers.load_teacher(game, teachers.DEFAULT_TEACHERS_DIR, spec)
    card = t.card
    assert card["keras_sha256"] == teachers.sha256_of(t.path)
    assert card["kind"] == t.kind and card["game"] == game
    training = card["training"]
    assert training["command"].startswith("python -m multidistill.train_teacher")
    assert training["algorithm"] == {"q_values": "dqn", "logits": "ppo"}[t.kind]
    ev = card["evaluation"]
    assert ev["episodes"] == len(ev["returns"]) >= 8
    assert ev["mean"] == pytest.approx(np.mean(ev["returns"]))
    assert ev["protocol"]["epsilon"] == 0.05
    out, feats = t.label(np.zeros((2,) + spec.observation_shape, np.uint8))
    assert out.shape == (2, t.num_actions) and np.all(np.isfinite(out))


def test_at_least_one_shipped_teacher_is_a_dqn():
    kinds = {g: teachers.load_teacher(g).kind for g in GAMES}
    assert "q_values" in kinds.values(), kinds
