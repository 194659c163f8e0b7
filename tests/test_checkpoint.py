"""Tests of timm_gsp.train.checkpoint: round trip, model_config.json, and a kill at every step of a save."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from timm_gsp.errors import CheckpointMismatchError, ConfigError
from timm_gsp.models.model_config import RetrievalModelConfig
from timm_gsp.train.checkpoint import (
    MODEL_CONFIG_FILE, MODEL_FILE, load_checkpoint, read_model_config, save_checkpoint,
)

CONFIG = RetrievalModelConfig("resnet18", embed_dim=64, pool="gsp", model_kwargs={"output_stride": 8},
                              data_config={"input_size": [3, 96, 96], "crop_pct": 1.0})


def save_version(folder: Path, version: int) -> Path:
    """A checkpoint whose every part says ``version``."""
    return save_checkpoint(folder, {"w": torch.full((4,), float(version))}, {"epoch": version, "t": torch.arange(version + 1)})


def loaded_version(folder: Path) -> int:
    model_state, state = load_checkpoint(folder)
    assert model_state["w"].tolist() == [float(state["epoch"])] * 4  # both files from the same save
    assert state["t"].tolist() == list(range(state["epoch"] + 1))
    return state["epoch"]


class Killed(BaseException):
    """Raised at the step where the simulated kill happens (not an Exception: nothing may catch it)."""


# The filesystem calls a save is made of. A save "killed" at step k: the k-th call raises Killed and
# every later call does nothing, so cleanup handlers run but change nothing, as after a SIGKILL.
# shutil.rmtree goes through os.unlink / os.rmdir, so a kill can also land halfway through a removal.
STEPS = ("mkdir", "replace", "rename", "fsync", "chmod", "unlink", "rmdir")


def interrupted_save(monkeypatch, folder: Path, version: int, kill_at: float) -> int:
    """``save_version`` killed at filesystem step ``kill_at`` (never if inf); returns the steps seen."""
    seen = []
    dead = False

    def step(real):
        def call(*args, **kwargs):
            nonlocal dead
            if dead:
                return None
            seen.append(real.__name__)
            if len(seen) == kill_at:
                dead = True
                raise Killed(f"killed at {real.__name__}")
            return real(*args, **kwargs)
        return call

    with monkeypatch.context() as patch:
        for name in STEPS:
            patch.setattr(os, name, step(getattr(os, name)))
        try:
            save_version(folder, version)
        except Killed:
            pass
    return len(seen)


def test_round_trip_and_model_config(tmp_path):
    state = {"epoch": 3, "pair": (1, torch.ones(2)), "array": np.arange(3), "loss": float("nan"),
             "nested": {"opt": [torch.zeros(2, 2)], 5: "int key"}}
    folder = save_checkpoint(tmp_path / "run" / "checkpoint", {"w": torch.randn(3, 3)}, state, CONFIG)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [MODEL_FILE, MODEL_CONFIG_FILE, "training_state.safetensors", "training_state.json"])
    assert json.loads((folder / MODEL_CONFIG_FILE).read_text()) == CONFIG.to_dict()
    assert read_model_config(folder) == CONFIG
    model_state, loaded = load_checkpoint(folder)
    assert loaded["pair"][0] == 1 and torch.equal(loaded["pair"][1], torch.ones(2))
    assert np.array_equal(loaded["array"], np.arange(3)) and np.isnan(loaded["loss"])
    assert loaded["nested"][5] == "int key" and torch.equal(loaded["nested"]["opt"][0], torch.zeros(2, 2))
    save_checkpoint(folder, {"w": torch.zeros(1)}, {"epoch": 4})  # a save without a config drops the stale one
    assert not (folder / MODEL_CONFIG_FILE).exists()
    with pytest.raises(TypeError, match="RetrievalModelConfig"):
        save_checkpoint(folder, {}, {}, CONFIG.to_dict())


@pytest.mark.filterwarnings("ignore:.*a save was interrupted:RuntimeWarning")
def test_kill_at_every_step_of_a_save(monkeypatch, tmp_path):
    steps = interrupted_save(monkeypatch, tmp_path / "probe" / "ckpt", 0, float("inf"))
    replace_steps = interrupted_save(monkeypatch, tmp_path / "probe" / "ckpt", 1, float("inf"))
    assert steps >= 5 and replace_steps > steps
    for kill_at in range(1, replace_steps + 1):
        folder = tmp_path / f"k{kill_at}" / "ckpt"
        # the first save of a run, killed: nothing to read yet, or the new checkpoint
        interrupted_save(monkeypatch, folder, 1, kill_at)
        try:
            assert loaded_version(folder) == 1
        except CheckpointMismatchError as error:
            assert str(folder) in str(error)
        save_version(folder, 2)
        # replacing a checkpoint, killed: the previous or the new one is read
        interrupted_save(monkeypatch, folder, 3, kill_at)
        interrupted_between_renames = not folder.exists()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert loaded_version(folder) in (2, 3), kill_at
        assert [w.category for w in caught] == [RuntimeWarning] * interrupted_between_renames, kill_at
        # killed again while recovering from that: still the last complete checkpoint, or newer
        for second_kill in (1, kill_at):
            before = loaded_version(folder)
            interrupted_save(monkeypatch, folder, 4, second_kill)
            assert loaded_version(folder) in (before, 4), (kill_at, second_kill)
        # the next save puts its checkpoint in place and removes every leftover
        save_version(folder, 5)
        assert [p.name for p in folder.parent.iterdir()] == ["ckpt"], kill_at
        assert loaded_version(folder) == 5


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_sigkill_during_saves_leaves_a_readable_checkpoint(tmp_path):
    folder = tmp_path / "checkpoint"
    script = textwrap.dedent(f"""
        import sys, torch
        from timm_gsp.train.checkpoint import load_checkpoint, save_checkpoint
        folder = {str(folder)!r}
        epoch = load_checkpoint(folder)[1]["epoch"] + 1 if len(sys.argv) > 1 else 0
        while True:  # 16 MB per save, so that kills land inside writes and renames alike
            save_checkpoint(folder, {{"w": torch.full((4_000_000,), float(epoch))}}, {{"epoch": epoch}})
            print(epoch, flush=True)
            epoch += 1
    """)
    rng = np.random.default_rng(0)
    last = -1
    for attempt in range(2):  # a first run, then a resumed one whose first save meets the leftovers
        child = subprocess.Popen([sys.executable, "-c", script] + (["resume"] if attempt else []),
                                 stdout=subprocess.PIPE, text=True)
        try:
            saved = int(child.stdout.readline())  # one save done: kill during the following ones
            time.sleep(float(rng.uniform(0.05, 0.5)))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        model_state, state = load_checkpoint(folder)
        assert state["epoch"] >= max(saved, last) and bool((model_state["w"] == state["epoch"]).all())
        last = state["epoch"]


def test_not_a_checkpoint_names_the_folder_and_what_is_missing(tmp_path):
    with pytest.raises(CheckpointMismatchError, match=f"no training checkpoint at {tmp_path / 'nowhere'}"):
        load_checkpoint(tmp_path / "nowhere")
    folder = save_version(tmp_path / "ckpt", 1)
    (folder / "training_state.json").unlink()
    (folder / MODEL_FILE).unlink()
    with pytest.raises(CheckpointMismatchError) as error:
        load_checkpoint(folder)
    assert str(error.value) == (f"{folder} is not a timm-gsp training checkpoint: "
                                f"missing {MODEL_FILE}, training_state.json")
    folder = save_version(tmp_path / "ckpt2", 1)
    (folder / MODEL_FILE).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointMismatchError, match=f"cannot read {folder / MODEL_FILE}"):
        load_checkpoint(folder)


def test_read_model_config_errors_name_the_folder(tmp_path):
    folder = save_version(tmp_path / "ckpt", 1)
    with pytest.raises(ConfigError, match=f"{folder} has no {MODEL_CONFIG_FILE}"):
        read_model_config(folder)
    with pytest.raises(ConfigError, match=str(tmp_path / "nowhere")):
        read_model_config(tmp_path / "nowhere")
    (folder / MODEL_CONFIG_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=str(folder / MODEL_CONFIG_FILE)):
        read_model_config(folder)
    (folder / MODEL_CONFIG_FILE).write_text(json.dumps({"embed_dim": 3}))
    with pytest.raises(ConfigError, match=f"{folder / MODEL_CONFIG_FILE}: not a timm-gsp model description"):
        read_model_config(folder)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_permissions_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        folder = save_checkpoint(tmp_path / "ckpt", {"w": torch.ones(1)}, {"epoch": 0}, CONFIG)
        reference = tmp_path / "reference"
        reference.mkdir()
        (reference / "file").write_bytes(b"")
    finally:
        os.umask(previous)
    assert folder.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777 == 0o777 & ~umask
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o777 == (reference / "file").stat().st_mode & 0o777 == 0o666 & ~umask, path.name


@pytest.mark.skipif(os.name != "posix", reason="POSIX rlimits")
def test_a_save_that_cannot_be_written_is_an_output_write_error_and_keeps_the_previous(tmp_path):
    """A real failing write (RLIMIT_FSIZE, SIGXFSZ ignored: EFBIG past 4 kB, as a full disk's ENOSPC):
    safetensors' own error becomes an OutputWriteError (an OSError) naming the folder and the cause;
    the previous checkpoint stays the checkpoint and nothing else is left beside it."""
    folder = tmp_path / "checkpoint"
    save_version(folder, 1)
    before = sorted(p.name for p in tmp_path.iterdir())
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from timm_gsp.errors import OutputWriteError
        from timm_gsp.train.checkpoint import save_checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            save_checkpoint({str(folder)!r}, {{"w": torch.full((100_000,), 2.0)}}, {{"epoch": 2}})
        except OutputWriteError as error:
            assert isinstance(error, OSError) and error.errno is not None
            print(error)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"cannot write {folder}: File too large"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert loaded_version(folder) == 1
