"""The ``timm-gsp`` console script on generated images: export, embed, search, eval, show, push.

The main flow runs the installed console script in a subprocess (``pip install -e .`` puts it
next to the interpreter); the rest goes through ``timm_gsp.cli.main`` in-process, the function the
script calls, to keep the file fast. Every user error must be one line on stderr, exit status 1.
"""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import subprocess_env, torchrun
from PIL import Image
from safetensors import safe_open

import timm_gsp
from timm_gsp import RetrievalModelConfig, cli
from timm_gsp.retrieval.search import model_fingerprint, read_index
from timm_gsp.train.checkpoint import save_checkpoint
from timm_gsp.train.run_results import RunResults, read_results

NUM_CLASSES, PER_CLASS = 3, 4
METRICS = {"precision_at_1": 0.5, "recall_at_1": 0.5, "recall_at_2": 0.75, "r_precision": 0.25, "map_at_r": 0.125}
# The run's evaluation preprocessing: export must publish exactly this (merged with overrides).
DATA_CONFIG = {"input_size": [3, 64, 64], "interpolation": "bilinear", "crop_pct": 0.8}
CONFIG = RetrievalModelConfig("test_resnet", embed_dim=8, pool=timm_gsp.format_gsp_spec(num_prototypes=4),
                              data_config=DATA_CONFIG)


def _console_script() -> str:
    script = Path(sys.executable).parent / "timm-gsp"
    found = str(script) if script.exists() else shutil.which("timm-gsp")
    if not found:
        pytest.fail("the timm-gsp console script is not installed: run `pip install -e .`")
    return found


def run_cli(*args, expect=0):
    done = subprocess.run([_console_script(), *map(str, args)], capture_output=True, text=True, env=subprocess_env(),
                          timeout=300)
    assert done.returncode == expect, f"timm-gsp {' '.join(map(str, args))} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def fails(capsys, command, *args):
    """Run ``timm-gsp command args`` in-process; it must fail with one line naming the command."""
    assert cli.main([command, *map(str, args)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"timm-gsp {command}: error: ") and "\n" not in err, err
    return err


def make_images(root, num_classes=NUM_CLASSES, per_class=PER_CLASS, seed=0):
    rng = np.random.default_rng(seed)
    for label in range(num_classes):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 80, (40, 48, 3), dtype=np.uint8)
            pixels[..., label % 3] += 150
            Image.fromarray(pixels).save(folder / f"img{index}.png")
    return root


def make_run(root, images, seed=0):
    """A training run as examples/train.py writes it: checkpoint/ (model + loss / optimizer state,
    model_config.json) and results.json naming it."""
    torch.manual_seed(seed)
    model = CONFIG.build()
    training_state = {"epoch": 3, "criterion": {"proxies": torch.randn(NUM_CLASSES, 8)},
                      "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}}}}
    save_checkpoint(root / "checkpoint", model.state_dict(), training_state, model_config=CONFIG)
    RunResults(model=CONFIG, metrics=METRICS, dataset="folder", dataset_root=str(images), eval_split="all",
               checkpoint="checkpoint", recipe={"lr": 0.1, "epochs": 3}).write(root / "results.json")
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_run(root / "run", make_images(root / "images"))
    return root


@pytest.fixture(scope="module")
def exported(workspace):
    done = run_cli("export", workspace / "run", workspace / "hub", "--no-examples")
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


# --- export -------------------------------------------------------------------------------------

def test_export_takes_only_the_model_of_the_run(workspace, exported):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    with safe_open(str(exported / "model.safetensors"), framework="pt") as published, \
            safe_open(str(workspace / "run" / "checkpoint" / "model.safetensors"), framework="pt") as trained:
        assert set(published.keys()) == set(trained.keys())
        for key in trained.keys():
            assert torch.equal(published.get_tensor(key), trained.get_tensor(key))
    config = json.loads((exported / "config.json").read_text())
    assert {k: config["pretrained_cfg"][k] for k in DATA_CONFIG} == DATA_CONFIG  # the run's preprocessing
    assert config["timm_gsp"]["model_name"] == "test_resnet" and config["model_args"]["global_pool"] == CONFIG.pool
    card = (exported / "README.md").read_text()
    assert "| P@1 | 50.00 |" in card and "| MAP@R | 12.50 |" in card


def test_export_of_an_exported_folder_is_the_same_model(exported, tmp_path):
    assert cli.main(["export", str(exported), str(tmp_path / "again")]) == 0
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (exported / name).read_bytes()


def test_export_crop_pct_alone_merges_into_the_runs_data_config(workspace, tmp_path):
    assert cli.main(["export", str(workspace / "run"), str(tmp_path / "out"), "--crop-pct", "1.0", "--no-examples"]) == 0
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())["pretrained_cfg"]
    assert (cfg["input_size"], cfg["interpolation"], cfg["crop_pct"]) == ([3, 64, 64], "bilinear", 1.0)


def test_export_shows_example_pictures_of_the_runs_evaluation_data(workspace, tmp_path):
    assert cli.main(["export", str(workspace / "run"), str(tmp_path / "out")]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["README.md", "config.json", "gsp_weights.png", "model.safetensors", "retrieval.png"]
    assert "![Retrieval examples](retrieval.png)" in (tmp_path / "out" / "README.md").read_text()


def test_export_errors_are_one_line(workspace, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in fails(capsys, "export", workspace / "run", tmp_path / "file")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(workspace / "run" / "checkpoint" / "model.safetensors", bare)
    assert f"{bare} is not a model" in fails(capsys, "export", bare, tmp_path / "out")


# --- embed and search ---------------------------------------------------------------------------

def test_embed_records_the_model_and_the_classes(workspace, embedded, published_model):
    index = read_index(embedded)
    assert index.paths == sorted(str(p) for p in (workspace / "images").rglob("*.png"))
    assert index.labels == [Path(p).parent.name for p in index.paths]
    assert index.model["source"] == str(workspace / "hub")
    assert index.model["fingerprint"] == model_fingerprint(published_model)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=published_model))
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in index.paths])
    with torch.no_grad():
        expected = published_model(images)
    torch.testing.assert_close(index.embeddings, expected, rtol=1e-5, atol=1e-5)


def test_embed_labels_file(workspace, exported, tmp_path):
    images = sorted((workspace / "images" / "class0").glob("*.png"))
    (tmp_path / "labels.json").write_text(json.dumps({str(p): f"item{i % 2}" for i, p in enumerate(images)}))
    assert cli.main(["embed", *map(str, images), "--model", str(exported), "-o", str(tmp_path / "i.safetensors"),
                     "--labels", str(tmp_path / "labels.json"), "--quiet"]) == 0
    assert read_index(tmp_path / "i.safetensors").labels == ["item0", "item1", "item0", "item1"]


def test_search_ranks_by_cosine_and_finds_the_query_itself(workspace, embedded):
    query = workspace / "images" / "class1" / "img2.png"
    done = run_cli("search", query, "--index", embedded, "--top-k", 3, "--json")
    (result,) = json.loads(done.stdout)
    index = read_index(embedded)
    scores = torch.nn.functional.normalize(index.embeddings, dim=1) @ torch.nn.functional.normalize(
        index.embeddings[index.paths.index(str(query))], dim=0)
    assert [hit["path"] for hit in result["results"]] == [index.paths[i] for i in scores.topk(3).indices]
    assert result["results"][0]["path"] == str(query) and result["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert result["results"][0]["label"] == "class1"


def test_search_faiss_backend_agrees_with_exact(workspace, embedded, capsys):
    pytest.importorskip("faiss")
    results = {}
    for backend in ("exact", "faiss-flat"):
        assert cli.main(["search", str(workspace / "images" / "class2"), "--index", str(embedded), "-k", "4",
                         "--backend", backend, "--json", "--quiet"]) == 0
        results[backend] = json.loads(capsys.readouterr().out)
    for exact, approximate in zip(results["exact"], results["faiss-flat"]):
        assert [h["path"] for h in exact["results"]] == [h["path"] for h in approximate["results"]]


def test_search_refuses_an_index_built_by_another_model(workspace, embedded, tmp_path, capsys):
    other = make_run(tmp_path / "other", workspace / "images", seed=1)
    err = fails(capsys, "search", workspace / "images" / "class0" / "img0.png", "--index", embedded, "--model", other)
    assert f"was built by {workspace / 'hub'}" in err and "cannot be compared" in err


def test_search_saves_a_retrieval_sheet(workspace, embedded, tmp_path):
    out = tmp_path / "sheet.png"
    assert cli.main(["search", str(workspace / "images" / "class0" / "img1.png"), str(workspace / "images" / "class2"),
                     "--index", str(embedded), "-k", "3", "--save", str(out), "--quiet"]) == 0
    with Image.open(out) as sheet:
        assert sheet.width >= 4 * 112 and sheet.height >= 5 * 112  # 5 queries, each with 3 hits


@pytest.mark.parametrize("k", ["0", "-1"])
def test_search_top_k_must_be_positive(workspace, embedded, capsys, k):
    err = fails(capsys, "search", workspace / "images" / "class0", "--index", embedded, "--top-k", k)
    assert f"--top-k must be >= 1, got {k}" in err


def test_corrupt_index_is_one_line(workspace, tmp_path, capsys):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert str(tmp_path / "bad.safetensors") in fails(capsys, "search", workspace / "images", "--index",
                                                      tmp_path / "bad.safetensors")


def test_embed_under_torchrun_equals_one_process(workspace, exported, tmp_path):
    """Two processes (gloo), each embedding its shard; rank 0 writes one index."""
    args = ["embed", workspace / "images", "--model", exported, "--batch-size", 3, "--quiet"]
    subprocess.run(torchrun(2, "-m", "timm_gsp.cli", *args, "-o", tmp_path / "two.safetensors"), check=True,
                   env=subprocess_env(), timeout=300, capture_output=True)
    subprocess.run([sys.executable, "-m", "timm_gsp.cli", *map(str, args), "-o", str(tmp_path / "one.safetensors")],
                   check=True, env=subprocess_env(), timeout=300, capture_output=True)
    one, two = read_index(tmp_path / "one.safetensors"), read_index(tmp_path / "two.safetensors")
    assert (two.paths, two.labels, two.model) == (one.paths, one.labels, one.model)
    torch.testing.assert_close(two.embeddings, one.embeddings, rtol=1e-5, atol=1e-6)


def test_embed_refuses_to_replace_an_index(workspace, embedded, capsys):
    assert "--overwrite" in fails(capsys, "embed", workspace / "images", "--model", workspace / "hub", "-o", embedded)


# --- eval ---------------------------------------------------------------------------------------

def test_eval_reports_the_metrics_of_the_embeddings(workspace, exported, embedded):
    from timm_gsp.metrics.retrieval import RetrievalMetrics

    results_file = workspace / "eval.json"
    done = run_cli("eval", "--model", f"local-dir:{exported}", "--dataset", "folder", "--root", workspace / "images",
                   "--output", results_file, "--quiet")
    assert "| P@1 |" in done.stdout and "| MAP@R |" in done.stdout
    results = read_results(results_file)
    index = read_index(embedded)
    metric = RetrievalMetrics()
    metric.update(index.embeddings, torch.tensor([int(label[len("class"):]) for label in index.labels]))
    expected = metric.compute()
    assert results.metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert results.metrics[key] == pytest.approx(value, abs=1e-6)
    assert (results.dataset, results.eval_split, results.checkpoint) == ("folder", "all", str(exported))
    assert results.model.data_config["input_size"] == [3, 64, 64]


def test_eval_report(workspace, capsys, tmp_path):
    assert cli.main(["eval", "--model", str(workspace / "run"), "--dataset", "folder", "--root",
                     str(workspace / "images"), "--report", str(tmp_path / "report"), "--quiet"]) == 0
    names = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert names == ["gsp_weights.png", "metrics.json", "metrics.md", "retrieval.png"]
    assert "| P@1 |" in (tmp_path / "report" / "metrics.md").read_text()
    assert read_results(tmp_path / "report" / "metrics.json").dataset == "folder"


def test_eval_of_a_split_without_pairs_is_refused_as_train_py_refuses_it(workspace, tmp_path, capsys):
    lone = make_images(tmp_path / "lone", per_class=1)
    err = fails(capsys, "eval", "--model", workspace / "run", "--dataset", "folder", "--root", lone,
                "--output", tmp_path / "r.json", "--quiet")
    assert "folder/all: no class has two or more images" in err and "undefined" in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("classes", [1, 3], ids=["one-class-folder", "one-class-split"])
def test_eval_of_a_split_whose_queries_cannot_be_wrong_is_refused(workspace, tmp_path, capsys, classes):
    """One class: every neighbour is of the query's class, P@1 would be 100 % for any model."""
    images = make_images(tmp_path / "images", num_classes=classes, per_class=3)
    split = [] if classes == 1 else ["--split", "test"]  # 3 classes: 2 train, 1 test
    err = fails(capsys, "eval", "--model", workspace / "run", "--dataset", "folder", "--root", images, *split,
                "--output", tmp_path / "r.json", "--report", tmp_path / "report", "--quiet")
    assert "every query's candidates are of its own class" in err and "100 %" in err, err
    assert "class0" in err or "class2" in err  # the class, by name
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "report").exists()


def test_eval_unknown_split_is_refused_before_the_model_is_built(workspace, capsys):
    err = fails(capsys, "eval", "--model", workspace / "nowhere", "--dataset", "folder", "--root",
                workspace / "images", "--split", "bogus")
    assert "no such model" in err  # the model source is checked first, cheaply (JSON only)
    err = fails(capsys, "eval", "--model", workspace / "run", "--dataset", "folder", "--root", workspace / "images",
                "--split", "bogus")
    assert "--split bogus" in err and "unknown split 'bogus'" in err


# --- show ---------------------------------------------------------------------------------------

def test_show_writes_heat_maps(workspace, exported, tmp_path):
    assert cli.main(["show", str(workspace / "images" / "class0"), "--model", f"local-dir:{exported}",
                     "--output", str(tmp_path), "--top-prototypes", "2", "--quiet"]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert len(written) == PER_CLASS * 3 and "img0_gsp.png" in written
    assert sum(name.startswith("img0_prototype") for name in written) == 2
    with Image.open(tmp_path / "img0_gsp.png") as image:
        assert image.size == (64, 64) and image.mode == "RGB"


# --- errors -------------------------------------------------------------------------------------

def test_corrupt_model_folder_is_one_line_naming_the_path(workspace, exported, tmp_path, capsys, monkeypatch):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:100])
    args = ["embed", workspace / "images", "--model", broken, "-o", tmp_path / "x.safetensors"]
    assert f"{broken / 'model.safetensors'}: unreadable weights" in fails(capsys, *args)
    (broken / "config.json").write_text("{")
    assert f"{broken / 'config.json'} is not readable JSON" in fails(capsys, *args)
    # --debug, or TIMM_GSP_DEBUG=1, shows the traceback
    with pytest.raises(timm_gsp.ConfigError):
        cli.main(["--debug", *map(str, args)])
    monkeypatch.setenv("TIMM_GSP_DEBUG", "1")
    with pytest.raises(timm_gsp.ConfigError):
        cli.main(list(map(str, args)))


def test_bad_image_in_a_loader_worker_is_one_line(exported, tmp_path, capsys):
    images = make_images(tmp_path / "images", num_classes=1, per_class=3)
    (images / "class0" / "img1.png").write_bytes(b"not an image" * 10)
    err = fails(capsys, "embed", images, "--model", exported, "-o", tmp_path / "x.safetensors", "--workers", "2",
                "--batch-size", "1", "--quiet")
    assert "corrupt" in err and f"image {images / 'class0' / 'img1.png'}" in err
    assert "Traceback" not in err and "DataLoader worker" not in err


def test_missing_images_and_model_are_one_line(workspace, capsys):
    assert "no such file or folder" in fails(capsys, "embed", workspace / "nowhere", "-o", "x.safetensors",
                                             "--model", workspace / "hub")
    assert "no such model" in fails(capsys, "embed", workspace / "images", "-o", "x.safetensors",
                                    "--model", workspace / "nowhere")


def test_usage_mistakes_are_one_line(capsys):
    """A typo in a flag or a missing argument: argparse's message on one line, without the usage text."""
    for argv, message in ((["embed", "images", "-o", "x.safetensors", "--model", "m", "--top-kk", "3"],
                           "unrecognized arguments: --top-kk"),
                          (["embed"], "the following arguments are required"),
                          (["serch"], "invalid choice: 'serch'")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("timm-gsp") and message in err, err



def test_errors_hold_error_types_only_and_the_printer_lives_with_the_cli(capsys, monkeypatch):
    from timm_gsp import errors
    from timm_gsp.cli import support as cli_support

    assert all(issubclass(getattr(errors, name), errors.TimmGSPError) for name in errors.__all__)
    assert not hasattr(errors, "OneLineArgumentParser") and not hasattr(errors, "one_line")
    # a DataLoader worker's error: only the original message is kept, on one line
    wrapped = errors.ConfigError("Caught ConfigError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                                 "call last):\n  File x\ntimm_gsp.errors.ConfigError: bad  image size")
    assert cli_support.one_line(wrapped) == "bad image size"
    monkeypatch.delenv(cli_support.DEBUG_ENV, raising=False)
    assert not cli_support.wants_traceback() and cli_support.wants_traceback(True)
    monkeypatch.setenv(cli_support.DEBUG_ENV, "1")
    assert cli_support.wants_traceback()
    monkeypatch.setenv(cli_support.DEBUG_ENV, "false")
    assert not cli_support.wants_traceback()

def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_push_errors_are_one_line_and_leave_the_folder_unchanged(exported, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    before = _snapshot(exported)
    assert "invalid repo id" in fails(capsys, "push", exported, "not a/valid repo!", "--token", "hf_unused")
    assert "no such model folder" in fails(capsys, "push", tmp_path / "absent", "someone/model")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert "HF_HUB_OFFLINE" in fails(capsys, "push", exported, "someone/model", "--token", "hf_unused")
    # Online but not logged in: no HF_TOKEN and no stored token file.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    assert "needs a Hugging Face token" in fails(capsys, "push", exported, "someone/model", "--no-verify")
    # A token, but the upload fails (the Hub endpoint is a closed local port).
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    assert "failed" in fails(capsys, "push", exported, "someone/model", "--token", "hf_unused")
    assert _snapshot(exported) == before


# --- nothing lost under fire: non-finite embeddings, odd file names, forged indexes, full disks ----

def _nan_model(root):
    """A training checkpoint whose embedding layer holds NaN: a real model that embeds every image as NaN."""
    torch.manual_seed(0)
    state = CONFIG.build().state_dict()
    (key,) = [k for k, v in state.items() if v.dim() == 2 and v.shape[0] == CONFIG.embed_dim]
    state[key] = torch.full_like(state[key], float("nan"))
    model = CONFIG.build()
    model.load_state_dict(state)
    return save_checkpoint(root, state, {"epoch": 0}, model_config=CONFIG), model_fingerprint(model)


def test_embed_refuses_a_non_finite_embedding_naming_the_image(workspace, embedded, tmp_path, capsys):
    model, fingerprint = _nan_model(tmp_path / "nan-model")
    images = workspace / "images" / "class1"
    err = fails(capsys, "embed", images, "--model", model, "-o", tmp_path / "nan.safetensors", "--quiet")
    assert f"{images / 'img0.png'}" in err and "not finite" in err and f"{PER_CLASS} images" in err, err
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".nan*"))
    # a query the model cannot embed is named too, and no score is printed: an index of finite rows
    # recorded as this model's
    index = read_index(embedded)
    record = {"source": str(model), "fingerprint": fingerprint}
    forged = _forged_index(tmp_path / "finite.safetensors", index.embeddings.clone(), index.paths, index.labels, record)
    err = fails(capsys, "search", images / "img2.png", "--index", forged, "--quiet")
    assert f"{images / 'img2.png'}" in err and "not finite" in err, err
    assert capsys.readouterr().out == ""


def _forged_index(path, embeddings, paths, labels=None, model=None):
    """An index file written with safetensors directly: a valid header, whatever tensors it is given."""
    from safetensors.torch import save_file
    from timm_gsp.retrieval.search import INDEX_FORMAT

    def text(items):
        return torch.tensor(list(json.dumps(items).encode()), dtype=torch.uint8)

    tensors = {"embeddings": embeddings, "paths": text(paths), **({"labels": text(labels)} if labels else {})}
    save_file(tensors, str(path), metadata={"format": INDEX_FORMAT, "model": json.dumps(model)})
    return path


def test_search_refuses_an_index_of_non_finite_embeddings(workspace, embedded, tmp_path, capsys):
    index = read_index(embedded)
    rows = index.embeddings.clone()
    rows[1, 0], rows[4, 3] = float("nan"), float("inf")
    bad = _forged_index(tmp_path / "nan.safetensors", rows, index.paths, index.labels, index.model)
    err = fails(capsys, "search", workspace / "images" / "class0" / "img0.png", "--index", bad, "--quiet")
    assert str(bad) in err and "2 of 12" in err and "not finite" in err, err
    assert "nan" not in capsys.readouterr().out


@pytest.mark.parametrize("forgery,message", [
    ("rows", "11 paths for 12 embeddings"),
    ("labels", "13 labels for 12 embeddings"),
    ("model-list", "the model record is not a JSON object"),
    ("empty", "holds no embeddings"),
])
def test_a_forged_index_is_one_line_naming_the_file(workspace, embedded, tmp_path, capsys, forgery, message):
    index = read_index(embedded)
    rows, paths, labels, model = index.embeddings.clone(), index.paths, index.labels, index.model
    if forgery == "rows":
        paths = paths[:-1]
    elif forgery == "labels":
        labels = labels + ["class0"]
    elif forgery == "model-list":
        model = [model]
    elif forgery == "empty":
        rows, paths, labels = rows[:0], [], None
    bad = _forged_index(tmp_path / f"{forgery}.safetensors", rows, paths, labels, model)
    err = fails(capsys, "search", workspace / "images" / "class0" / "img0.png", "--index", bad, "--quiet")
    assert str(bad) in err and message in err, err


ODD_NAMES = ["two\nlines.png", "tab\there.png", "esc\x1b[31mred.png", "back\\slash 'quoted'.png"]


def test_printable_path_escapes_control_characters_as_the_shell_reads_them_back():
    from timm_gsp.cli.support import printable_path

    assert printable_path("/data/ïmage 1.png") == "/data/ïmage 1.png"  # printable: as it is
    assert printable_path("two\nlines.png") == "$'two\\nlines.png'"
    assert printable_path("esc\x1b[31mred.png") == "$'esc\\x1b[31mred.png'"
    assert printable_path("back\\slash\n'quoted'") == "$'back\\\\slash\\n\\'quoted\\''"
    assert printable_path(ODD_NAMES[-1]) == ODD_NAMES[-1]  # printable: not quoted, even with \\ and '
    names = [*ODD_NAMES[:-1], "back\\slash\n'quoted'.png", "bytes-\udcff-not-utf8.png", "nel\x85 ls\u2028.png"]
    for name in names:
        shown = printable_path(name)
        assert shown.isprintable() and shown.startswith("$'") and "\n" not in shown
        # bash reads the printed form back as the very same file name (bytes)
        done = subprocess.run(["bash", "-c", f"printf %s {shown}"], capture_output=True, check=True)
        assert done.stdout == os.fsencode(name), name


def test_search_prints_one_line_per_hit_whatever_the_file_names(exported, tmp_path, capsys):
    from timm_gsp.cli.support import printable_path

    folder = tmp_path / "odd\nfolder" / "class0"
    folder.mkdir(parents=True)
    for index, name in enumerate(ODD_NAMES):
        pixels = np.full((40, 48, 3), 60 * index, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, format="PNG")
    out = tmp_path / "odd\nfolder" / "index.safetensors"
    assert cli.main(["embed", str(folder), "--model", str(exported), "-o", str(out), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and printable_path(str(out)) in said
    paths = sorted(str(folder / name) for name in ODD_NAMES)
    assert cli.main(["search", str(folder), "--index", str(out), "-k", "4", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 * (1 + 4)  # each query, then its 4 hits, one line each
    queries = [line for line in lines if not line.startswith(" ")]
    assert queries == [printable_path(path) for path in paths]
    hits = [line.split(None, 2)[2] for line in lines if line.startswith(" ")]
    assert sorted(set(hits)) == sorted(printable_path(path) for path in paths)
    # --json keeps every name as it is
    assert cli.main(["search", str(folder), "--index", str(out), "-k", "4", "--quiet", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [item["query"] for item in results] == paths
    assert all(sorted(hit["path"] for hit in item["results"]) == paths for item in results)


def test_the_cli_takes_its_device_from_the_distributed_module():
    from timm_gsp.cli.inputs import device
    from timm_gsp.train.distributed import local_device

    for source in Path(cli.__file__).parent.glob("*.py"):  # one owner of that fact: timm_gsp.train.distributed
        assert "LOCAL_RANK" not in source.read_text(), source.name
    args = cli.build_parser().parse_args(["show", "x.png", "--model", "m", "-o", "out"])
    assert device(args) == local_device()
    args.device = "cpu"
    assert device(args) == torch.device("cpu")


def _limited(limit):
    """A child process whose files cannot grow past ``limit`` bytes: a write beyond fails with EFBIG
    ("File too large"), as on a full disk (SIGXFSZ ignored, so the write fails instead of killing it)."""
    def start():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return start


def run_limited(limit, *args):
    return subprocess.run([_console_script(), *map(str, args)], capture_output=True, text=True, env=subprocess_env(),
                          timeout=300, preexec_fn=_limited(limit))


def test_embed_that_cannot_write_its_index_is_one_line_and_leaves_nothing(workspace, exported, tmp_path):
    out = tmp_path / "out" / "gallery.safetensors"
    done = run_limited(1024, "embed", workspace / "images", "--model", exported, "-o", out, "--quiet")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("timm-gsp embed: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert str(out) in done.stderr and "File too large" in done.stderr
    assert not out.parent.exists() or not list(out.parent.iterdir())  # no index, no temporary file


@pytest.mark.parametrize("command", ["search", pytest.param("eval", marks=pytest.mark.slow), "show"])
def test_a_picture_that_cannot_be_written_is_one_line(workspace, exported, embedded, tmp_path, command):
    out = tmp_path / "out"
    if command == "search":
        args = ["search", workspace / "images" / "class0", "--index", embedded, "--save", out / "sheet.png"]
    elif command == "eval":  # metrics.json and metrics.md fit, the pictures do not
        args = ["eval", "--model", exported, "--dataset", "folder", "--root", workspace / "images", "--report", out]
    else:
        args = ["show", workspace / "images" / "class0" / "img0.png", "--model", exported, "-o", out]
    done = run_limited(1024 if command == "show" else 16384, *args, "--quiet")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"timm-gsp {command}: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert str(out) in done.stderr and "File too large" in done.stderr
    assert not [p.name for p in out.rglob("*.png")], "a partial picture was left"
