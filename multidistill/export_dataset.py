"""Exports a multidistill dataset to the field's offline-RL format, Minari.

    python -m multidistill.export_dataset --to=minari --dataset=datasets/pong.h5
    multidistill export-dataset --dataset=datasets/pong.h5 --output_dir=minari_datasets

Reads one HDF5 dataset through `multidistill.datasets` (the only owner of
that format) and writes a Minari dataset (`pip install "multidistill[minari]"`)
of the same episodes, one Minari episode per recorded episode, in file order:

* **observations**: the stacked frames, (S, H, W) uint8 (S = frame_stack,
  4), exactly as the dataset reader rebuilds them (`Dataset.read_block`):
  frames i-S+1 .. i of the same episode, zeros before its first step, which
  is what the environment showed and what the teacher labelled. Stacks, not
  single frames plus the rule, because a consumer of a Minari dataset takes
  `observations[t]` as the state: single frames would make every consumer
  re-implement the episode-aware stacking, and a stack that crosses an
  episode boundary goes wrong silently. The price is S times the frame
  bytes (Minari's HDF5 storage is uncompressed: about 28 KB a step, 2.8 GB
  per 100,000 steps). Observation space Box(0, 255, (S, H, W), uint8),
  stored losslessly (no JPEG).
* **the final observation**: Minari holds N+1 observations for N steps, but
  the dataset never recorded the observation after an episode's last step
  (nothing acted on it). The exporter repeats the last recorded stack there,
  and `infos["observation_recorded"]` is False for it (True elsewhere). The
  last step ends the episode (terminated, or truncated by the frame cap), so
  a learner that bootstraps only on non-terminal steps never uses it; one
  that bootstraps on truncation gets the state one step before the cut.
* **actions** (Discrete(A), int64; the game's minimal action set unless the
  preprocessing says full), **rewards** (raw, float32), **terminations** and
  **truncations** as recorded.
* **infos**, per observation (N+1 entries, Minari's convention: infos[t]
  comes with observations[t]): `teacher_outputs` (A,) float32 (the
  labeller's Q-values or logits of that observation), `teacher_values`
  float32 (only if the teacher has a value: `teacher_value_source` other
  than "none"), `teacher_features` (F,) float16 as stored (only if the
  teacher recorded features), `behaviour_log_probs` float32 (log-probability
  of the action taken at that observation under the behaviour policy,
  exploration included), `observation_recorded` bool. At the final
  observation the teacher's labels are those of the repeated stack (the
  same input, so the same outputs) and `behaviour_log_probs` is NaN (no
  action was taken there).
* **metadata**: the provenance under the key `multidistill`: source file,
  schema version, game, ROM checksum, action meanings, the labelling
  teacher (sha256, kind, path, value source), the preprocessing, every
  recording session (who acted, beta, epsilon, seed, checksums, step
  range), the library versions that recorded it, and the rules above.
  Each episode's metadata holds its `session` (index into that list, -1
  where a version 1 file does not tell) and `source_first_step` (its first
  row in the HDF5 file). No Gymnasium env spec is stored: ALE's registered
  environments do not apply this preprocessing, so
  `MinariDataset.recover_environment()` is not available.

The Minari dataset is written under a hidden staging folder of the output
root and renamed into place when complete, so an interrupted export leaves
nothing under the dataset's id; an id that exists is refused. Memory holds
one episode at a time (a capped 27,000-step episode: about 0.8 GB).

Library functions take arguments; only the `__main__` block reads flags.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

import multidistill
from multidistill import datasets

MINARI_INSTALL_HINT = 'pip install "multidistill[minari]"'
METADATA_KEY = "multidistill"
EXPORT_FORMAT = "multidistill-minari/1"
FINAL_OBSERVATION_RULE = (
    "repeat_last: the observation after an episode's last step was never recorded; "
    "observations[N] repeats observations[N-1] and infos['observation_recorded'][N] is "
    "False")
_DATASET_ID_RE = re.compile(r"^(?:[-\w][-\w/]*[-\w]/)?[-\w]+-v\d+$")


class ExportError(ValueError):
    """The export cannot be done: a missing package, a bad id, an existing target."""


def require_minari():
    """The minari module, or ExportError naming the extra that installs it."""
    try:
        import minari
    except ImportError as e:
        raise ExportError(
            f"exporting to Minari needs the minari package, which is not installed ({e}): "
            f"{MINARI_INSTALL_HINT}") from None
    return minari


def default_dataset_id(ds: datasets.Dataset) -> str:
    """`multidistill/<game>-<behaviour>-v0`, behaviour the sessions' one
    behaviour (teacher, student, mixture, random) or `mixed`."""
    behaviours = {s.behaviour for s in ds.sessions}
    behaviour = behaviours.pop() if len(behaviours) == 1 else "mixed"
    return f"multidistill/{ds.game}-{behaviour}-v0"


def check_dataset_id(dataset_id: str) -> None:
    """Raises ExportError unless `dataset_id` is a Minari id with a version:
    `(namespace/)name-vN`."""
    if not _DATASET_ID_RE.match(dataset_id):
        raise ExportError(
            f"dataset id {dataset_id!r} is not a Minari dataset id: expected "
            "(namespace/)name-vVERSION of letters, digits, '_' and '-', e.g. "
            "multidistill/pong-teacher-v0")


def _episode_sessions(ds: datasets.Dataset) -> np.ndarray:
    """Each episode's session index (-1 where the step ranges are unknown)."""
    out = np.full(ds.num_episodes, -1, np.int64)
    for k, s in enumerate(ds.sessions):
        if s.step_start >= 0:
            inside = (ds.episode_starts >= s.step_start) & (ds.episode_starts < s.step_stop)
            out[inside] = k
    return out


def _infos_included(ds: datasets.Dataset) -> dict[str, str]:
    """The per-observation info keys this dataset fills, with their meaning."""
    infos = {"teacher_outputs": f"(A,) float32: the labelling teacher's {ds.teacher_kind} "
                                "for this observation, all actions"}
    if ds.teacher_value_source != "none":
        infos["teacher_values"] = (f"float32: the teacher's state value "
                                   f"({ds.teacher_value_source})")
    if ds.feature_dim > 0:
        infos["teacher_features"] = "(F,) float16 as stored: the teacher's last hidden layer"
    infos["behaviour_log_probs"] = (
        "float32: log-probability of the action taken at this observation under the "
        "behaviour policy, exploration included (NaN at the final observation)")
    infos["observation_recorded"] = ("bool: False for the final observation, which repeats "
                                     "the last recorded one")
    return infos


def provenance(ds: datasets.Dataset) -> dict[str, Any]:
    """The metadata that makes the export reproducible (module docstring)."""
    attrs = ds.attrs
    try:
        versions = json.loads(attrs.get("versions", "{}"))
    except json.JSONDecodeError:
        versions = {"unparsed": attrs.get("versions")}
    spec = ds.preprocessing
    try:
        from multidistill import games

        action_meanings = list(games.get_game(ds.game, spec.full_action_space).action_meanings)
    except ValueError:  # A game this ale-py does not ship: the meanings are unknown.
        action_meanings = None
    if action_meanings is not None and len(action_meanings) != ds.num_actions:
        action_meanings = None  # Not the game's action set (a synthetic file's).
    return {
        "format": EXPORT_FORMAT,
        "exported_by": f"multidistill {multidistill.__version__}",
        "exported_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source": {
            "path": str(ds.path),
            "schema_version": ds.schema_version,
            "num_agent_steps": ds.num_agent_steps,
            "num_episodes": ds.num_episodes,
            "created_utc": attrs.get("created_utc"),
            "seed": attrs.get("seed"),
            "versions": versions,
        },
        "game": ds.game,
        "rom_md5": attrs.get("rom_md5"),
        "num_actions": ds.num_actions,
        "action_meanings": action_meanings,
        "teacher": {
            "sha256": ds.teacher_sha256,
            "kind": ds.teacher_kind,
            "path": attrs.get("teacher_path"),
            "value_source": ds.teacher_value_source,
            "feature_dim": ds.feature_dim,
        },
        "preprocessing": json.loads(spec.to_json()),
        "sessions": [s.to_dict() for s in ds.sessions],
        "observations": (
            f"stacked frames ({spec.frame_stack}, {spec.frame_height}, {spec.frame_width}) "
            f"uint8: observation t stacks the preprocessed frames of steps "
            f"t-{spec.frame_stack - 1}..t of the same episode, oldest first, zeros before "
            "the episode's first step"),
        "final_observation": FINAL_OBSERVATION_RULE,
        "infos": _infos_included(ds),
    }


def episode_arrays(ds: datasets.Dataset, episode: int) -> dict[str, Any]:
    """One recorded episode in Minari's layout (N+1 observations and infos).

    Returns:
      {"observations": (N+1, S, H, W) uint8, "actions": (N,) int64,
      "rewards": (N,) float32, "terminations", "truncations": (N,) bool,
      "infos": {key: (N+1, ...)}} (keys as in the module docstring).
    """
    start = int(ds.episode_starts[episode])
    stop = start + int(ds.episode_lengths[episode])
    block = ds.read_block(start, stop)
    last = np.arange(stop - start + 1).clip(max=stop - start - 1)  # Final row repeats.
    included = _infos_included(ds)
    infos = {"teacher_outputs": block["teacher_outputs"][last].astype(np.float32)}
    if "teacher_values" in included:
        infos["teacher_values"] = block["teacher_values"][last].astype(np.float32)
    if "teacher_features" in included:
        # Back to the stored float16 (read_block widens it to float32; lossless).
        infos["teacher_features"] = block["teacher_features"][last].astype(np.float16)
    infos["behaviour_log_probs"] = np.append(
        block["behaviour_log_probs"].astype(np.float32), np.float32(np.nan))
    infos["observation_recorded"] = np.append(np.ones(stop - start, bool), False)
    return {
        "observations": block["observations"][last],
        "actions": block["actions"].astype(np.int64),
        "rewards": block["rewards"].astype(np.float32),
        "terminations": block["terminated"].astype(bool),
        "truncations": block["truncated"].astype(bool),
        "infos": infos,
    }


@contextlib.contextmanager
def _minari_root(root: Path) -> Iterator[None]:
    """Minari's dataset functions find their folder through the environment
    variable MINARI_DATASETS_PATH; it points at `root` inside the block only."""
    before = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if before is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = before


def minari_root(output_dir: str | os.PathLike | None) -> Path:
    """Where datasets go: `output_dir`, else Minari's own root
    (MINARI_DATASETS_PATH, else ~/.minari/datasets), where
    `minari.load_dataset(id)` finds them."""
    if output_dir:
        return Path(output_dir)
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


# Minari's advice when optional fields are left empty; the export records its
# provenance in its own metadata, and has no Gymnasium environment to name.
_QUIET_WARNINGS = (r"`(code_permalink|author|author_email|eval_env)` is set to None",
                   r"env_spec is None")


def export_minari(
    dataset_path: str | os.PathLike,
    dataset_id: str | None = None,
    output_dir: str | os.PathLike | None = None,
    author: str | None = None,
    author_email: str | None = None,
    code_permalink: str | None = None,
    on_episode: Callable[[int, int], None] | None = None,
) -> Path:
    """Writes a multidistill dataset as a Minari dataset (module docstring).

    Args:
      dataset_path: the HDF5 dataset to export.
      dataset_id: the Minari id, `(namespace/)name-vN`; default
        `multidistill/<game>-<behaviour>-v0` (`default_dataset_id`).
      output_dir: the Minari datasets root to write under (the dataset goes
        to `<output_dir>/<dataset_id>/data`); default Minari's own root
        (`minari_root`).
      author, author_email, code_permalink: Minari's optional credits.
      on_episode: called with (episodes written, total) after each episode
        (for a progress bar).

    Returns:
      The dataset's folder, `<root>/<dataset_id>` (`minari.load_dataset(id)`
      loads it with MINARI_DATASETS_PATH set to the root).

    Raises:
      ExportError: minari is not installed, the id is malformed, or a
        dataset of that id exists under the root.
      datasets.DatasetError: the file is missing, not a dataset, or damaged.
    """
    minari = require_minari()
    from gymnasium import spaces
    from minari.data_collector import EpisodeBuffer  # Its documented home.

    with datasets.Dataset(dataset_path) as ds:
        dataset_id = dataset_id or default_dataset_id(ds)
        check_dataset_id(dataset_id)
        root = minari_root(output_dir)
        target = root / dataset_id
        if target.exists():
            raise ExportError(
                f"a Minari dataset {dataset_id!r} exists already at {target}: choose another "
                "--dataset_id (e.g. the next version) or delete that folder. Nothing was "
                "written")
        if ds.num_episodes == 0:
            raise ExportError(f"dataset {ds.path} holds no episodes: nothing to export")
        spec = ds.preprocessing
        metadata = provenance(ds)
        sessions = _episode_sessions(ds)
        behaviours = ", ".join(sorted({s.behaviour for s in ds.sessions}))
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".multidistill-export-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            with _minari_root(staging), warnings.catch_warnings():
                for message in _QUIET_WARNINGS:
                    warnings.filterwarnings("ignore", message=message, category=UserWarning)
                out = minari.create_dataset_from_buffers(
                    dataset_id, [],
                    observation_space=spaces.Box(0, 255, spec.observation_shape, np.uint8),
                    action_space=spaces.Discrete(ds.num_actions),
                    algorithm_name=(f"multidistill: {behaviours} acting, labelled by a "
                                    f"{ds.teacher_kind} teacher"),
                    author=author, author_email=author_email, code_permalink=code_permalink,
                    description=(
                        f"{ds.game}: {ds.num_agent_steps} agent steps in {ds.num_episodes} "
                        f"episodes recorded by multidistill ({behaviours} acting), every "
                        f"step labelled by a {ds.teacher_kind} teacher (sha256 "
                        f"{ds.teacher_sha256[:12]}); teacher outputs in the infos, "
                        f"provenance in the metadata key '{METADATA_KEY}'"),
                    jpeg_encoding=False)
                for e in range(ds.num_episodes):
                    arrays = episode_arrays(ds, e)
                    out.update_dataset_from_buffer([EpisodeBuffer(**arrays)])
                    if on_episode is not None:
                        on_episode(e + 1, ds.num_episodes)
                out.storage.update_metadata({METADATA_KEY: metadata})
                out.storage.update_episode_metadata(
                    [{"session": int(s), "source_first_step": int(start)}
                     for s, start in zip(sessions, ds.episode_starts)])
            if target.exists():  # Written meanwhile by someone else: theirs stays.
                raise ExportError(f"a Minari dataset {dataset_id!r} appeared at {target} "
                                  "while exporting; nothing was written")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging / dataset_id, target)
            _register_namespace(minari, root, dataset_id)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _register_namespace(minari, root: Path, dataset_id: str) -> None:
    """Records the id's namespace under the root, as Minari does on creation
    (a namespace folder holds a metadata file; `minari list` shows it)."""
    namespace = dataset_id.rpartition("/")[0]
    if not namespace:
        return
    from minari import namespace as namespaces

    with _minari_root(root):
        if namespace not in namespaces.list_local_namespaces():
            namespaces.create_namespace(namespace)


def _define_flags():
    from absl import flags

    from multidistill import cli

    flags.DEFINE_string("to", "minari", "Format to export to: minari (the only one so far).")
    flags.DEFINE_string("dataset", None,
                        "The multidistill HDF5 dataset to export, e.g. datasets/pong.h5.")
    flags.DEFINE_string("dataset_id", None,
                        "Minari id of the export, (namespace/)name-vVERSION (default "
                        "multidistill/<game>-<behaviour>-v0, behaviour who acted: teacher, "
                        "student, mixture, random, or mixed).")
    flags.DEFINE_string("output_dir", None,
                        "Minari datasets root to write under: the dataset goes to "
                        "<output_dir>/<dataset_id> (default: Minari's own root, "
                        "MINARI_DATASETS_PATH or ~/.minari/datasets).")
    flags.DEFINE_string("author", None, "Author credited in the Minari metadata (optional).")
    flags.DEFINE_string("author_email", None, "The author's email (optional).")
    flags.DEFINE_string("code_permalink", None,
                        "Link to the code that made the data (optional).")
    cli.define_verbose_flag()


def main(argv):
    del argv
    from multidistill import cli, progress

    FLAGS = cli.FLAGS  # noqa: N806 (absl's name)
    cli.require(FLAGS.to == "minari", f"--to={FLAGS.to}: the formats are: minari")
    cli.require(bool(FLAGS.dataset), "--dataset is required: the HDF5 dataset to export, "
                                     "e.g. --dataset=datasets/pong.h5")
    require_minari()  # Before anything is read: say what to install first.
    bar = None

    def on_episode(done, total):
        nonlocal bar
        if bar is None:
            bar = progress.bar(total, "export", "episodes")
        bar.update(1)

    try:
        target = export_minari(FLAGS.dataset, FLAGS.dataset_id, FLAGS.output_dir,
                               FLAGS.author, FLAGS.author_email, FLAGS.code_permalink,
                               on_episode=on_episode)
    finally:
        if bar is not None:
            bar.close()
    dataset_id = target.relative_to(minari_root(FLAGS.output_dir)).as_posix()
    print(f"{FLAGS.dataset} -> Minari dataset {dataset_id} at {target}")


if __name__ == "__main__":
    from multidistill import cli

    _define_flags()
    cli.run(main)
