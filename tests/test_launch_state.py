"""Tune's launch state in signed copies (no Ray needed): what verifies, what is refused, what is put back;
and the local Ray's shared files: one auth token for concurrent first launches, a private temp folder."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from sweeplab.runner import launch_state as ls


@pytest.fixture(autouse=True)
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "keys" / "state.key"  # outside every launch folder below
    monkeypatch.setenv("SWEEPLAB_KEY_FILE", str(path))
    return path


def launch(tmp_path: Path) -> Path:
    d = tmp_path / "ray" / "sweep-1"
    d.mkdir(parents=True)
    (d / "tuner.pkl").write_bytes(b"tuner v1")
    (d / "experiment_state-1.json").write_text('{"trial_data": [1]}')
    (d / "sweeplab.json").write_text("{}")
    (d / "trial_0").mkdir()  # trial folders are not state files
    return d


def test_a_copy_is_signed_and_verifies(tmp_path, key_file):
    d = launch(tmp_path)
    assert ls.Keeper(d).maybe_copy(force=True)
    copy = ls.verified(d)
    assert sorted(p.name for p in copy.iterdir()) == [
        "digests.json",
        "experiment_state-1.json",
        "sweeplab.json",
        "tuner.pkl",
    ]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert ls.differing(d, copy) == []


def test_unchanged_state_is_not_copied_again_and_two_copies_are_kept(tmp_path):
    d = launch(tmp_path)
    keeper = ls.Keeper(d, min_interval_s=0)
    assert keeper.maybe_copy() and not keeper.maybe_copy()
    for i in range(3):
        (d / "experiment_state-1.json").write_text(f'{{"trial_data": [{i + 2}]}}')
        assert keeper.maybe_copy()
    copies = sorted(p.name for p in (d / ls.STATE_DIR).iterdir())
    assert copies == ["000003", "000004"]


def test_a_copy_that_cannot_be_written_keeps_the_older_one(tmp_path, capsys, monkeypatch):
    d = launch(tmp_path)
    keeper = ls.Keeper(d, min_interval_s=0)
    keeper.maybe_copy()
    (d / "tuner.pkl").write_bytes(b"tuner v2")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ls.shutil, "copy2", full)
    assert not keeper.maybe_copy()  # no exception into Tune's event loop
    assert "could not copy" in capsys.readouterr().err
    assert ls.verified(d).name == "000001" and sorted(p.name for p in (d / ls.STATE_DIR).iterdir()) == ["000001"]


def test_a_tampered_copy_is_refused_and_an_older_good_one_used(tmp_path):
    d = launch(tmp_path)
    keeper = ls.Keeper(d, min_interval_s=0)
    keeper.maybe_copy()
    (d / "tuner.pkl").write_bytes(b"tuner v2")
    keeper.maybe_copy()
    newest = d / ls.STATE_DIR / "000002"
    (newest / "tuner.pkl").write_bytes(b"planted payload")
    assert ls.verified(d).name == "000001"
    (d / ls.STATE_DIR / "000001" / "tuner.pkl").write_bytes(b"planted payload")
    with pytest.raises(ls.StateError, match="does not verify"):
        ls.verified(d)


def test_another_key_verifies_nothing(tmp_path, monkeypatch):
    d = launch(tmp_path)
    ls.Keeper(d).maybe_copy(force=True)
    monkeypatch.setenv("SWEEPLAB_KEY_FILE", str(tmp_path / "other.key"))
    with pytest.raises(ls.StateError, match="no signing key"):
        ls.verified(d)
    ls.key(create=True)
    with pytest.raises(ls.StateError, match="does not verify"):
        ls.verified(d)


def test_no_copy_is_reported(tmp_path):
    with pytest.raises(ls.StateError, match="no saved Tune state"):
        ls.verified(launch(tmp_path))


def test_reinstate_puts_the_copy_back_and_moves_differing_files_aside_unread(tmp_path):
    d = launch(tmp_path)
    ls.Keeper(d).maybe_copy(force=True)
    (d / "experiment_state-1.json").write_text('{"trial_d')  # torn by a full disk
    (d / "tuner.pkl").write_bytes(b"planted payload")  # or planted
    (d / "experiment_state-2.json").write_text("{}")  # written after the last copy
    copy, moved = ls.reinstate(d)
    assert sorted(moved) == ["experiment_state-1.json", "experiment_state-2.json", "tuner.pkl"]
    assert (d / "tuner.pkl").read_bytes() == b"tuner v1"
    assert json.loads((d / "experiment_state-1.json").read_text()) == {"trial_data": [1]}
    assert not (d / "experiment_state-2.json").exists()
    (aside,) = (d / ls.STATE_DIR).glob("unverified-*")
    assert (aside / "tuner.pkl").read_bytes() == b"planted payload"
    assert ls.differing(d, copy) == []


def test_a_token_written_by_a_concurrent_first_launch_is_shared(tmp_path, monkeypatch):
    # Two first sweeps in one new storage folder: the other one writes the token right after this one
    # looked for it (simulated: `exists` answers False once it is there). It used to be FileExistsError.
    from sweeplab.runner import cluster

    storage = tmp_path / "storage"
    storage.mkdir()
    token = storage / ".ray_auth_token"
    token.write_text("a" * 64)
    token.chmod(0o600)
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self: False if self == token else real_exists(self))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "")  # restored after the test, like RAY_AUTH_MODE
    cluster.environment(str(storage), local=True)
    assert Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text() == "a" * 64  # the winner's token, kept
    assert sorted(p.name for p in storage.iterdir()) == [".ray_auth_token"]  # no temporary file left
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_ray_temp_folder_is_private(tmp_path, monkeypatch):
    from sweeplab.runner import cluster

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    inner = Path(cluster.private_temp_dir())
    outer = inner.parent
    assert outer.parent == tmp_path and stat.S_IMODE(outer.stat().st_mode) == 0o700
    os.chmod(outer, 0o777)  # as an older sweeplab (or Ray itself) left it
    cluster.private_temp_dir()
    assert stat.S_IMODE(outer.stat().st_mode) == 0o700
