"""Command-line glue shared by the entry points (train.py, build_datasets,
evaluate, train_teacher): every flag definition, the one mapping from flags
to each config, and the error wrapper.

Library modules never read flags. Each flag is defined once, here, with its
default taken from the config class it maps to, and each config has one
function that builds it from the flags (`collect_config_from_flags`,
`distill_config_from_flags`, `eval_protocol_from_flags`, ...), turning a
config's complaint into a message that names the flag.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from absl import app, flags

from multidistill import environments

FLAGS = flags.FLAGS


class UsageError(ValueError):
    """A flag value is invalid."""


def define_verbose_flag():
    flags.DEFINE_bool(
        "verbose", False, "Print full tracebacks on errors (default: one-line messages)."
    )


def define_allow_unsafe_teacher_flag():
    flags.DEFINE_bool(
        "allow_unsafe_teacher", False,
        "Allow teacher files that need unsafe Keras deserialisation (they can run "
        "code): only for files you trust.")


def define_preprocessing_flags():
    d = environments.Preprocessing()
    flags.DEFINE_float(
        "sticky_action_prob", d.sticky_action_prob,
        "Probability in [0, 1] that the emulator repeats the previous action "
        "(0.25 in Machado et al. 2018). Must match the teachers' cards.")
    flags.DEFINE_integer(
        "noop_max", d.noop_max,
        "Maximum number of no-op agent steps at the start of each episode.")
    flags.DEFINE_integer(
        "max_episode_frames", d.max_episode_frames,
        "Episode cap in emulator frames (108000 = 30 minutes of play).")


def preprocessing_from_flags() -> environments.Preprocessing:
    try:
        return environments.Preprocessing(
            sticky_action_prob=FLAGS.sticky_action_prob,
            noop_max=FLAGS.noop_max,
            max_episode_frames=FLAGS.max_episode_frames,
        )
    except ValueError as e:
        raise UsageError(f"preprocessing flags: {e}") from None


def require(condition: bool, message: str) -> None:
    """Raises UsageError(message) unless condition holds."""
    if not condition:
        raise UsageError(message)


def run(main: Callable[[list[str]], None], positional: bool = False) -> None:
    """absl's app.run, with known errors printed as one message and exit code 2.

    Arguments that are not flags are refused unless `positional` (then main
    gets them in argv[1:])."""

    def wrapped(argv):
        if len(argv) > 1 and not positional:
            print(f"error: unexpected arguments {argv[1:]} (flags are --name=value)",
                  file=sys.stderr)
            sys.exit(2)
        try:
            main(argv)
        # Every error of ours is a ValueError subclass (DatasetError, TeacherError,
        # TrainingError, CheckpointError, UsageError); OSErrors are I/O failures.
        except (ValueError, OSError) as e:
            if getattr(FLAGS, "verbose", False):
                traceback.print_exc()
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped)


def _config_from_flags(build: Callable[[], object], flag_names: Sequence[str] | dict):
    """build(), its ValueError turned into a UsageError naming the flag.

    `flag_names`: the config fields whose flag has the same name, or a dict
    field -> flag name."""
    names = flag_names if isinstance(flag_names, dict) else {n: n for n in flag_names}
    try:
        return build()
    except ValueError as e:
        field, _, rest = str(e).partition(" ")
        if field in names:
            raise UsageError(f"--{names[field]} {rest}") from None
        raise UsageError(f"flags: {e}") from None


def parse_per_game(text: str, games: Sequence[str] | None, flag: str) -> dict[str, float]:
    """`pong:0.01,qbert:1` -> {"pong": 0.01, "qbert": 1.0}, games checked (and, unless
    `games` is None, required to be among them)."""
    from multidistill import games as games_lib

    out = {}
    for item in [t for t in text.split(",") if t.strip()]:
        name, sep, value = item.partition(":")
        require(bool(sep), f"{flag}: expected game:value pairs, e.g. pong:0.01, found {item!r}")
        try:
            game = games_lib.get_game(name).name
        except ValueError as e:
            raise UsageError(f"{flag}: {e}") from None
        require(games is None or game in games,
                f"{flag}: {game!r} is not in --games ({','.join(games or [])})")
        try:
            out[game] = float(value)
        except ValueError:
            raise UsageError(f"{flag}: {value!r} for {game} is not a number") from None
    return out


# -- collection (build_datasets, train.py) ------------------------------------


def define_collect_flags():
    """Games, teachers and datasets, and how each dataset is recorded."""
    from multidistill import collect, teachers

    d = collect.CollectConfig()
    flags.DEFINE_string("games", "pong,qbert,freeway",
                        "Comma-separated games (ALE ROM ids, e.g. pong,qbert,freeway).")
    flags.DEFINE_string("teachers_dir", str(teachers.DEFAULT_TEACHERS_DIR),
                        "Folder holding <game>.keras teachers and their <game>.json cards.")
    flags.DEFINE_string("datasets_dir", "datasets",
                        "Folder of the datasets: per game <game>.h5, or the folder <game>/ of "
                        "part files of a sharded dataset (build_datasets --num_shards).")
    flags.DEFINE_integer("num_agent_steps", d.num_agent_steps,
                         "Agent steps (1 step = 4 emulator frames) each dataset holds when "
                         "done; a larger number tops up an existing file (a new session).")
    flags.DEFINE_enum("behaviour", d.behaviour, list(collect.BEHAVIOURS),
                      "Who acts while recording (the teacher always labels): teacher, "
                      "student (--student's head), mixture (the teacher acts with "
                      "probability --beta at each step, else the student), random.")
    flags.DEFINE_float("beta", d.beta,
                       "With --behaviour=mixture: probability in [0, 1] that the teacher acts "
                       "at a step.")
    flags.DEFINE_string("student", None,
                        "With --behaviour=student or mixture: the student file that acts "
                        "(RUN/student.keras).")
    flags.DEFINE_float("epsilon", d.epsilon,
                       "Probability in [0, 1] of a uniformly random action while recording.")
    flags.DEFINE_integer("num_envs", d.num_envs,
                         "Environments stepped together while recording (one batched "
                         "teacher call per step).")
    flags.DEFINE_integer("num_threads", d.num_threads, "Emulator threads (0: one per CPU core).")
    flags.DEFINE_integer("seed", d.seed,
                         "Base seed (environments, exploration, sampling, initial weights).")
    flags.DEFINE_bool("rebuild_datasets", False,
                      "Delete existing dataset files and build them anew.")
    define_allow_unsafe_teacher_flag()
    define_preprocessing_flags()
    define_verbose_flag()


def collect_config_from_flags():
    from multidistill import collect

    return _config_from_flags(lambda: collect.CollectConfig(
        num_agent_steps=FLAGS.num_agent_steps, behaviour=FLAGS.behaviour, beta=FLAGS.beta,
        epsilon=FLAGS.epsilon, num_envs=FLAGS.num_envs, num_threads=FLAGS.num_threads,
        seed=FLAGS.seed), ("num_agent_steps", "behaviour", "beta", "epsilon", "num_envs"))


def behaviours_from_flags(teachers: dict, config) -> dict:
    """Per game, the behaviour policy of `config` (a `collect.CollectConfig`);
    the --student file is loaded once for all games."""
    from multidistill import collect, students
    from multidistill import teachers as teachers_lib

    if config.behaviour not in ("student", "mixture"):
        return {g: collect.make_behaviour(config, t) for g, t in teachers.items()}
    require(FLAGS.student is not None,
            f"--behaviour={config.behaviour} needs --student=RUN/student.keras (the student "
            "that acts)")
    student = students.load_student(FLAGS.student)
    missing = [g for g in teachers if g not in student.games]
    require(not missing, f"--student {FLAGS.student} has no head for {missing}: it was "
                         f"trained on {student.games}")
    sha = teachers_lib.sha256_of(FLAGS.student)
    return {g: collect.make_behaviour(config, t, students.head_predictor(student, g), sha)
            for g, t in teachers.items()}


# -- distillation (train.py) ----------------------------------------------------


# The update rules' names (`update_rules.RULE_NAMES`), here so that defining the
# flags imports no deep-learning framework.
_RULE_NAMES = ("teacher_distill", "on_policy_distill", "on_policy_distill_reward",
               "entropy_regularised", "n_distill", "expected_entropy_regularised",
               "teacher_value_reward", "value_gated_distill")


def define_distill_flags():
    """The student, its objective and its training."""
    from multidistill import (
        codistill,
        distiller,
        distribution,
        iekd,
        losses,
        networks,
        objectives,
        pipeline,
    )

    d, o, p = distiller.DistillConfig(games=()), objectives.Distillation(), \
        pipeline.PipelineConfig()
    ie = iekd.IEKD()
    co = codistill.Codistillation()
    flags.DEFINE_string("run_dir", None,
                        "Run directory (default runs/<games>_<loss>_<student_size>_<preset>"
                        "_seed<seed>, with _iekd after <loss> for --iekd, _shared18 after "
                        "<student_size> for --student_head=shared18 and _codistill<N> at the "
                        "end for --codistill=N); an existing one is resumed.")
    flags.DEFINE_enum("loss", o.policy_loss, sorted(losses.POLICY_LOSSES),
                      "Policy loss: kl (temperature-sharpened KL, Rusu et al.), nll (teacher's "
                      "argmax action) or mse (regress teacher outputs).")
    flags.DEFINE_string("temperatures", "",
                        "Per-game KL temperature tau (dividing the teacher only), e.g. "
                        "pong:0.01,qbert:1; unlisted games get 0.01 for Q-value teachers and "
                        "1 for logit teachers.")
    flags.DEFINE_float("feature_beta", o.feature_beta,
                       "Weight of Actor-Mimic feature regression (0.01 in the paper; 0 = off).")
    flags.DEFINE_bool("iekd", False,
                      "IE-KD (Huang et al. 2021, multidistill/iekd.py): besides --loss's policy "
                      "term, the first half of the student's shared hidden layer (inheritance) "
                      "is pulled toward a compact code of each teacher's features (its "
                      "factors: an auto-encoder fitted on the datasets' teacher features at "
                      "the start of the run, saved in the run directory) and the second half "
                      "(exploration) is pushed away from it. Off: the plain student.")
    flags.DEFINE_float("iekd_inheritance_weight", ie.inheritance_weight,
                       "With --iekd: weight lambda_inh (>= 0) of the inheritance loss, the "
                       "per-factor mean L1 distance between the L2-normalised factors of the "
                       "inheritance half and of the teacher (a number in [0, 2/sqrt(k)] for "
                       "k factors; 1 is the authors' weight).")
    flags.DEFINE_float("iekd_exploration_weight", ie.exploration_weight,
                       "With --iekd: weight lambda_exp (>= 0) of the exploration loss, the same "
                       "distance for the exploration half, negated (in [-2/sqrt(k), 0]; 1 is "
                       "the authors' weight).")
    flags.DEFINE_integer("iekd_autoencoder_steps", ie.autoencoder_grad_steps,
                         "With --iekd: Adam steps (of 256 feature vectors each) that fit each "
                         "teacher's auto-encoder before distillation (smoke preset: 100).")
    flags.DEFINE_integer("codistill", 0,
                         "Codistillation (Anil et al. 2018, multidistill/codistill.py): train "
                         "this many students at once (0 or 1: off, one student), student i on "
                         "share i of the training episodes (disjoint contiguous shares, the "
                         "held-out episodes shared), each also pulled toward the others' stale "
                         "policies; they live in <run_dir>/student_<i>, and the main job "
                         "evaluates student 0.")
    flags.DEFINE_float("codistill_weight", co.weight,
                       "With --codistill: weight w (>= 0) of the peer term KL(p_peers || "
                       "p_student) at temperature 1, added to --loss's term (1: Algorithm 1 "
                       "of the paper adds it unweighted).")
    flags.DEFINE_integer("codistill_refresh_steps", co.refresh_steps,
                         "With --codistill: gradient steps K between refreshes of the stale "
                         "copies of the peers (a copy lags by 0 to K-1 steps).")
    flags.DEFINE_integer("codistill_burn_in_steps", co.burn_in_steps,
                         "With --codistill: gradient steps trained on the teacher labels alone "
                         "before the peer term switches on (default: a tenth of the default "
                         "--num_grad_steps).")
    flags.DEFINE_enum("update_rule", "none", ["none", *_RULE_NAMES],
                      "Train by one of the update rules of Czarnecki et al. (2019, "
                      "multidistill/update_rules.py) instead of --loss, returns truncated to "
                      "one step: teacher_distill, on_policy_distill, on_policy_distill_reward, "
                      "entropy_regularised, n_distill, expected_entropy_regularised, "
                      "teacher_value_reward, value_gated_distill. All but teacher_distill "
                      "assume the student acts (--control=student).")
    flags.DEFINE_float("rule_gamma", 0.99,
                       "With --update_rule: discount in [0, 1] of the one-step returns.")
    flags.DEFINE_enum("rule_divergence", "kl", ["kl", "cross_entropy"],
                      "With --update_rule: measure the rules' divergences as KL (default: "
                      "its optimum is the teacher) or as the cross-entropies of the paper as "
                      "read (which also reward short episodes; see benchmarks/dpd_tabular.md).")
    flags.DEFINE_enum("student_size", d.student_size, list(networks.STUDENT_SIZES),
                      "Student trunk: dqn (32/64/64 conv, 512 hidden), Rusu's compressed "
                      "net1/net2/net3 (about 25 %, 7 % and 4 % of the DQN's parameters) or "
                      "tiny (8/8/8 conv, 64 hidden: 1.7 %, Sun & Fazli's smallest).")
    flags.DEFINE_enum("student_head", d.student_head, list(networks.STUDENT_HEADS),
                      "Student outputs: per_game (the default) gives each game its own head "
                      "over its minimal action set; shared18 gives all games one shared head "
                      "with 18 outputs over ALE's full action set, each game's invalid "
                      "actions masked (Actor-Mimic, Parisotto et al.). A run resumes only "
                      "with the head it started with.")
    flags.DEFINE_enum("precision", "auto", ["auto", *networks.PRECISIONS],
                      "Student arithmetic: float32, or mixed_bfloat16 (trunk computed in "
                      "bfloat16 on float32 weights; about 1.4x faster training on CPUs with "
                      "AVX512-BF16 or AMX); auto picks mixed_bfloat16 on such CPUs with "
                      "TensorFlow, float32 elsewhere.")
    flags.DEFINE_integer("num_grad_steps", d.num_grad_steps, "Gradient steps of the whole run.")
    flags.DEFINE_integer("batch_size_per_game", p.batch_size_per_game,
                         "Samples per game in each minibatch (batch = this x number of games).")
    flags.DEFINE_string("game_weights", "",
                        "Share of each game in a batch, e.g. pong:1,qbert:2 (default: equal).")
    flags.DEFINE_float("learning_rate", d.learning_rate, "Adam step size.")
    flags.DEFINE_integer("checkpoint_every_steps", d.checkpoint_every_steps,
                         "Gradient steps between checkpoints.")
    flags.DEFINE_integer("eval_every_steps", d.eval_every_steps,
                         "Gradient steps between held-out metrics (TensorBoard).")
    flags.DEFINE_enum("distribution", d.distribution, list(distribution.DISTRIBUTIONS),
                      "Devices that train the student. " + "; ".join(
                          f"{name}: {meaning}" for name, meaning in
                          distribution.DISTRIBUTIONS.items()) + ". The batch "
                      "(--batch_size_per_game x games) is the global batch, split evenly over "
                      "the devices (it must divide); the learning rate is not scaled, so the "
                      "same flags give the same updates on any device count. A run may "
                      "resume under another setting.")


def distill_config_from_flags(games: Sequence[str], teacher_kinds: Sequence[str]):
    """The DistillConfig of the flags; temperatures default by teacher kind."""
    from multidistill import distiller, networks, objectives, pipeline

    temps = parse_per_game(FLAGS.temperatures, games, "--temperatures")
    for g, t in temps.items():
        require(t > 0, f"--temperatures: tau must be > 0, found {t} for {g}")
    weights = parse_per_game(FLAGS.game_weights, games, "--game_weights")
    precision = networks.default_precision() if FLAGS.precision == "auto" else FLAGS.precision
    temperatures = tuple(temps.get(g, objectives.default_temperature(k))
                         for g, k in zip(games, teacher_kinds))
    logit_teachers = [g for g, k in zip(games, teacher_kinds) if k != "q_values"]
    require(FLAGS.update_rule != "value_gated_distill" or not logit_teachers,
            "--update_rule=value_gated_distill estimates the student's value from its "
            "teacher's Q-values: every teacher must be of kind q_values, the teachers of "
            f"{logit_teachers} give logits")
    require(FLAGS.update_rule == "none" or FLAGS.feature_beta == 0,
            f"--feature_beta applies to --loss, not to --update_rule={FLAGS.update_rule}: "
            f"leave it at 0 (found {FLAGS.feature_beta})")
    require(not FLAGS.iekd or FLAGS.update_rule == "none",
            f"--iekd adds its terms to --loss's policy term, not to --update_rule="
            f"{FLAGS.update_rule}: use one of them")
    require(not FLAGS.iekd or FLAGS.feature_beta == 0,
            f"--iekd and --feature_beta both train the student on the teacher's features "
            f"(IE-KD through its factors): use one of them (found --feature_beta="
            f"{FLAGS.feature_beta})")
    for name in ("iekd_inheritance_weight", "iekd_exploration_weight",
                 "iekd_autoencoder_steps"):
        require(FLAGS.iekd or not FLAGS[name].present,
                f"--{name} applies with --iekd only (found --{name}={FLAGS[name].value} "
                "without --iekd)")

    if FLAGS.codistill < 0:
        raise UsageError(f"--codistill must be >= 0 (0 or 1: off), found {FLAGS.codistill}")
    codistilling = FLAGS.codistill >= 2
    for name in ("codistill_weight", "codistill_refresh_steps", "codistill_burn_in_steps"):
        require(codistilling or not FLAGS[name].present,
                f"--{name} applies with --codistill=2 or more only (found --{name}="
                f"{FLAGS[name].value} with --codistill={FLAGS.codistill})")
    require(not codistilling or (FLAGS.update_rule == "none" and not FLAGS.iekd),
            f"--codistill adds its peer term to --loss's distillation objective, not to "
            f"--update_rule={FLAGS.update_rule} or --iekd: use one of them")
    require(not codistilling or FLAGS.distribution != "multi_worker",
            "--codistill trains its students in one process: use --distribution=none or "
            "data_parallel, not multi_worker")

    def objective():
        if codistilling:
            from multidistill import codistill

            return codistill.Codistillation(
                base=objectives.Distillation(policy_loss=FLAGS.loss,
                                             feature_beta=FLAGS.feature_beta,
                                             temperatures=temperatures),
                weight=FLAGS.codistill_weight, num_students=FLAGS.codistill,
                refresh_steps=FLAGS.codistill_refresh_steps,
                burn_in_steps=FLAGS.codistill_burn_in_steps)
        if FLAGS.iekd:
            from multidistill import iekd

            return iekd.IEKD(policy_loss=FLAGS.loss, temperatures=temperatures,
                             inheritance_weight=FLAGS.iekd_inheritance_weight,
                             exploration_weight=FLAGS.iekd_exploration_weight,
                             autoencoder_grad_steps=FLAGS.iekd_autoencoder_steps)
        if FLAGS.update_rule == "none":
            return objectives.Distillation(policy_loss=FLAGS.loss,
                                           feature_beta=FLAGS.feature_beta,
                                           temperatures=temperatures)
        from multidistill import update_rules

        return update_rules.UpdateRule(rule=FLAGS.update_rule, temperatures=temperatures,
                                       gamma=FLAGS.rule_gamma,
                                       teacher_kinds=tuple(teacher_kinds),
                                       divergence=FLAGS.rule_divergence)

    return _config_from_flags(lambda: distiller.DistillConfig(
        games=tuple(games),
        objective=objective(),
        student_size=FLAGS.student_size, student_head=FLAGS.student_head,
        learning_rate=FLAGS.learning_rate, num_grad_steps=FLAGS.num_grad_steps,
        checkpoint_every_steps=FLAGS.checkpoint_every_steps,
        eval_every_steps=FLAGS.eval_every_steps, precision=precision,
        distribution=FLAGS.distribution,
        pipeline=pipeline.PipelineConfig(
            batch_size_per_game=FLAGS.batch_size_per_game, seed=FLAGS.seed,
            game_weights=(tuple(weights.get(g, 1.0) for g in games) if weights else None))),
        {**{n: n for n in ("batch_size_per_game", "num_grad_steps", "learning_rate",
                           "feature_beta", "checkpoint_every_steps", "eval_every_steps",
                           "game_weights")},
         "rule": "update_rule", "teacher_kinds": "update_rule", "gamma": "rule_gamma",
         "inheritance_weight": "iekd_inheritance_weight",
         "exploration_weight": "iekd_exploration_weight",
         "autoencoder_grad_steps": "iekd_autoencoder_steps",
         "weight": "codistill_weight", "refresh_steps": "codistill_refresh_steps",
         "burn_in_steps": "codistill_burn_in_steps"})


# -- collection rounds (train.py) -------------------------------------------------


def define_rounds_flags():
    """Student-driven distillation: who acts in the collection rounds, how much."""
    from multidistill import rounds

    d = rounds.RoundsConfig()
    flags.DEFINE_enum("control", d.control, list(rounds.CONTROLS),
                      "Who acts in the collection rounds after round 0 (the teacher always "
                      "labels): teacher (more teacher-driven data), student (Actor-Mimic: the "
                      "student, epsilon-greedy with --student_epsilon), mixture (DAgger: the "
                      "teacher acts with probability --beta x --beta_decay^(round-1), else the "
                      "student) or uniform (random actions).")
    flags.DEFINE_integer("rounds", None,
                         "Collection rounds after round 0, the offline teacher-driven "
                         "training (default: 0 with --control=teacher, 4 otherwise; 2 in the "
                         "smoke preset).")
    flags.DEFINE_integer("agent_steps_per_round", d.agent_steps_per_round,
                         "Agent steps (4 emulator frames each) collected per game in each "
                         "round, appended to the game's data.")
    flags.DEFINE_integer("grad_steps_per_round", d.grad_steps_per_round,
                         "Gradient steps trained after each round's collection (round 0 "
                         "trains --num_grad_steps).")
    flags.DEFINE_float("student_epsilon", d.epsilon,
                       "Probability in [0, 1] of a random action when the student (or the "
                       "mixture) acts in a round (Actor-Mimic: 0.1).")
    flags.DEFINE_float("beta_decay", d.beta_decay,
                       "With --control=mixture: factor in [0, 1] applied to beta each round "
                       "(round r's beta is --beta x beta_decay^(r-1)).")
    flags.DEFINE_integer("max_agent_steps_per_game", d.max_agent_steps_per_game,
                         "Cap on the agent steps a game's training data holds, teacher-driven "
                         "data included; past it the oldest rounds leave (their files are "
                         "deleted). 0: no cap.")
    flags.DEFINE_bool("keep_teacher_data", d.keep_teacher_data,
                      "Keep the teacher-driven data in the sampler whatever the cap (else it "
                      "is the oldest data and leaves first).")


def rounds_config_from_flags(rounds: int):
    """The RoundsConfig of the flags, with the round count resolved by the caller."""
    from multidistill import rounds as rounds_lib

    return _config_from_flags(lambda: rounds_lib.RoundsConfig(
        control=FLAGS.control, rounds=rounds, agent_steps_per_round=FLAGS.agent_steps_per_round,
        grad_steps_per_round=FLAGS.grad_steps_per_round, epsilon=FLAGS.student_epsilon,
        beta=FLAGS.beta, beta_decay=FLAGS.beta_decay,
        max_agent_steps_per_game=FLAGS.max_agent_steps_per_game,
        keep_teacher_data=FLAGS.keep_teacher_data),
        {"control": "control", "rounds": "rounds",
         "agent_steps_per_round": "agent_steps_per_round",
         "grad_steps_per_round": "grad_steps_per_round", "epsilon": "student_epsilon",
         "beta": "beta", "beta_decay": "beta_decay",
         "max_agent_steps_per_game": "max_agent_steps_per_game"})


# -- evaluation (train.py, evaluate) ---------------------------------------------


def define_eval_flags():
    """The evaluation protocol."""
    from multidistill import evaluation

    d = evaluation.EvalProtocol()
    per_game = ", ".join(f"{g} {n}" for g, n in evaluation.EPISODES_BY_GAME.items())
    flags.DEFINE_string("eval_episodes", "auto",
                        "Evaluation episodes per game and policy: auto (each game's default, "
                        f"set by the spread of its returns: {per_game}, other games "
                        f"{evaluation.DEFAULT_EPISODES}), a number for every game, or "
                        "game:number pairs, e.g. qbert:200,pong:48 (the others auto).")
    flags.DEFINE_bool("videos", True,
                      "Record per game a side-by-side GIF of the student and its teacher "
                      "playing the same seed (videos/<game>.gif in the run directory).")
    flags.DEFINE_float("video_seconds", 30.0,
                       "Length cap of each video, seconds of game time (15 agent steps "
                       "per second).")
    flags.DEFINE_float("eval_epsilon", d.epsilon,
                       "Probability in [0, 1] of a random action during evaluation.")
    flags.DEFINE_integer("eval_num_envs", d.num_envs,
                         "Environments stepped together in evaluation.")
    flags.DEFINE_integer("eval_seed", d.seed,
                         "Evaluation environment i is seeded with eval_seed + i.")
    flags.DEFINE_bool("evaluate_teachers", True,
                      "Play the teachers under the student's protocol (else use their cards' "
                      "scores).")
    flags.DEFINE_string("teacher_cache", "",
                        "JSON file of teachers' evaluation episodes kept across runs: a "
                        "teacher whose file, game, protocol and preprocessing are in it is not "
                        "played again (the same seeds play the same episodes, so the ratio "
                        "stays paired); the others are played and added. For several runs "
                        "against the same teachers (benchmarks). Empty: play the teachers "
                        "every time (a sweep: its own file in its output directory).")
    flags.DEFINE_integer("eval_workers", 1,
                         "Workers each evaluation's environments are split over (at most "
                         "--eval_num_envs); the episodes, and so the report, are the same as "
                         "with 1.")
    flags.DEFINE_enum("eval_executor", "local", ["local", "ray"],
                      "Where the evaluation's shares run with --eval_workers > 1: local (one "
                      "after another in this process) or ray (Ray tasks; needs the extra "
                      "ray, and workers that see the run's and the teachers' files).")
    flags.DEFINE_string("eval_ray_address", "",
                        "With --eval_executor=ray, the Ray cluster to run on (ray.init's "
                        "address, e.g. auto); empty: a local one on this machine's cores.")


def eval_workers_from_flags():
    """The `parallel_eval.EvalWorkers` of the evaluation flags."""
    from multidistill import executors, parallel_eval

    def build():
        workers = parallel_eval.EvalWorkers(
            num_workers=FLAGS.eval_workers, executor=FLAGS.eval_executor,
            ray_address=FLAGS.eval_ray_address)
        if workers.executor == "ray":
            executors.require_ray()  # Before any work: says how to install it.
        return workers

    return _config_from_flags(build, {"num_workers": "eval_workers",
                                      "executor": "eval_executor"})


def teacher_cache_from_flags() -> Path | None:
    """--teacher_cache as a path, None when empty; refused when it names a
    file that is not such a cache (it would be overwritten) or is given
    without --evaluate_teachers (nothing would read it)."""
    from multidistill import evaluation

    text = FLAGS.teacher_cache.strip()
    if not text:
        return None
    require(FLAGS.evaluate_teachers,
            f"--teacher_cache={text} keeps teachers' evaluation episodes, but "
            "--noevaluate_teachers takes the teachers' scores from their cards: drop one")
    path = Path(text).expanduser()
    try:
        evaluation.TeacherScoreCache(path).check()
    except ValueError as e:
        raise UsageError(f"--teacher_cache: {e}; give a new file or one a run wrote") from None
    return path


def eval_protocol_from_flags():
    from multidistill import evaluation

    text = str(FLAGS.eval_episodes).strip().lower()
    num_episodes, per_game = 0, {}
    if text.isdigit():
        num_episodes = int(text)
        require(num_episodes >= 1, f"--eval_episodes must be >= 1, found {num_episodes}")
    elif text != "auto":
        per_game = parse_per_game(text, None, "--eval_episodes")
        bad = {g: n for g, n in per_game.items() if n != int(n) or n < 1}
        require(not bad, f"--eval_episodes: episodes must be whole numbers >= 1, found {bad}")
    return _config_from_flags(lambda: evaluation.EvalProtocol(
        num_episodes=num_episodes,
        episodes_per_game=tuple((g, int(n)) for g, n in per_game.items()),
        epsilon=FLAGS.eval_epsilon,
        num_envs=FLAGS.eval_num_envs, seed=FLAGS.eval_seed,
        num_threads=getattr(FLAGS, "num_threads", 0)),
        {"num_episodes": "eval_episodes", "epsilon": "eval_epsilon",
         "num_envs": "eval_num_envs"})


# -- teacher training (multidistill.train_teacher) ---------------------------
# Flag definitions and the flags-to-config mappings of the teacher trainers.
# Defaults come from the configs (agents.runner.RunConfig, agents.dqn.DQNConfig,
# agents.ppo.PPOConfig); multidistill.agents is imported here only when these
# functions run, so the other entry points do not load it.

_RUN_FLAGS = ("num_env_frames", "eval_every_frames", "eval_episodes", "final_eval_episodes",
              "checkpoint_every_s", "seed", "num_threads")
_DQN_FLAGS = ("num_envs", "ez_mu", "epsilon_end", "teacher_start_epsilon", "learning_rate")
_PPO_FLAGS = ("num_envs", "num_minibatches", "behaviour_epsilon", "lr_horizon_frames",
              "orthogonal_init", "learning_rate")


def define_teacher_training_flags():
    """The flags of `python -m multidistill.train_teacher` (the shipped
    teachers' cards record such commands: keep every flag working)."""
    from multidistill import networks, teachers
    from multidistill.agents import dqn, ppo, rnd, runner

    run = runner.RunConfig
    flags.DEFINE_string("game", None, "Game to train on (ALE ROM id, e.g. pong).")
    flags.DEFINE_enum("algo", "ppo", list(runner.ALGORITHMS),
                      "ppo: policy-gradient, gives a `logits` teacher with its critic "
                      "(cheaper on CPU); dqn: Double DQN, gives a `q_values` teacher.")
    flags.DEFINE_enum("mode", "train", ["train", "evaluate", "table"],
                      "train; evaluate the teacher in --teachers_dir and update its card; or "
                      "table: rewrite the teachers table of --teachers_dir/README.md from the "
                      "cards.")
    flags.DEFINE_integer("num_env_frames", run.num_env_frames,
                         "Training length, emulator frames (1 agent step = 4 frames); the "
                         "run stops at the first iteration past it.")
    flags.DEFINE_string("teachers_dir", str(teachers.default_output_dir()),
                        "Folder the teacher (<game>.keras + <game>.json card) is written to "
                        "(default: the checkout's teachers/, or ./teachers when installed).")
    flags.DEFINE_string("checkpoint_dir", None,
                        "Training state folder (default: "
                        "~/.cache/multidistill/teacher_runs/<game>_<algo>).")
    flags.DEFINE_integer("eval_every_frames", run.eval_every_frames,
                         "Emulator frames between evaluations (each exports the teacher if "
                         "it beats the best so far).")
    flags.DEFINE_integer("eval_episodes", run.eval_episodes,
                         "Episodes per periodic evaluation.")
    flags.DEFINE_integer("final_eval_episodes", run.final_eval_episodes,
                         "Episodes of the final evaluation written into the card (0: none).")
    flags.DEFINE_integer("checkpoint_every_s", run.checkpoint_every_s,
                         "Wall-clock seconds between checkpoints.")
    flags.DEFINE_integer("num_envs", ppo.PPOConfig.num_envs,
                         "Environments stepped together (a count; the same default for "
                         "both algorithms).")
    flags.DEFINE_integer("num_threads", run.num_threads,
                         "Emulator threads (a count) of the training environments and the "
                         "periodic evaluations; 0: one "
                         "per CPU core. Set it when several trainers share a machine.")
    flags.DEFINE_integer("seed", run.seed,
                         "Random seed (an integer) of the agent and of the environments' "
                         "episode starts; evaluations use 1,000,000 + seed.")
    flags.DEFINE_float("behaviour_epsilon", ppo.PPOConfig.behaviour_epsilon,
                       "PPO only: probability of a uniformly random action mixed into the "
                       "policy that acts and is optimised (a probability in [0, 1); default "
                       "the evaluation protocol's epsilon, so the policy trained is the one "
                       "scored).")
    flags.DEFINE_float("ez_mu", dqn.DQNConfig.ez_mu,
                       "DQN only: epsilon-z-greedy exploration (Dabney et al. 2021): an "
                       "exploratory action is held for n ~ zeta(ez_mu) agent steps (at most "
                       f"{dqn.DQNConfig.ez_max_repeat}); 2 is the paper's value, 0 gives "
                       "plain epsilon-greedy (1 agent step). Use it where a reward needs one "
                       "action held for long (Freeway).")
    flags.DEFINE_float("epsilon_end", dqn.DQNConfig.epsilon_end,
                       "DQN only: final exploration rate, the probability of a random action "
                       "once the decay is over (in [0, 1]; default the evaluation protocol's "
                       "epsilon, so the uncorrected n-step returns value the policy that is "
                       "scored; Dopamine uses 0.01, Nature DQN 0.1).")
    flags.DEFINE_float("learning_rate", None,
                       "Adam step size (a number > 0, no unit; default the algorithm's: "
                       f"DQN {dqn.DQNConfig.learning_rate:g}, constant; PPO "
                       f"{ppo.PPOConfig.learning_rate:g}, annealed over --lr_horizon_frames). "
                       "A run may resume with another value: it trains at the new one from "
                       "there on.")
    flags.DEFINE_integer("lr_horizon_frames", ppo.PPOConfig.lr_horizon_frames,
                         "PPO only: emulator frames over which the learning rate anneals "
                         "linearly to 0, whatever --num_env_frames is (so a run can be "
                         "extended without a collapsed rate); 0: over --num_env_frames.")
    flags.DEFINE_integer("num_minibatches", ppo.PPOConfig.num_minibatches,
                         "PPO only: minibatches (a count) per pass over each rollout of "
                         f"--num_envs x {ppo.PPOConfig.rollout_length} agent steps, so a "
                         f"minibatch holds num_envs x {ppo.PPOConfig.rollout_length} / "
                         "num_minibatches states (CleanRL: 8 environments and 4, "
                         "256 states; with --num_envs=16 use 8 for the same size and the "
                         "same number of updates per frame). A run may resume with "
                         "another value.")
    flags.DEFINE_bool("orthogonal_init", ppo.PPOConfig.orthogonal_init,
                      "PPO only: CleanRL's initialisation (orthogonal kernels: gain sqrt(2) "
                      "in the trunk, 0.01 policy head, 1 value head); off: Keras' default.")
    rnd_defaults = rnd.RNDConfig()
    flags.DEFINE_bool("rnd", False,
                      "PPO only: Random Network Distillation's exploration bonus (Burda et "
                      "al. 2018): a second value head for the intrinsic return "
                      "(non-episodic, discount 0.99), the extrinsic one discounted by 0.999, "
                      "advantages 2 x extrinsic + --rnd_intrinsic_coef x intrinsic; first "
                      f"{rnd_defaults.obs_norm_init_agent_steps:,} agent steps of random play "
                      "(counted in --num_env_frames) set the bonus's pixel statistics. The "
                      "teacher exported is the same logits teacher with its extrinsic critic; "
                      "its card records the settings. Default checkpoint folder "
                      "<game>_ppo_rnd.")
    flags.DEFINE_float("rnd_intrinsic_coef", rnd_defaults.intrinsic_coef,
                       "With --rnd: weight (a number >= 0, no unit) of the intrinsic "
                       f"advantage; the extrinsic one weighs {rnd_defaults.extrinsic_coef:g} "
                       "(the paper's 2:1). 0: the bonus is still computed and learnt but does not "
                       "steer the policy.")
    flags.DEFINE_float("rnd_predictor_proportion", rnd_defaults.predictor_proportion,
                       "With --rnd: fraction in (0, 1] of each minibatch's states, drawn at "
                       "random, that the bonus's predictor trains on (the paper: 0.25 with 128 "
                       "environments, i.e. 32 environments' worth; 1 suits --num_envs=8).")
    flags.DEFINE_integer("room_probe_episodes", 4,
                         "On games whose room number ALE's RAM holds (montezuma_revenge, "
                         "venture, pitfall): episodes (a count) the teacher plays at each "
                         "evaluation in emulators whose RAM is read, to count the rooms it "
                         "visits (TensorBoard rooms/*, <checkpoint_dir>/rooms.json); 0: none. "
                         "Ignored on other games.")
    flags.DEFINE_enum("teacher_start_epsilon", dqn.DQNConfig.teacher_start_epsilon,
                      ["final", "schedule"],
                      "DQN only, with --init_from_teacher: final explores at --epsilon_end "
                      "from the first step; schedule goes on where the card's counters put "
                      "the epsilon schedule (epsilon 1 without them).")
    flags.DEFINE_bool("init_from_teacher", False,
                      "Without a checkpoint, start from the teacher in --teachers_dir: its "
                      "weights (critic included) and the counters its card recorded (so "
                      "DQN's epsilon and PPO's learning rate go on where it was exported).")
    flags.DEFINE_string("init_trunk_from", None,
                        "Transfer: without a checkpoint, start the teacher's convolutions "
                        "and hidden layer from a student file's shared trunk (e.g. "
                        "runs/<run>/student.keras; its size must be the teacher's); the "
                        "outputs, the critic and every counter start afresh.")
    realtime = _realtime_defaults()
    flags.DEFINE_list("distill_into", [],
                      "Real-time policy distillation (Sun & Fazli 2019): student sizes "
                      f"({', '.join(networks.STUDENT_SIZES)}) that distil from the teacher "
                      "while it trains, on its replay (DQN) or rollouts (PPO) labelled by "
                      "the current teacher; evaluated with it, checkpointed with it, in "
                      "<checkpoint_dir>/realtime. Empty: none.")
    flags.DEFINE_float("distill_steps_per_update", realtime.steps_per_update,
                       "With --distill_into: student gradient steps per teacher gradient "
                       "step (a ratio > 0).")
    flags.DEFINE_integer("distill_batch_size", realtime.batch_size,
                         "With --distill_into: states per student gradient step.")
    flags.DEFINE_float("distill_learning_rate", realtime.learning_rate,
                       "With --distill_into: the students' Adam step size (offline "
                       "distillation's).")
    flags.DEFINE_integer("distill_start_frames", realtime.start_frames,
                         "With --distill_into: emulator frames the teacher plays before the "
                         "students take their first step (0: from its first update).")
    flags.DEFINE_integer("distill_recent_steps", realtime.recent_steps,
                         "With --distill_into: agent steps (the latest) of a DQN's replay "
                         "memory the students' states come from (0: the whole memory).")
    flags.DEFINE_float("distill_label_horizon", realtime.label_horizon,
                       "With --distill_into: label with a moving average of the teacher's "
                       "weights over about this many of its gradient steps (0: the live "
                       "teacher, whose greedy action churns from update to update).")
    define_preprocessing_flags()
    define_verbose_flag()


def _realtime_defaults():
    from multidistill import realtime

    return realtime.RealtimeConfig(sizes=("tiny",))


def realtime_config_from_flags(seed: int = 0):
    """The `realtime.RealtimeConfig` of the --distill_* flags, or None without
    --distill_into.

    Raises:
      UsageError: an unknown or repeated size, a value out of range.
    """
    from multidistill import realtime

    if not FLAGS.distill_into:
        return None
    return _config_from_flags(lambda: realtime.RealtimeConfig(
        sizes=tuple(s.strip() for s in FLAGS.distill_into),
        steps_per_update=FLAGS.distill_steps_per_update,
        batch_size=FLAGS.distill_batch_size,
        learning_rate=FLAGS.distill_learning_rate,
        start_frames=FLAGS.distill_start_frames, recent_steps=FLAGS.distill_recent_steps,
        label_horizon=FLAGS.distill_label_horizon, seed=seed),
        {"sizes": "distill_into", "steps_per_update": "distill_steps_per_update",
         "batch_size": "distill_batch_size", "learning_rate": "distill_learning_rate",
         "start_frames": "distill_start_frames", "recent_steps": "distill_recent_steps",
         "label_horizon": "distill_label_horizon"})


def _teacher_config_from_flags(config_class, names):
    """config_class(**{name: FLAGS.name}), those left at None at the class's
    default; its ValueError as a UsageError naming flags."""
    try:
        return config_class(**{name: getattr(FLAGS, name) for name in names
                               if getattr(FLAGS, name) is not None})
    except ValueError as e:
        message = str(e)
        for name in names:
            message = message.replace(f"{config_class.__name__}.{name} ", f"--{name} ")
        raise UsageError(f"flags: {message}") from None


def teacher_run_config_from_flags():
    """The `agents.runner.RunConfig` of the flags.

    Raises:
      UsageError: a value out of range, e.g. "--num_env_frames must be >= 1, found 0".
    """
    from multidistill.agents import runner

    return _teacher_config_from_flags(runner.RunConfig, _RUN_FLAGS)


def dqn_config_from_flags():
    """The `agents.dqn.DQNConfig` of the flags (the others at their defaults).

    Raises:
      UsageError: a value out of range, e.g. "--epsilon_end must be in [0, 1], found 1.5".
    """
    from multidistill.agents import dqn

    return _teacher_config_from_flags(dqn.DQNConfig, _DQN_FLAGS)


def ppo_config_from_flags():
    """The `agents.ppo.PPOConfig` of the flags (the others at their defaults),
    with `agents.rnd.RNDConfig` under --rnd.

    Raises:
      UsageError: a value out of range, e.g. "--behaviour_epsilon must be in [0, 1),
        found 1.5"; an --rnd_* flag without --rnd.
    """
    import dataclasses

    from multidistill.agents import ppo, rnd

    for name in ("rnd_intrinsic_coef", "rnd_predictor_proportion"):
        require(FLAGS.rnd or not FLAGS[name].present,
                f"--{name} applies with --rnd only (found --{name}={FLAGS[name].value} "
                "without --rnd)")
    config = _teacher_config_from_flags(ppo.PPOConfig, _PPO_FLAGS)
    if not FLAGS.rnd:
        return config
    rnd_config = _config_from_flags(lambda: rnd.RNDConfig(
        intrinsic_coef=FLAGS.rnd_intrinsic_coef,
        predictor_proportion=FLAGS.rnd_predictor_proportion),
        {"RNDConfig.intrinsic_coef": "rnd_intrinsic_coef",
         "RNDConfig.predictor_proportion": "rnd_predictor_proportion"})
    return dataclasses.replace(config, rnd=rnd_config)

# -- end of teacher training ---------------------------------------------------
