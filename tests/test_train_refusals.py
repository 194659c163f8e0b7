"""examples/train.py refuses, in one line, what would give a number that measures nothing or a screen of
warnings: an evaluation split whose queries cannot be wrong (the same check as ``timm-gsp eval``), and a
pickle file as --pretrained-path (the real command, its whole stderr)."""
import pickle
import subprocess
import sys

import pytest

import timm_gsp
from timm_gsp import RetrievalModelConfig, cli
from timm_gsp.train.checkpoint import save_checkpoint

from conftest import REPO, subprocess_env
from fixtures_data import make_folder_tree

sys.path.insert(0, str(REPO / "examples"))
import train as train_script  # noqa: E402

TINY = ["--model", "test_resnet", "--no-pretrained", "--img-size", "32", "--embed-dim", "8", "--num-prototypes", "4",
        "--batch-size", "4", "--m-per-class", "2", "--workers", "0", "--no-progress"]


def test_a_test_split_of_one_class_is_refused_as_timm_gsp_eval_refuses_it(tmp_path, capsys):
    # 3 classes: 2 train the model, the test split holds 1: every neighbour of every query is of its class
    root = make_folder_tree(tmp_path / "data", num_classes=3, per_class=4)
    output = tmp_path / "run"
    assert train_script.main([*TINY, "--dataset", "folder", "--data-dir", str(root), "--epochs", "1",
                              "--output", str(output)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: error: folder/test: every query's candidates are of its own class") and "\n" not in err
    assert "class_02" in err and "100 %" in err
    assert not (output / "results.json").exists()
    # the same split, the same words from the evaluation command: one check, in the library
    run = tmp_path / "checkpoint"  # a tiny model folder to evaluate
    config = RetrievalModelConfig("test_resnet", embed_dim=8, pool=timm_gsp.format_gsp_spec(num_prototypes=4))
    save_checkpoint(run, config.build().state_dict(), {"epoch": 0}, model_config=config)
    assert cli.main(["eval", "--model", str(run), "--dataset", "folder", "--root", str(root), "--split", "test",
                     "--quiet"]) == 1
    said = capsys.readouterr().err.strip()
    assert said.startswith("timm-gsp eval: error: ") and "\n" not in said
    core = err[len("train.py: error: "):].split(";")[0]
    assert said[len("timm-gsp eval: error: "):].split(";")[0] == core


class _Runs:
    """Pickles a call to ``print``: loading it with plain pickle would print; timm-gsp must never run it."""

    def __reduce__(self):
        return print, ("CODE RAN",)


@pytest.mark.parametrize("content", ["code", "plain"])
def test_a_pickle_as_pretrained_path_is_exactly_one_line(tmp_path, content):
    """A pickle file (not a torch zip file: torch's reader warns about its protocol before refusing it)."""
    weights = tmp_path / "weights.pth"
    value = _Runs() if content == "code" else {"conv.weight": [[0.5, 1.0]]}
    weights.write_bytes(pickle.dumps(value, protocol=4))
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=2)
    done = subprocess.run([sys.executable, str(REPO / "examples" / "train.py"), *TINY, "--pretrained-path", str(weights),
                           "--dataset", "folder", "--data-dir", str(root), "--epochs", "1",
                           "--output", str(tmp_path / "run")],
                          capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert done.returncode in (1, 2), done.stderr  # a user error (2: train.py checks the file as it parses its flags)
    assert done.stderr.count("\n") == 1, done.stderr  # one line, and nothing above it
    assert done.stderr.startswith(f"train.py: error: --pretrained-path {weights}: ") or \
        done.stderr.startswith(f"train.py: error: {weights}: "), done.stderr
    assert "CODE RAN" not in done.stdout + done.stderr
