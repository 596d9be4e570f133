"""The student network: heads, masking, saving (run under each Keras backend)."""

import numpy as np
import pytest

from multidistill import losses, networks, objectives


def _student(**kw):
    s = networks.MultiTaskStudent(
        games=["pong", "freeway"], num_actions=[6, 3], feature_dims=[16, 8],
        conv_filters=(4, 4, 4), fc_units=32, head_units=8, **kw)
    return s.build_for_inputs()


def _batch(n=4):
    rng = np.random.default_rng(0)
    return {"frames": rng.integers(0, 255, size=(n, 4, 84, 84)).astype(np.uint8),
            "game_id": np.array([0, 1, 0, 1][:n], np.int32)}


def test_forward_shapes_and_masked_actions():
    s = _student(feature_projections=True)
    out = s(_batch())
    logits = np.asarray(out["logits"])
    assert logits.shape == (4, 6)
    assert np.asarray(out["features"]).shape == (4, 16)
    # Freeway has 3 actions: the other 3 are masked for its rows only.
    assert (logits[[1, 3], 3:] == networks.MASKED_LOGIT).all()
    assert (logits[[0, 2]] > networks.MASKED_LOGIT / 2).all()
    # Freeway's feature projection is 8 wide: padding stays zero.
    assert (np.asarray(out["features"])[[1, 3], 8:] == 0).all()
    assert (np.asarray(out["features"])[[0, 2]] != 0).any()
    np.testing.assert_array_equal(np.asarray(s.action_mask(np.array([1, 0]))),
                                  [[1, 1, 1, 0, 0, 0], [1] * 6])
    np.testing.assert_array_equal(np.asarray(s.feature_mask(np.array([1])))[0],
                                  [1] * 8 + [0] * 8)


def test_without_feature_projections_features_are_zeros_and_weightless():
    s = _student()
    with_projections = _student(feature_projections=True)
    assert s.feature_projections == [] and not s.feature_projections_enabled
    assert with_projections.count_params() - s.count_params() == (32 * 16 + 16) + (32 * 8 + 8)
    out = s(_batch())
    assert np.asarray(out["features"]).shape == (4, 16)
    assert (np.asarray(out["features"]) == 0).all()


def test_legacy_loss_settings_are_accepted_and_dropped():
    """Students saved before objectives carry loss, temperatures and
    feature_beta in their config; feature_beta > 0 meant projections."""
    s = _student(loss="nll", temperatures=[0.5, 2.0], feature_beta=0.01)
    assert s.feature_projections_enabled and s.objective is None
    config = s.get_config()
    assert not {"loss", "temperatures", "feature_beta"} & set(config)
    assert config["feature_projections"] is True
    assert not _student(feature_beta=0.0).feature_projections_enabled


def test_policy_network_equals_head_of_full_model():
    s = _student()
    x = _batch()
    full = np.asarray(s(x)["logits"])
    pong = np.asarray(s.policy_network("pong")(x["frames"]))
    freeway = np.asarray(s.policy_network("freeway")(x["frames"]))
    np.testing.assert_allclose(full[[0, 2]], pong[[0, 2]], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(full[[1, 3], :3], freeway[[1, 3]], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no head for 'qbert'"):
        s.policy_network("qbert")


def test_compute_loss_is_kl_with_per_game_temperature():
    s = _student(objective=objectives.Distillation(temperatures=(0.5, 2.0)))
    x = _batch()
    rng = np.random.default_rng(1)
    y = {"teacher_outputs": rng.normal(size=(4, 6)).astype(np.float32),
         "teacher_features": np.zeros((4, 16), np.float32),
         "actions": np.zeros(4, np.int32)}
    pred = s(x)
    got = float(np.asarray(s.compute_loss(x, y, pred)))
    logits = np.asarray(pred["logits"])
    rows = []
    for i, g in enumerate(x["game_id"]):
        a, tau = (6, 0.5) if g == 0 else (3, 2.0)
        rows.append(float(np.asarray(losses.kl(y["teacher_outputs"][i:i + 1, :a],
                                               logits[i:i + 1, :a], temperature=tau))))
    assert got == pytest.approx(np.mean(rows), rel=1e-4)
    # The objective attached is the one used: another one, another loss.
    s.objective = objectives.Distillation(policy_loss="mse", temperatures=(0.5, 2.0))
    mse = float(np.asarray(s.compute_loss(x, y, pred)))
    expected = np.mean([np.sum((y["teacher_outputs"][i, :a] - logits[i, :a]) ** 2)
                        for i, a in enumerate([6, 3, 6, 3])])
    assert mse == pytest.approx(expected, rel=1e-4)
    s.objective = None
    with pytest.raises(ValueError, match="this student has no objective to train on"):
        s.compute_loss(x, y, pred)


def test_compressed_sizes_parameter_counts():
    # Conv trunk + hidden of Rusu's net sizes with one 6-action head of 128.
    counts = {}
    for name, (filters, fc) in networks.STUDENT_SIZES.items():
        s = networks.MultiTaskStudent(["pong"], [6], conv_filters=filters, fc_units=fc)
        s.build_for_inputs()
        counts[name] = s.count_params()
    assert counts["dqn"] > counts["net1"] > counts["net2"] > counts["net3"]
    # dqn trunk: convs 8*8*4*32+32 + 4*4*32*64+64 + 3*3*64*64+64, dense 3136*512+512.
    trunk = (8 * 8 * 4 * 32 + 32) + (4 * 4 * 32 * 64 + 64) + (3 * 3 * 64 * 64 + 64) + (
        3136 * 512 + 512)
    assert counts["dqn"] == trunk + (512 * 128 + 128) + (128 * 6 + 6)


def test_tiny_preset_is_the_hand_counted_1_7_percent_network():
    # 8/8/8 filters, 64 units, 6 actions, no head layer: the teacher's layout.
    convs = (8 * 8 * 4 * 8 + 8) + (4 * 4 * 8 * 8 + 8) + (3 * 3 * 8 * 8 + 8)
    hidden = 7 * 7 * 8 * 64 + 64  # 84 -> 20 -> 9 -> 7 pixels, 8 channels.
    assert networks.parameter_count("tiny", 6) == convs + hidden + (64 * 6 + 6) == 29_214
    teacher = networks.build_teacher_network(6).count_params()
    assert networks.parameter_count("dqn", 6) == teacher == 1_687_206
    assert round(100 * 29_214 / teacher, 2) == 1.73
    # A head layer of 128 units adds 64*128+128 and widens the outputs' input.
    assert networks.parameter_count("tiny", 6, head_units=128) == (
        convs + hidden + (64 * 128 + 128) + (128 * 6 + 6))
    with pytest.raises(ValueError, match="size must be one of .* found 'huge'"):
        networks.parameter_count("huge", 6)
    table = networks.sizes_markdown(6)
    assert "| `tiny` | 8/8/8 | 64 | 29,214 | 1.73 % | 37,918 |" in table
    assert "| `dqn` | 32/64/64 | 512 | 1,687,206 | 100.00 % |" in table


def test_without_head_layer_the_logits_come_from_the_shared_hidden_layer():
    s = networks.MultiTaskStudent(["pong", "freeway"], [6, 3], conv_filters=(4, 4, 4),
                                  fc_units=16, head_units=0).build_for_inputs()
    assert s.game_hidden == []
    x = _batch()
    hidden = s.shared_hidden(x["frames"])
    expected = np.asarray(s.game_heads[1](hidden))[1]
    np.testing.assert_allclose(np.asarray(s(x)["logits"])[1, :3], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="head_units must be >= 0, found -1"):
        networks.MultiTaskStudent(["pong"], [6], head_units=-1)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="temperatures must be > 0"):
        objectives.Distillation(temperatures=(0.0,))
    with pytest.raises(ValueError, match="policy_loss must be one of .* found 'hinge'"):
        objectives.Distillation(policy_loss="hinge")
    with pytest.raises(ValueError, match="num_actions has 1 entries for 2 games"):
        networks.MultiTaskStudent(["pong", "freeway"], [6])


def test_save_and_load_round_trip(tmp_path):
    import keras

    s = _student(feature_projections=True, preprocessing={"frame_skip": 4},
                 training_config={"note": "x"},
                 objective=objectives.Distillation(temperatures=(1.0, 1.0)))
    path = tmp_path / "student.keras"
    s.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert loaded.games == ["pong", "freeway"]
    assert loaded.num_actions == [6, 3]
    assert loaded.preprocessing == {"frame_skip": 4}
    assert loaded.training_config == {"note": "x"} and loaded.feature_dims == [16, 8]
    assert loaded.feature_projections_enabled
    assert loaded.objective is None  # The objective is not part of the file.
    x = _batch()
    np.testing.assert_allclose(np.asarray(s(x)["logits"]), np.asarray(loaded(x)["logits"]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(s(x)["features"]),
                               np.asarray(loaded(x)["features"]), rtol=1e-5, atol=1e-5)


def test_mixed_bfloat16_trunk_with_float32_heads_and_round_trip(tmp_path):
    import keras

    s = _student(precision="mixed_bfloat16", feature_projections=True)
    assert {layer.compute_dtype for layer in s.trunk} == {"bfloat16"}
    assert all(layer.compute_dtype == "float32" for layer in s.game_heads + s.game_hidden)
    x = _batch()
    out = s(x)
    assert np.asarray(out["logits"]).dtype == np.float32
    assert (np.asarray(out["logits"])[[1, 3], 3:] == networks.MASKED_LOGIT).all()
    # Same weights in float32: the outputs agree to bfloat16's precision.
    f32 = _student(feature_projections=True)
    f32.set_weights(s.get_weights())
    np.testing.assert_allclose(np.asarray(out["logits"])[[0, 2]],
                               np.asarray(f32(x)["logits"])[[0, 2]], atol=0.02)
    path = tmp_path / "student.keras"
    s.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert loaded.precision == "mixed_bfloat16"
    assert loaded.trunk[2].compute_dtype == "bfloat16"
    np.testing.assert_array_equal(np.asarray(out["logits"]), np.asarray(loaded(x)["logits"]))
    with pytest.raises(ValueError, match="precision must be one of .* found 'float16'"):
        networks.MultiTaskStudent(["pong"], [6], precision="float16")


def test_default_precision_follows_the_cpu_flags():
    import keras

    native = "mixed_bfloat16" if keras.backend.backend() == "tensorflow" else "float32"
    assert networks.default_precision("fpu sse avx2 avx512f avx512_bf16 fma") == native
    assert networks.default_precision("fpu amx_tile amx_bf16") == native
    assert networks.default_precision("fpu sse avx2 avx512f fma") == "float32"
    assert networks.default_precision("") == "float32"


# -- the masked 18-way head (Actor-Mimic) --------------------------------------

# Pong's and Freeway's minimal action sets in ALE's full action set
# (games.Game.ale_action_indices; tests/test_games_and_envs.py checks them).
PONG_FREEWAY_ALE = [[0, 1, 3, 4, 11, 12], [0, 2, 5]]


def _shared18(**kw):
    kw = {"head_units": 8, **kw}
    s = networks.MultiTaskStudent(
        games=["pong", "freeway"], num_actions=[6, 3], feature_dims=[16, 8],
        conv_filters=(4, 4, 4), fc_units=32, head="shared18",
        ale_action_indices=PONG_FREEWAY_ALE, **kw)
    return s.build_for_inputs()


def test_shared18_logits_are_the_18_way_outputs_at_each_games_actions():
    s = _shared18()
    assert s.game_heads == [] and s.game_hidden == []
    x = _batch()
    logits = np.asarray(s(x)["logits"])
    full = np.asarray(s.ale_logits(s.shared_hidden(x["frames"])))
    assert full.shape == (4, 18)
    for i, g in enumerate(x["game_id"]):
        index = PONG_FREEWAY_ALE[g]
        np.testing.assert_allclose(logits[i, :len(index)], full[i, index], rtol=1e-6)
        assert (logits[i, len(index):] == networks.MASKED_LOGIT).all()
        # The game's softmax is the 18-way softmax with its other actions masked.
        masked = np.full(18, -np.inf)
        masked[index] = full[i, index]
        p18 = np.exp(masked - full[i, index].max())
        p = np.exp(logits[i] - logits[i].max())
        np.testing.assert_allclose(p[:len(index)] / p.sum(), p18[index] / p18.sum(),
                                   rtol=1e-5)
    # Acting sees the same logits in the game's action order.
    np.testing.assert_allclose(np.asarray(s.policy_network("freeway")(x["frames"])),
                               full[:, PONG_FREEWAY_ALE[1]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s.policy_network("pong")(x["frames"])),
                               full[:, PONG_FREEWAY_ALE[0]], rtol=1e-5, atol=1e-6)
    # One shared head: a head layer of 8 and 18 outputs, whatever the games.
    per_game = _student()
    assert s.count_params() - per_game.count_params() == (
        (8 * 18 + 18) - (32 * 8 + 8) - (8 * 6 + 6) - (8 * 3 + 3))


def test_shared18_without_head_layer_reads_the_shared_hidden_layer():
    s = _shared18(head_units=0)
    assert s.shared_head_hidden is None
    x = _batch()
    hidden = s.shared_hidden(x["frames"])
    expected = np.asarray(s.shared_head(hidden))[:, PONG_FREEWAY_ALE[1]]
    np.testing.assert_allclose(np.asarray(s(x)["logits"])[[1, 3], :3], expected[[1, 3]],
                               rtol=1e-5)
    kernel, bias = s.shared_head.get_weights()
    assert kernel.shape == (32, 18) and bias.shape == (18,)


def test_shared18_trains_only_the_outputs_of_the_games_actions():
    """A KL step moves the 18-way kernel and bias columns of the actions some
    game has, and leaves those of the actions no game has (their gradient is
    zero: gathered out, then masked)."""
    import keras

    s = _shared18(feature_projections=True,
                  objective=objectives.Distillation(temperatures=(1.0, 1.0), feature_beta=0.1))
    s.compile(optimizer=keras.optimizers.Adam(1e-2))
    kernel0, bias0 = s.shared_head.get_weights()
    trunk0 = np.asarray(s.trunk[-1].kernel)
    rng = np.random.default_rng(2)
    y = {"teacher_outputs": rng.normal(size=(4, 6)).astype(np.float32),
         "teacher_features": rng.normal(size=(4, 16)).astype(np.float32)}
    s.train_on_batch(_batch(), y)
    kernel1, bias1 = s.shared_head.get_weights()
    used = sorted(set(PONG_FREEWAY_ALE[0]) | set(PONG_FREEWAY_ALE[1]))
    unused = [a for a in range(18) if a not in used]
    assert unused == [6, 7, 8, 9, 10, 13, 14, 15, 16, 17]
    np.testing.assert_array_equal(kernel1[:, unused], kernel0[:, unused])
    np.testing.assert_array_equal(bias1[unused], bias0[unused])
    assert (np.abs(kernel1[:, used] - kernel0[:, used]).max(axis=0) > 0).all()
    assert (bias1[used] != bias0[used]).all()
    assert not np.array_equal(np.asarray(s.trunk[-1].kernel), trunk0)


def test_shared18_save_and_load_round_trip_without_ale(tmp_path):
    import keras

    s = _shared18(feature_projections=True, precision="mixed_bfloat16")
    assert s.shared_head.compute_dtype == s.shared_head_hidden.compute_dtype == "float32"
    config = s.get_config()
    assert config["head"] == "shared18" and config["ale_action_indices"] == PONG_FREEWAY_ALE
    path = tmp_path / "student.keras"
    s.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert loaded.head == "shared18" and loaded.ale_action_indices == PONG_FREEWAY_ALE
    x = _batch()
    for key in ("logits", "features"):
        np.testing.assert_array_equal(np.asarray(s(x)[key]), np.asarray(loaded(x)[key]))


def test_per_game_configs_of_before_the_choice_load_unchanged():
    s = _student(feature_projections=True)
    config = s.get_config()
    assert config["head"] == "per_game" and config["ale_action_indices"] is None
    del config["head"], config["ale_action_indices"]  # A file saved before shared18.
    old = networks.MultiTaskStudent.from_config(config).build_for_inputs()
    assert old.head == "per_game" and old.shared_head is None
    assert [w.path for w in old.weights] == [w.path for w in s.weights]
    old.set_weights(s.get_weights())
    x = _batch()
    np.testing.assert_array_equal(np.asarray(old(x)["logits"]), np.asarray(s(x)["logits"]))


def test_shared18_settings_are_checked():
    def student(head="shared18", indices=PONG_FREEWAY_ALE):
        return networks.MultiTaskStudent(["pong", "freeway"], [6, 3], head=head,
                                         ale_action_indices=indices)

    with pytest.raises(ValueError, match=r"head must be one of \['per_game', 'shared18'\], "
                                         "found 'shared'"):
        student(head="shared")
    with pytest.raises(ValueError, match="ale_action_indices: head 'shared18' needs"):
        student(indices=None)
    with pytest.raises(ValueError, match="ale_action_indices: head 'shared18' needs"):
        student(indices=PONG_FREEWAY_ALE[:1])
    with pytest.raises(ValueError, match=r"ale_action_indices of freeway: expected 3 distinct "
                                         r"indices in \[0, 18\).*found \[0, 2\]"):
        student(indices=[PONG_FREEWAY_ALE[0], [0, 2]])
    with pytest.raises(ValueError, match="ale_action_indices of freeway.*found \\[0, 2, 18\\]"):
        student(indices=[PONG_FREEWAY_ALE[0], [0, 2, 18]])
    with pytest.raises(ValueError, match="ale_action_indices of pong.*found \\[0, 0, 3"):
        student(indices=[[0, 0, 3, 4, 11, 12], [0, 2, 5]])
    # A head per game has no use for them.
    assert student(head="per_game", indices=None).shared_head is None
