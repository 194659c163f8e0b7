"""examples/train.py under fire: two runs into one --output, a full disk, a start that fails, a SIGKILL.

Real processes, real files: two training processes race for one folder, writes fail for real
(RLIMIT_FSIZE with SIGXFSZ ignored makes the kernel refuse any write past a size with EFBIG, as a full
disk refuses it with ENOSPC), and runs are killed with SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from timm_gsp.train.checkpoint import load_checkpoint
from timm_gsp.train.folder_claim import CLAIM_FILE, FolderClaim
from timm_gsp.train.run_results import read_results

from conftest import REPO, subprocess_env
from fixtures_data import make_folder_tree

sys.path.insert(0, str(REPO / "examples"))
import train as train_script  # noqa: E402

TRAIN = [sys.executable, str(REPO / "examples" / "train.py")]
TINY = ["--model", "test_resnet", "--no-pretrained", "--img-size", "32", "--embed-dim", "8", "--num-prototypes", "4",
        "--batch-size", "4", "--m-per-class", "2", "--workers", "0", "--no-progress", "--lr", "1e-3"]
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals, rlimits and /proc")


def folder_args(root, *extra):
    return [*TINY, "--dataset", "folder", "--data-dir", str(root), *map(str, extra)]


def snapshot(folder: Path):
    """Every path under ``folder`` (hidden ones too) with its bytes: what 'left exactly as it was' compares."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), stderr[-3000:]
    return lines[0]


def wait_for(condition, timeout: float, what: str, process=None):
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended ({process.returncode}) before {what}: {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.2)


def limit_file_size(max_bytes: int):
    """A preexec_fn: writes past ``max_bytes`` into any file fail with a real OSError (EFBIG)."""
    def limit():
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer; ignored, write() fails
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes if hard == resource.RLIM_INFINITY else min(max_bytes, hard), hard))
    return limit


# --- 1. one run per output folder ------------------------------------------------------------------

def test_two_runs_started_together_into_one_output_one_is_refused(tmp_path):
    """Two train.py processes, imported and then released at one instant (a file both poll for), so that
    both look at the empty folder together."""
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=4)
    output, go = tmp_path / "run", tmp_path / "go"
    starter = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO / 'examples')!r})
        import train
        print("ready", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.001)
        sys.exit(train.main(sys.argv[1:]))
    """)
    command = [sys.executable, "-c", starter, *folder_args(root, "--epochs", "2", "--output", output)]
    runs = [subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    assert [run.stdout.readline() for run in runs] == ["ready\n"] * 2, [run.stderr.read()[-2000:] for run in runs]
    go.touch()
    done = [(run.returncode, out, err) for run in runs for out, err in [run.communicate(timeout=600)]]
    codes = sorted(code for code, _, _ in done)
    assert codes == [0, 1], [err[-2000:] for _, _, err in done]
    (_, _, refused), = [d for d in done if d[0] == 1]
    line = one_error_line(refused)
    assert f"--output {output} is in use by another run (pid " in line, line
    # the run that went ahead is whole: each epoch logged once, its results and checkpoint in place
    assert [json.loads(x)["epoch"] for x in (output / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert read_results(output / "results.json").epochs == 2
    assert load_checkpoint(output / "checkpoint")[1]["epoch"] == 1
    assert not (output / CLAIM_FILE).exists()  # released at the end


@posix_only
def test_a_live_run_holds_its_output_and_a_sigkilled_ones_claim_is_taken_over(tmp_path, capsys):
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=4)
    output = tmp_path / "run"
    common = folder_args(root, "--output", output)
    # with loader workers: forked from the run, they must not keep its claim alive once it is killed
    live = subprocess.Popen([*TRAIN, *common, "--epochs", "500", "--workers", "2"], env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (output / "metrics.jsonl").is_file(), 180, "first checkpoint", live)
        # neither a second run, nor --resume, nor --overwrite may write into the folder of a live run
        for extra in ([], ["--resume"], ["--overwrite"]):
            assert train_script.main([*common, "--epochs", "500", *extra]) == 1
            line = one_error_line(capsys.readouterr().err)
            assert f"--output {output} is in use by another run (pid {live.pid}" in line, line
        assert live.poll() is None
        assert (output / "checkpoint").is_dir()
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
        live.stderr.close()
    assert (output / CLAIM_FILE).is_file()  # what the killed run left: a claim that no process holds
    # the dead run's claim is stale: --resume takes it over at once and continues from its checkpoint
    epochs_done = len((output / "metrics.jsonl").read_text().splitlines())
    assert train_script.main([*common, "--resume", "--epochs", str(epochs_done + 1)]) == 0
    epochs = [json.loads(x)["epoch"] for x in (output / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, epochs_done + 2))
    assert read_results(output / "results.json").epochs == epochs_done + 1
    assert not (output / CLAIM_FILE).exists()


def test_folder_claim_is_one_holder_at_a_time_and_removes_only_the_empty_folders_it_made(tmp_path):
    claim = FolderClaim(tmp_path / "a" / "b" / "run")
    assert claim.acquire() and (tmp_path / "a" / "b" / "run" / CLAIM_FILE).is_file()
    again = FolderClaim(tmp_path / "a" / "b" / ".." / "b" / "run")  # the same folder, named otherwise
    assert not again.acquire() and again.holder == f"this process (pid {os.getpid()})"
    (tmp_path / "a" / "mine.txt").write_text("mine")
    claim.release()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["mine.txt"]  # b and run went, a stays
    with FolderClaim(tmp_path / "a" / "run") as held:
        (held.folder / "written").write_text("x")
    assert sorted(p.name for p in (tmp_path / "a" / "run").iterdir()) == ["written"]  # a folder written into stays


@posix_only
def test_a_claim_taken_a_moment_before_its_pid_is_written_is_still_named(tmp_path):
    """The window the two-runs race can hit: the holder has the lock on an empty file and writes its pid
    only a moment later. The refused claim waits for the pid rather than naming no one."""
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, socket, sys, time
        fd = os.open({str(folder / CLAIM_FILE)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("locked", flush=True)
        time.sleep(0.3)
        os.write(fd, f"{{os.getpid()}} {{socket.gethostname()}}\\n".encode())
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        claim = FolderClaim(folder)
        assert not claim.acquire()
        assert claim.holder == f"another run (pid {holder.pid} on {socket.gethostname()})"
    finally:
        holder.communicate("", timeout=30)


# --- 2. a write that fails ---------------------------------------------------------------------------

@posix_only
def test_a_failed_write_is_one_line_and_the_earlier_checkpoint_resumes(tmp_path, capsys):
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=4)
    common = folder_args(root, "--epochs", "2")
    limited = dict(env=subprocess_env(), capture_output=True, text=True, timeout=600, preexec_fn=limit_file_size(4096))
    # a run that cannot write its first checkpoint leaves nothing behind, not even the folders it made
    fresh = tmp_path / "new" / "run"
    done = subprocess.run([*TRAIN, *common, "--output", str(fresh)], **limited)
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert line.startswith(f"train.py: error: cannot write {fresh / 'checkpoint'}: File too large"), line
    assert not (tmp_path / "new").exists()
    # a run with a checkpoint of epoch 1: its next save fails, the checkpoint of epoch 1 stays whole
    output = tmp_path / "run"
    assert train_script.main([*common, "--output", str(output), "--stop-after-epoch", "1"]) == 0
    kept = snapshot(output)
    done = subprocess.run([*TRAIN, *common, "--output", str(output), "--resume"], **limited)
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert line.startswith(f"train.py: error: cannot write {output / 'checkpoint'}: File too large"), line
    assert "--resume" in line  # says how to go on
    assert snapshot(output) == kept  # no temporary file, no half checkpoint, the log not ahead of it
    assert load_checkpoint(output / "checkpoint")[1]["epoch"] == 0
    # ... and --resume continues from it once there is room
    capsys.readouterr()
    assert train_script.main([*common, "--output", str(output), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [json.loads(x)["epoch"] for x in (output / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert read_results(output / "results.json").epochs == 2


@posix_only
def test_results_log_and_pictures_that_cannot_be_written_are_output_write_errors(tmp_path):
    """The atomic writer (results.json, metrics.jsonl, gsp_weights.png) and the metrics plot, each with a
    write that fails for real: an OutputWriteError naming the path and the cause; the file written
    before stays, and no temporary file is left."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO / 'examples')!r})
        import train
        from timm_gsp.errors import OutputWriteError
        from timm_gsp.utils import write_file_atomic
        folder = Path({str(tmp_path)!r})
        history = [{{"epoch": e, "train_loss": 1.0 / e, "map_at_r": 0.1 * e, "precision_at_1": 0.1,
                     "r_precision": 0.1}} for e in range(1, 4)]
        for name, write in [
            ("results.json", lambda path: write_file_atomic(path, lambda tmp: tmp.write_text("x" * 100000))),
            ("metrics.png", lambda path: train.plot_metrics(history, path)),
        ]:
            try:
                write(folder / name)
            except OutputWriteError as error:
                assert isinstance(error, OSError) and error.errno is not None
                print(error)
            else:
                print("written", name)
    """)
    (tmp_path / "results.json").write_text("earlier")
    done = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True,
                          timeout=300, preexec_fn=limit_file_size(4096))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [f"cannot write {tmp_path / 'results.json'}: File too large",
                                        f"cannot write {tmp_path / 'metrics.png'}: File too large"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    assert (tmp_path / "results.json").read_text() == "earlier"


# --- 3. a start that fails ------------------------------------------------------------------------------

def test_a_run_that_cannot_start_leaves_no_folder_and_keeps_existing_ones_as_they_were(tmp_path, capsys):
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=4)  # 2 training classes
    cannot_start = folder_args(root, "--epochs", "1", "--batch-size", "8", "--m-per-class", "2")  # 4 classes a batch

    def refused(output, *extra):
        assert train_script.main([*cannot_start, "--output", str(output), *extra]) == 1
        line = one_error_line(capsys.readouterr().err)
        assert "--batch-size 8" in line and "classes per batch" in line, line

    refused(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()  # neither the folder nor the parent it would have made
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty)
    assert list(empty.iterdir()) == []
    # a finished run and the user's own file: --overwrite that cannot start replaces nothing
    kept = tmp_path / "kept"
    assert train_script.main([*folder_args(root, "--epochs", "1"), "--output", str(kept)]) == 0
    (kept / "notes.txt").write_text("mine")
    before = snapshot(kept)
    refused(kept, "--overwrite")
    assert snapshot(kept) == before
    capsys.readouterr()
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    refused(user, "--overwrite")
    assert snapshot(user) == {"notes.txt": b"mine"}


# --- 4. the loader workers of a killed run ----------------------------------------------------------------

def _children(pid: int):
    """{pid: start time} of the live processes whose parent is ``pid`` (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found[int(entry.name)] = fields[19]
    return found


def _alive(pid: int, started: str) -> bool:
    """The process ``pid`` that started at ``started`` still runs (a zombie has ended; a new process
    under a reused pid is another one)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and fields[19] == started


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_loader_workers_of_a_sigkilled_run_exit(tmp_path):
    root = make_folder_tree(tmp_path / "data", num_classes=6, per_class=6)  # real PNG files, read by the workers
    run = subprocess.Popen([*TRAIN, *folder_args(root, "--epochs", "500", "--output", tmp_path / "run"), "--workers", "2"],
                           env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(_children(run.pid)) >= 2, 180, "2 loader workers", run)
        time.sleep(1.0)  # a moment inside the epochs
        workers = _children(run.pid)
        assert len(workers) >= 2
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
        run.stderr.close()
    # a liveness bound, not a speed threshold: torch's workers poll their parent every few seconds
    deadline = time.monotonic() + 60
    while any(_alive(pid, started) for pid, started in workers.items()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid, started in workers.items() if _alive(pid, started)], "loader workers outlived their run"
