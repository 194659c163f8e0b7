"""The ``timm-gsp`` console script on generated images: export, embed, search, eval, show, push.

The main flows run the installed console script in a subprocess (``pip install -e .`` puts it
next to the interpreter); error messages (push included: no upload can succeed here) are checked
through ``timm_gsp.cli.main`` in-process, the function the script calls, to keep the file fast.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open

import timm_gsp
from timm_gsp import cli
from timm_gsp.checkpoint import save_checkpoint

NUM_CLASSES, PER_CLASS = 3, 4
RESULTS = {
    "metrics": {"precision_at_1": 0.5, "recall_at_1": 0.5, "recall_at_2": 0.75, "r_precision": 0.25, "map_at_r": 0.125},
    # examples/train.py's arguments: export rebuilds the architecture from them; img_size is the
    # run's preprocessing size there (not a model argument) and becomes the published input size.
    "config": {"model": "resnet10t", "pool": "gsp", "embed_dim": 8, "num_prototypes": 4, "transport_ratio": 0.3,
               "gamma": 5.0, "dataset": "folder", "img_size": 64},
    "eval_split": "test",
}


def _console_script() -> str:
    script = Path(sys.executable).parent / "timm-gsp"
    found = str(script) if script.exists() else shutil.which("timm-gsp")
    if not found:
        pytest.fail("the timm-gsp console script is not installed: run `pip install -e .`")
    return found


def run_cli(*args, env=None, expect=0):
    environment = dict(os.environ, HF_HUB_OFFLINE="1") if env is None else env
    done = subprocess.run([_console_script(), *map(str, args)], capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == expect, f"timm-gsp {' '.join(map(str, args))} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Generated class folders (a colour per class), a training checkpoint folder as the training
    script writes it (model + loss/optimizer state) and the run's results.json one level up."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    for label in range(NUM_CLASSES):
        folder = root / "images" / f"class{label}"
        folder.mkdir(parents=True)
        for index in range(PER_CLASS):
            pixels = rng.integers(0, 80, (40, 48, 3), dtype=np.uint8)
            pixels[..., label] += 150
            Image.fromarray(pixels).save(folder / f"img{index}.png")
    torch.manual_seed(0)
    model = timm_gsp.create_model("resnet10t", embed_dim=8, num_prototypes=4)
    training_state = {"epoch": 3, "criterion": {"proxies": torch.randn(NUM_CLASSES, 8)},
                      "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}}}}
    save_checkpoint(root / "run" / "checkpoint", model.state_dict(), training_state)
    (root / "run" / "results.json").write_text(json.dumps(RESULTS))
    return root


@pytest.fixture(scope="module")
def exported(workspace):
    done = run_cli("export", workspace / "run" / "checkpoint", workspace / "hub")
    assert "results.json" in done.stdout
    return workspace / "hub"


@pytest.fixture(scope="module")
def published_model(exported):
    return timm.create_model(f"local-dir:{exported}", pretrained=True).eval()


@pytest.fixture(scope="module")
def embedded(workspace, exported):
    output = workspace / "gallery.safetensors"
    done = run_cli("embed", workspace / "images", "--model", f"local-dir:{exported}", "--output", output, "--batch-size", 5)
    assert "embed" in done.stderr  # the tqdm progress bar
    return output


def test_export_takes_only_the_model_from_a_training_checkpoint(workspace, exported):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    with safe_open(str(exported / "model.safetensors"), framework="pt") as published, \
            safe_open(str(workspace / "run" / "checkpoint" / "model.safetensors"), framework="pt") as trained:
        assert set(published.keys()) == set(trained.keys())
        for key in trained.keys():
            assert torch.equal(published.get_tensor(key), trained.get_tensor(key))
    config = json.loads((exported / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, 64, 64]  # the run's preprocessing
    assert timm_gsp.parse_gsp_spec(config["model_args"]["global_pool"])["num_prototypes"] == 4
    card = (exported / "README.md").read_text()
    assert "| P@1 | 50.00 |" in card and "| MAP@R | 12.50 |" in card


def test_export_of_an_exported_folder_is_the_same_model(exported, tmp_path):
    assert cli.main(["export", str(exported), str(tmp_path / "again")]) == 0
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (exported / name).read_bytes()


def test_embed_matches_the_model(workspace, embedded, published_model):
    embeddings, paths, source = cli.read_embeddings(str(embedded))
    assert paths == sorted(str(p) for p in (workspace / "images").rglob("*.png"))
    assert source["model"].startswith("local-dir:")
    config = timm.data.resolve_data_config(model=published_model)
    transform = timm.data.create_transform(**config)
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        expected = published_model(images)
    torch.testing.assert_close(embeddings, expected, rtol=1e-5, atol=1e-5)


def test_search_ranks_by_cosine_and_finds_the_query_itself(workspace, embedded):
    query = workspace / "images" / "class1" / "img2.png"
    done = run_cli("search", query, "--index", embedded, "--top-k", 3, "--json")
    (result,) = json.loads(done.stdout)
    gallery, paths, _ = cli.read_embeddings(str(embedded))
    scores = torch.nn.functional.normalize(gallery, dim=1) @ torch.nn.functional.normalize(gallery[paths.index(str(query))], dim=0)
    assert [hit["path"] for hit in result["results"]] == [paths[i] for i in scores.topk(3).indices]
    assert result["results"][0]["path"] == str(query) and result["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_eval_reports_the_metrics_of_the_embeddings(workspace, exported, embedded):
    from timm_gsp.metrics import RetrievalMetrics

    results_file = workspace / "eval.json"
    done = run_cli("eval", "--model", f"local-dir:{exported}", "--dataset", "folder", "--root", workspace / "images",
                   "--output", results_file, "--quiet")
    assert "| P@1 |" in done.stdout and "| MAP@R |" in done.stdout
    results = json.loads(results_file.read_text())
    embeddings, paths, _ = cli.read_embeddings(str(embedded))
    labels = torch.tensor([int(Path(p).parent.name[len("class"):]) for p in paths])
    metric = RetrievalMetrics()
    metric.update(embeddings, labels)
    expected = metric.compute()
    assert results["metrics"].keys() == expected.keys()
    for key, value in expected.items():
        assert results["metrics"][key] == pytest.approx(value, abs=1e-6)
    assert results["config"]["dataset"] == "folder" and results["config"]["split"] == "all"


def test_show_writes_heat_maps(workspace, exported, tmp_path):
    run_cli("show", workspace / "images" / "class0", "--model", f"local-dir:{exported}", "--output", tmp_path,
            "--top-prototypes", 2, "--quiet")
    written = sorted(p.name for p in tmp_path.iterdir())
    assert len(written) == PER_CLASS * 3 and "img0_gsp.png" in written
    assert sum(name.startswith("img0_prototype") for name in written) == 2
    with Image.open(tmp_path / "img0_gsp.png") as image:
        assert image.size == (64, 64) and image.mode == "RGB"


# --- error messages, through the script's main() in-process ---------------------------------

def test_mismatched_checkpoint_names_both_shapes(workspace, capsys):
    status = cli.main(["embed", str(workspace / "images"), "--output", str(workspace / "x.safetensors"),
                       "--model", "resnet10t", "--embed-dim", "8", "--num-prototypes", "6",
                       "--checkpoint", str(workspace / "run" / "checkpoint")])
    assert status == 1
    error = capsys.readouterr().err
    assert "(4, 512) (4 prototypes of 512 channels)" in error and "(6, 512) (6 prototypes of 512 channels)" in error


def test_export_needs_to_know_the_architecture(workspace, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(workspace / "run" / "checkpoint" / "model.safetensors", bare)
    assert cli.main(["export", str(bare), str(tmp_path / "out")]) == 1
    assert "cannot tell the architecture" in capsys.readouterr().err
    # ... which --model and its flags give
    assert cli.main(["export", str(bare), str(tmp_path / "out"), "--model", "resnet10t", "--embed-dim", "8",
                     "--num-prototypes", "4"]) == 0


def test_push_fails_clearly_offline_and_without_token(exported, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert cli.main(["push", str(exported), "someone/model", "--token", "hf_unused"]) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    # Online but not logged in: no HF_TOKEN and no stored token file.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["push", str(exported), "someone/model", "--no-verify"]) == 1
    assert "needs a Hugging Face token" in capsys.readouterr().err
    assert "<namespace>/<model-name>" in (exported / "README.md").read_text()  # the folder is untouched


def test_timm_name_without_weights_and_missing_images_are_refused(workspace, capsys):
    assert cli.main(["embed", str(workspace / "images"), "-o", "x.npy", "--model", "resnet10t"]) == 1
    assert "needs --checkpoint" in capsys.readouterr().err
    assert cli.main(["embed", str(workspace / "nowhere"), "-o", "x.npy", "--model", "local-dir:x"]) == 1
    assert "no such file or folder" in capsys.readouterr().err


def test_npy_embeddings_keep_their_paths(tmp_path):
    embeddings = torch.randn(3, 5)
    source = {"model": "local-dir:m", "checkpoint": None}
    cli.write_embeddings(str(tmp_path / "e.npy"), embeddings, ["a.png", "b.png", "c.png"], source)
    loaded, paths, model = cli.read_embeddings(str(tmp_path / "e.npy"))
    assert torch.equal(loaded, embeddings) and paths == ["a.png", "b.png", "c.png"] and model == source
