"""examples/train.py end to end on fixture trees: every official layout, resume, a real 2-process DDP job."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import timm_gsp
from timm_gsp.data import build_dataset, build_transforms
from timm_gsp.evaluate import evaluate_retrieval

from fixtures_data import make_fixture_tree

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
import train as train_script  # noqa: E402

TINY = ["--model", "test_resnet", "--img-size", "32", "--embed-dim", "8", "--num-prototypes", "4",
        "--batch-size", "4", "--m-per-class", "2", "--workers", "0", "--no-progress", "--lr", "1e-3"]


def run_train(tmp_path, *args):
    output = tmp_path / "run"
    train_script.main([*TINY, "--output", str(output), *args])
    return output


@pytest.mark.parametrize("dataset", ["cub", "cars", "sop", "inshop", "folder"])
def test_trains_on_each_layout_and_writes_results(dataset, tmp_path):
    kwargs = {"per_item": 4} if dataset == "inshop" else {"per_class": 4} if dataset != "sop" else {"per_class": 4}
    root = make_fixture_tree(dataset, tmp_path / "data", **kwargs)
    output = run_train(tmp_path, "--dataset", dataset, "--data-dir", str(root), "--epochs", "1")
    results = json.loads((output / "results.json").read_text())
    for key in ("precision_at_1", "recall_at_1", "recall_at_8", "r_precision", "map_at_r"):
        assert 0.0 <= results["metrics"][key] <= 1.0
    assert results["config"]["dataset"] == dataset and results["config"]["model"] == "test_resnet"
    assert results["eval_split"] == ("query+gallery" if dataset == "inshop" else "test")
    for name in ("metrics.png", "gsp_weights.png", "metrics.jsonl", "checkpoint/model.safetensors"):
        assert (output / name).is_file(), name
    assert not list(output.glob(".checkpoint*")), "temporary checkpoint folders left behind"


def test_gap_baseline_and_validation_split(tmp_path):
    root = make_fixture_tree("folder", tmp_path / "data", num_classes=8, per_class=4)
    output = run_train(tmp_path, "--dataset", "folder", "--data-dir", str(root), "--epochs", "1", "--pool", "gap",
                       "--val-fraction", "0.5")
    results = json.loads((output / "results.json").read_text())
    assert results["eval_split"] == "val"
    assert not (output / "gsp_weights.png").exists()
    state = load_file(str(output / "checkpoint" / "model.safetensors"))
    assert not any(k.endswith("prototypes") for k in state)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    root = make_fixture_tree("folder", tmp_path / "data", num_classes=4, per_class=8)
    common = ["--dataset", "folder", "--data-dir", str(root), "--epochs", "3", "--loss", "proxyanchor"]
    straight = run_train(tmp_path / "a", *common)
    interrupted = tmp_path / "b" / "run"
    train_script.main([*TINY, "--output", str(interrupted), *common, "--stop-after-epoch", "1"])
    assert json.loads((interrupted / "checkpoint" / "training_state.json").read_text())
    assert not (interrupted / "results.json").exists()
    train_script.main([*TINY, "--output", str(interrupted), *common, "--resume"])
    a = load_file(str(straight / "checkpoint" / "model.safetensors"))
    b = load_file(str(interrupted / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ra = json.loads((straight / "results.json").read_text())["metrics"]
    rb = json.loads((interrupted / "results.json").read_text())["metrics"]
    assert ra == rb


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_job_matches_single_process_evaluation(tmp_path):
    root = make_fixture_tree("folder", tmp_path / "data", num_classes=8, per_class=6)
    output = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(REPO / "examples" / "train.py"), *TINY,
               "--dataset", "folder", "--data-dir", str(root), "--epochs", "2", "--output", str(output)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((output / "results.json").read_text())
    assert results["world_size"] == 2
    # The same weights evaluated in this single process give the metrics the two ranks gathered.
    config = results["config"]
    model = timm_gsp.create_model(config["model"], embed_dim=config["embed_dim"], num_prototypes=config["num_prototypes"],
                                  transport_ratio=config["transport_ratio"], gamma=config["gamma"])
    model.load_state_dict(load_file(str(output / "checkpoint" / "model.safetensors")))
    test_set = build_dataset("folder", root, "test", build_transforms(model, False, input_size=32))
    single = evaluate_retrieval(model, {"test": test_set}, batch_size=4, progress=False)
    for key, value in results["metrics"].items():
        assert single[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("recipe", ["collage", "cub", "cars", "sop", "inshop"])
def test_recipes_parse(recipe):
    args = train_script.parse_args(["--recipe", recipe])
    assert args.dataset in ("collage", "cub", "cars", "sop", "inshop")
    assert args.backbone_lr is not None and args.prototype_lr is not None


def test_bad_configuration_is_reported(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: cub\nmodel: resnet50\nnot_an_option: 1\n")
    with pytest.raises(SystemExit):
        train_script.parse_args(["--recipe", str(bad)])
    assert "not_an_option" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_script.parse_args(["--batch-size", "6", "--m-per-class", "4"])
    assert "multiple" in capsys.readouterr().err


def test_wrong_dataset_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        run_train(tmp_path, "--dataset", "cub", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1")
