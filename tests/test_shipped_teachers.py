"""The teachers committed in teachers/: they load and are what their cards say."""

import numpy as np
import pytest
from conftest import REPO

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
    labels = t.label(np.zeros((2,) + spec.observation_shape, np.uint8))
    out = labels["outputs"]
    assert out.shape == (2, t.num_actions) and np.all(np.isfinite(out))
    assert labels["features"].shape == (2, t.feature_dim)
    # The value the card states (cards from before values: the network's).
    assert card.get("value", t.value_source) == t.value_source
    if t.value_source == "max_q":
        np.testing.assert_array_equal(labels["values"], out.max(1))
    elif t.value_source == "none":
        assert np.isnan(labels["values"]).all()
    else:
        assert labels["values"].shape == (2,) and np.isfinite(labels["values"]).all()


def test_at_least_one_shipped_teacher_is_a_dqn():
    kinds = {g: teachers.load_teacher(g).kind for g in GAMES}
    assert "q_values" in kinds.values(), kinds


CANDIDATES = REPO / "teachers" / "candidates"


@pytest.mark.parametrize("game", sorted(p.stem for p in CANDIDATES.glob("*.json")))
def test_candidate_teachers_load_match_their_cards_and_list_their_stages(game):
    """teachers/candidates/ (issue #14): loadable, card and table in step,
    and every stage of the training on the card, frames increasing."""
    t = teachers.load_teacher(game, CANDIDATES, environments.Preprocessing())
    assert t.card["keras_sha256"] == teachers.sha256_of(t.path)
    training = t.card["training"]
    stages = training["earlier_stages"]
    frames = [s["num_env_frames"] for s in stages] + [training["num_env_frames"]]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    ev = t.card["evaluation"]
    assert ev["episodes"] >= 30 and ev["mean"] == pytest.approx(np.mean(ev["returns"]))
    readme = (CANDIDATES / "README.md").read_text()
    assert teachers.cards_table(CANDIDATES) in readme
