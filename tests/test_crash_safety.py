"""SIGKILL at random moments leaves dataset files readable, whole, resumable."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, SPEC_KW, new_writer, synthetic_episode

from multidistill import datasets

# Appends synthetic episodes forever, reopening the writer every 3 episodes
# (so kills also land in open/validate/close).
WRITER = """
import sys
sys.path[:0] = [{tests!r}, {repo!r}]
from conftest import new_writer, synthetic_episode
from multidistill import environments
spec = environments.Preprocessing(max_episode_frames={frames})
i = 0
while True:
    with new_writer({path!r}, spec) as w:
        for _ in range(3):
            w.append_episode(synthetic_episode(150 + (i % 5) * 17, seed=i))
            i += 1
"""


def _kill_writer_at_random(path, delay):
    env = dict(os.environ, KERAS_BACKEND="jax")  # The writer needs no TensorFlow.
    code = WRITER.format(tests=str(REPO / "tests"), repo=str(REPO), path=str(path),
                         frames=SPEC_KW["max_episode_frames"])
    p = subprocess.Popen([sys.executable, "-c", code], env=env)
    t0 = time.time()
    while not path.exists() and time.time() - t0 < 120:  # Start-up (imports) varies.
        time.sleep(0.05)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(6))
def test_sigkill_leaves_whole_episodes_and_resumes(tmp_path, spec, trial):
    rng = np.random.default_rng(trial)
    path = tmp_path / "pong.h5"
    _kill_writer_at_random(path, float(rng.uniform(0.0, 2.5)))
    assert path.exists()
    with datasets.Dataset(path) as ds:
        n, e = ds.num_agent_steps, ds.num_episodes
        blk = ds.read_block(0, n)  # Every committed row reads (checksums pass).
        # Whole episodes only, each as written: frame j of episode i = (37 i + j + 1) % 251.
        for i, (s, t) in enumerate(zip(ds.episode_starts, ds.episode_lengths)):
            assert t == 150 + (i % 5) * 17
            expected = synthetic_episode(int(t), seed=i)
            np.testing.assert_array_equal(blk["actions"][s:s + t], expected["actions"])
        # The count attributes mirror `committed`, or lag it by the last
        # episode when the kill fell between the commit and their update.
        raw = {k: int(ds._f.attrs[k]) for k in ("num_agent_steps", "num_episodes")}
        last = int(ds.episode_lengths[-1]) if e else 0
        assert (raw["num_agent_steps"], raw["num_episodes"]) in ((n, e), (n - last, e - 1))
        # The sessions (one per writer opened) tile the committed steps, on
        # episode boundaries, whatever the kill cut short.
        sessions = ds.sessions
        _assert_tiles(sessions, n, ds.episode_starts)
    # A new writer clears the killed writer's flags and continues after the
    # last whole episode.
    with new_writer(path, spec) as w:
        assert (w.num_agent_steps, w.num_episodes) == (n, e)
        assert int(w._f.attrs["num_agent_steps"]) == n  # Re-synced on open.
        # The session table itself is cut back to the committed steps.
        assert all(s.step_stop <= n for s in w.sessions[:-1])
        w.append_episode(synthetic_episode(7, seed=1000))
    with datasets.Dataset(path) as ds:
        assert (ds.num_agent_steps, ds.num_episodes) == (n + 7, e + 1)
        assert len(ds.sessions) == len(sessions) + 1
        assert (ds.sessions[-1].step_start, ds.sessions[-1].step_stop) == (n, n + 7)
        _assert_tiles(ds.sessions, n + 7, ds.episode_starts)
        np.testing.assert_array_equal(ds.read_block(n, n + 7)["actions"],
                                      synthetic_episode(7, seed=1000)["actions"])


def _assert_tiles(sessions, n, episode_starts):
    assert sessions and sessions[0].step_start == 0 and sessions[-1].step_stop == n
    for a, b in zip(sessions, sessions[1:]):
        assert a.step_start <= a.step_stop == b.step_start
    bounds = set(episode_starts.tolist()) | {n}
    assert all(s.step_start in bounds and s.step_stop in bounds for s in sessions)


def test_status_flag_checksum_matches_hdf5(tmp_path, spec):
    """Our lookup3 reproduces the checksum HDF5 itself wrote."""
    path = tmp_path / "x.h5"
    with new_writer(path, spec) as w:
        w.append_episode(synthetic_episode(3))
    head = path.read_bytes()[:48]
    end = 12 + 4 * head[9]
    assert datasets._lookup3(head[:end]) == int.from_bytes(head[end:end + 4], "little")
    assert datasets.clear_status_flags(path) is False  # Closed cleanly: nothing to clear.


def _superblock(path, flags=None, eoa=None):
    """Rewrites a version 2/3 superblock's status flags and end-of-file address (as a
    killed SWMR writer can leave them), with its checksum; returns (flags, eoa)."""
    with open(path, "r+b") as f:
        head = bytearray(f.read(64))
        size = head[9]
        end, at = 12 + 4 * size, 12 + 2 * size
        if flags is not None:
            head[11] = flags
        if eoa is not None:
            head[at:at + size] = eoa.to_bytes(size, "little")
        head[end:end + 4] = datasets._lookup3(bytes(head[:end])).to_bytes(4, "little")
        f.seek(0)
        f.write(bytes(head[:end + 4]))
    return head[11], int.from_bytes(head[at:at + size], "little")


def test_a_stale_end_of_file_address_left_by_a_killed_writer_is_raised(tmp_path, spec):
    """A killed SWMR writer can leave the superblock's end-of-file address behind
    data it had flushed (CI saw "addr overflow" reopening such a file); clearing
    its flags raises the address to the file's size, as `h5clear --increment`."""
    import h5py

    path = tmp_path / "pong.h5"
    with new_writer(path, spec) as w:
        for i in range(4):
            w.append_episode(synthetic_episode(150, seed=i))
    size = path.stat().st_size
    _superblock(path, flags=0x05, eoa=size // 2)  # Open for SWMR writing, EOA stale.
    stale = tmp_path / "stale.h5"
    stale.write_bytes(path.read_bytes())
    _superblock(stale, flags=0)
    with pytest.raises(OSError), h5py.File(stale, "r", libver="latest") as f:
        f["frames"][:]  # A plain reader stops at the stale address.

    with new_writer(path, spec) as w:  # Clears the flags, raises the address.
        w.append_episode(synthetic_episode(150, seed=4))
    with datasets.Dataset(path) as ds:
        assert ds.num_episodes == 5
        blk = ds.read_block(0, ds.num_agent_steps)
        for i, start in enumerate(ds.episode_starts):
            np.testing.assert_array_equal(blk["actions"][start:start + 150],
                                          synthetic_episode(150, seed=i)["actions"])
    flags, eoa = _superblock(path)
    assert flags == 0 and eoa >= size


def test_disk_full_while_appending_keeps_earlier_episodes(tmp_path, spec, monkeypatch):
    import errno

    import h5py

    path = tmp_path / "pong.h5"
    with new_writer(path, spec) as w:
        w.append_episode(synthetic_episode(20, seed=1))
        w.append_episode(synthetic_episode(30, seed=2))
    real_setitem = h5py.Dataset.__setitem__
    calls = []

    def full_disk(self, key, value):
        calls.append(self.name)
        if len(calls) == 3:  # Fail in the middle of the next episode's rows.
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_setitem(self, key, value)

    w = new_writer(path, spec)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", full_disk)
    with pytest.raises(datasets.DatasetError,
                       match="pong.h5: writing an episode failed .*No space left on device.*"
                             "the 2 episodes written before are intact"):
        w.append_episode(synthetic_episode(40, seed=3))
    monkeypatch.setattr(h5py.Dataset, "__setitem__", real_setitem)
    w.close()
    with datasets.Dataset(path) as ds:
        assert (ds.num_episodes, ds.num_agent_steps) == (2, 50)
        np.testing.assert_array_equal(ds.read_block(20, 50)["actions"],
                                      synthetic_episode(30, seed=2)["actions"])
    # Space again: the next append goes where the failed one started.
    with new_writer(path, spec) as w:
        w.append_episode(synthetic_episode(5, seed=4))
    with datasets.Dataset(path) as ds:
        assert (ds.num_episodes, ds.num_agent_steps) == (3, 55)


def test_a_kill_inside_start_session_leaves_the_file_usable(tmp_path, spec):
    import h5py

    path = tmp_path / "pong.h5"
    with new_writer(path, spec) as w:
        w.append_episode(synthetic_episode(4))
    with h5py.File(path, "a", libver="latest") as f:  # Resized, the row never written.
        f["sessions"].resize(2, axis=0)
    with datasets.Dataset(path) as ds:
        assert (ds.num_agent_steps, ds.num_episodes) == (4, 1)
        assert [s.behaviour for s in ds.sessions] == ["teacher"]
    with new_writer(path, spec) as w:  # A top-up goes on.
        w.append_episode(synthetic_episode(3, seed=1))
    with datasets.Dataset(path) as ds:
        assert [(s.step_start, s.step_stop) for s in ds.sessions][-1] == (4, 7)
