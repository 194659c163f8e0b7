"""Publishing and reloading GSP retrieval models in timm's hub format (timm_gsp.hub.published).

Round trips train a few steps (so the prototypes have moved), save with ``save_pretrained`` and
reload with nothing but timm in a fresh Python process, offline; embeddings must be identical.
``load_model`` reads every kind of model source strictly; broken folders fail naming the path.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
import timm
import torch
import yaml
from conftest import subprocess_env
from pytorch_metric_learning.losses import ProxyAnchorLoss
from safetensors import safe_open
from safetensors.torch import save_file

import timm_gsp
from timm_gsp import CheckpointMismatchError, ConfigError, HubUnavailableError, RetrievalModelConfig, gsp_modules
from timm_gsp.hub.model_sources import find_model, load_model
from timm_gsp.hub.published import PUBLISHED_FILES, load_state_dict, read_state_dict, save_pretrained
from timm_gsp.hub.transfer import push_to_hub, upload_folder
from timm_gsp.loss.zsr import GSPMetricLoss
from timm_gsp.train.checkpoint import save_checkpoint
from timm_gsp.train.run_results import RunResults

NUM_CLASSES = 3
SPEC = timm_gsp.format_gsp_spec(num_prototypes=4)
METRICS = {"precision_at_1": 0.6172, "recall_at_1": 0.6172, "recall_at_2": 0.7346, "recall_at_4": 0.8231,
           "recall_at_8": 0.8895, "r_precision": 0.3318, "map_at_r": 0.2187}
RECIPE = {"dataset": "cub", "model": "test_resnet", "embed_dim": 8, "lr": 1e-4, "epochs": 2, "zsr_weight": 0.1,
          "data_dir": "/home/someone/data/CUB_200_2011"}
# case -> (timm name, model_kwargs, input size): a native CNN, a native ViT and a wrapped family.
MODELS = {
    "cnn": ("test_resnet", {}, 64),
    "vit": ("test_vit", {"img_size": 64}, 64),
    "wrapped": ("xcit_nano_12_p16_224", {"img_size": 32}, 32),
}


def describe(case, **data_config):
    name, kwargs, size = MODELS[case]
    return RetrievalModelConfig(name, embed_dim=8, pool=SPEC, model_kwargs=kwargs,
                                data_config={"input_size": [3, size, size], **data_config})


def results_for(config):
    return RunResults(model=config, metrics=METRICS, dataset="cub", eval_split="test", checkpoint="checkpoint",
                      recipe=RECIPE)


def train_briefly(config, steps=2):
    """A GSP model after a few SGD steps of a proxy loss + ZSR on random images, and its criterion."""
    torch.manual_seed(0)
    model = config.build()
    criterion = GSPMetricLoss(ProxyAnchorLoss(NUM_CLASSES, 8), model, num_classes=NUM_CLASSES)
    optimizer = torch.optim.SGD([*model.parameters(), *criterion.parameters()], lr=0.5)
    images = torch.randn(2 * NUM_CLASSES, *config.input_size)
    labels = torch.arange(NUM_CLASSES).repeat(2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        criterion(model(images), labels).backward()
        optimizer.step()
    return model.eval(), criterion


# Loads each source with plain timm (+ import timm_gsp) and writes its embeddings of the input.
RELOAD_SCRIPT = """
import json, sys, torch, timm, timm_gsp
from safetensors.torch import load_file, save_file
for source, inputs, output in json.loads(sys.argv[1]):
    model = timm.create_model(source, pretrained=True).eval()
    with torch.no_grad():
        save_file({"y": model(load_file(inputs)["x"])}, output)
"""


def reload_in_fresh_process(jobs, env):
    """``jobs``: [(source, input file, output file)]; one new interpreter for all (start-up is slow)."""
    env = {k: v for k, v in env.items() if k != "HF_TOKEN"}
    subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, json.dumps([[str(a) for a in job] for job in jobs])],
                   check=True, env=env, timeout=300)
    outputs = []
    for _, _, output in jobs:
        with safe_open(str(output), framework="pt") as f:
            outputs.append(f.get_tensor("y"))
    return outputs


def populate_hub_cache(cache, repo_id, folder):
    """The layout a download leaves in the Hugging Face cache: refs/main -> snapshots/<commit>/files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in PUBLISHED_FILES:
        (snapshot / name).write_bytes((folder / name).read_bytes())


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """case -> (model, criterion, config, folder, input x); every case published with save_pretrained."""
    root = tmp_path_factory.mktemp("hub")
    cases = {}
    for case in MODELS:
        config = describe(case)
        model, criterion = train_briefly(config)
        folder = save_pretrained(model, root / case, results_for(config), repo_id="timm-gsp-test/tiny")
        x = torch.randn(3, *config.input_size)
        cases[case] = (model, criterion, config, folder, x)
    return cases


@pytest.fixture(scope="module")
def reloaded(published, tmp_path_factory):
    """case -> embeddings of the published folder reloaded by plain timm in a fresh process, plus
    "hf-hub": the CNN loaded through ``hf-hub:`` from an offline cache."""
    root = tmp_path_factory.mktemp("reload")
    jobs = []
    for case, (_, _, _, folder, x) in published.items():
        save_file({"x": x}, str(root / f"{case}-x.safetensors"))
        jobs.append((f"local-dir:{folder}", root / f"{case}-x.safetensors", root / f"{case}-y.safetensors"))
    populate_hub_cache(root / "cache", "timm-gsp-test/tiny", published["cnn"][3])
    jobs.append(("hf-hub:timm-gsp-test/tiny", root / "cnn-x.safetensors", root / "hub-y.safetensors"))
    outputs = reload_in_fresh_process(jobs, subprocess_env(HF_HUB_CACHE=str(root / "cache")))
    return dict(zip([*published, "hf-hub"], outputs))


@pytest.fixture(scope="module")
def cnn(published):
    return published["cnn"]


def test_training_moved_the_prototypes(cnn):
    model, _, config, *_ = cnn
    torch.manual_seed(0)
    (_, pool), = gsp_modules(model)
    (_, fresh_pool), = gsp_modules(config.build())
    assert not torch.equal(pool.prototypes, fresh_pool.prototypes)


def embed_single_threaded(model, x):
    """``model(x)`` on one thread, as the fresh process runs (``conftest.subprocess_env``): a convolution's
    float sums depend on how its work is split between threads, so bit equality needs the same count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("case", ["cnn", "vit", "wrapped", "hf-hub"])
def test_round_trip_is_bit_exact_in_a_fresh_process(published, reloaded, case):
    model, _, config, _, x = published["cnn" if case == "hf-hub" else case]
    assert torch.equal(reloaded[case], embed_single_threaded(model, x))


@pytest.mark.parametrize("case", ["cnn", "vit", "wrapped"])
def test_config_records_the_description_and_explicit_model_args(published, case):
    model, _, config, folder, _ = published[case]
    written = json.loads((folder / "config.json").read_text())
    args = written["model_args"]
    if case == "wrapped":
        assert written["architecture"] == "gsp_retrieval" and args["backbone"] == config.model_name
        assert args["backbone_args"] == config.model_kwargs
    else:
        assert written["architecture"] == config.model_name
        assert args["num_classes"] == 8 and args.get("img_size") == config.model_kwargs.get("img_size")
    # the pool string, even for a token model whose head timm reads as unpooled
    assert args["global_pool"] == written["global_pool"] == SPEC
    assert written["timm_gsp"] == dataclasses.replace(config, data_config=written["timm_gsp"]["data_config"]).to_dict()
    cfg = written["pretrained_cfg"]
    assert cfg["input_size"] == list(config.input_size) == written["timm_gsp"]["data_config"]["input_size"]
    assert cfg["interpolation"] and len(cfg["mean"]) == len(cfg["std"]) == 3 and cfg["crop_pct"]


def test_published_folder_holds_the_model_state_only(cnn, tmp_path):
    model, criterion, config, *_ = cnn
    folder = save_pretrained(model, tmp_path / "published", model_config=config)
    assert sorted(p.name for p in folder.iterdir()) == sorted(PUBLISHED_FILES)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        for key in keys:
            assert torch.equal(f.get_tensor(key), model.state_dict()[key])
    assert keys == set(model.state_dict())
    training_only = set(criterion.state_dict())
    assert training_only and not keys & training_only  # proxies and ZSR class embeddings stay out
    umask = os.umask(0o022)
    os.umask(umask)
    for path in folder.iterdir():  # readable like any file the user writes (safetensors alone writes 0600)
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name


def test_data_config_merges_into_the_description(cnn, tmp_path):
    model, _, config, *_ = cnn
    run = results_for(describe("cnn", crop_pct=0.9, interpolation="bilinear"))
    folder = save_pretrained(model, tmp_path / "p", run, data_config={"crop_pct": 1.0})
    cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
    # crop_pct replaced; the run's input size and interpolation kept
    assert (cfg["input_size"], cfg["crop_pct"], cfg["interpolation"]) == ([3, 64, 64], 1.0, "bilinear")


def test_model_card_carries_the_results(cnn, tmp_path):
    model, _, config, *_ = cnn
    results_path = results_for(config).write(tmp_path / "results.json")
    folder = save_pretrained(model, tmp_path / "published", results_path, repo_id="someone/gsp-resnet-cub")
    card = (folder / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "timm" and meta["license"] == "apache-2.0"
    assert {"image-retrieval", "metric-learning", "timm-gsp"} <= set(meta["tags"])
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"] == {"type": "cub", "name": "CUB-200-2011", "split": "test"}
    assert {m["type"]: m["value"] for m in result["metrics"]} == METRICS  # exact values
    for label, key in [("P@1", "precision_at_1"), ("R@4", "recall_at_4"), ("R-Precision", "r_precision"), ("MAP@R", "map_at_r")]:
        assert f"| {label} | {100 * METRICS[key]:.2f} |" in body
    assert "| zsr_weight | 0.1 |" in body  # the recipe ...
    assert "/home/someone" not in body  # ... without local paths
    assert 'timm.create_model("hf-hub:someone/gsp-resnet-cub", pretrained=True)' in body
    assert "2308.09228" in body and "Generalized Sum Pooling for Metric Learning" in body and "ICCV" in body
    assert SPEC in body and "executes no code" in body and "retrieval.png" not in body


def test_card_without_results_or_repo_and_undefined_metrics(cnn, tmp_path):
    model, _, config, *_ = cnn
    card = (save_pretrained(model, tmp_path / "p", model_config=config) / "README.md").read_text()
    assert "No evaluation results" in card and "model-index" not in card and "<namespace>/<model-name>" in card
    undefined = RunResults(model=config, metrics={"precision_at_1": float("nan")}, dataset="cub")
    card = (save_pretrained(model, tmp_path / "q", undefined) / "README.md").read_text()
    assert "| P@1 | n/a |" in card and "model-index" not in card


def test_card_shows_example_pictures_of_the_evaluation_data(cnn, tmp_path, folder_tree):
    from PIL import Image

    from timm_gsp.data import build_dataset, build_eval_transform

    model, _, config, *_ = cnn
    data = build_dataset("folder", folder_tree(num_classes=3, per_class=3), "all", build_eval_transform(config.data_config))
    folder = save_pretrained(model, tmp_path / "p", results_for(config), eval_dataset=data)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*PUBLISHED_FILES, "retrieval.png", "gsp_weights.png"])
    card = (folder / "README.md").read_text()
    assert "![Retrieval examples](retrieval.png)" in card and "![GSP pooling weights](gsp_weights.png)" in card
    for name in ("retrieval.png", "gsp_weights.png"):
        with Image.open(folder / name) as image:
            assert image.width > 100 and image.height > 100


def _edit_config(folder, edit):
    written = json.loads((folder / "config.json").read_text())
    edit(written)
    (folder / "config.json").write_text(json.dumps(written))
    return folder


def _other_prototype_count(written):
    written["global_pool"] = written["model_args"]["global_pool"] = timm_gsp.format_gsp_spec(num_prototypes=6)


def test_config_prototype_count_that_disagrees_with_the_weights_is_refused(cnn, tmp_path):
    folder = _edit_config(save_pretrained(cnn[0], tmp_path / "p", model_config=cnn[2]), _other_prototype_count)
    with pytest.raises(CheckpointMismatchError, match=r"prototypes: \(4, 96\) \(4 prototypes.*\(6, 96\) \(6 prototypes"):
        load_model(folder)


def test_timm_load_refuses_a_config_with_another_prototype_count(cnn, tmp_path):
    folder = _edit_config(save_pretrained(cnn[0], tmp_path / "p", model_config=cnn[2]), _other_prototype_count)
    with pytest.raises(RuntimeError, match=r"prototypes.*\[4, 96\].*\[6, 96\]"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_config_embedding_size_that_disagrees_with_the_weights_is_refused(cnn, tmp_path):
    """A config.json whose model_args.num_classes alone is edited (8 -> 4) is refused: no random embedding layer."""
    folder = save_pretrained(cnn[0], tmp_path / "published", model_config=cnn[2])
    _edit_config(folder, lambda written: written["model_args"].__setitem__("num_classes", 4))
    with pytest.raises(CheckpointMismatchError, match=r"4 outputs.*weights are for 8"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    with pytest.raises(CheckpointMismatchError, match=r"fc\.weight: \(8, \d+\) in .*model\.safetensors, \(4, \d+\) in the model"):
        load_model(folder)


def test_weights_into_a_differently_sized_model_fail_naming_both_shapes(cnn, tmp_path):
    model, _, config, *_ = cnn
    state = read_state_dict(save_pretrained(model, tmp_path / "published", model_config=config))
    other = timm_gsp.create_model("test_resnet", embed_dim=16, num_prototypes=6)
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict(other, state, source="published")
    message = str(info.value)
    assert "\n" not in message
    assert "(4, 96) (4 prototypes of 96 channels) in published, (6, 96) (6 prototypes of 96 channels) in the model" in message
    assert "fc.weight: (8, 96) in published, (16, 96) in the model" in message


def test_verify_refuses_a_description_that_builds_another_model(cnn, tmp_path):
    model, _, config, *_ = cnn
    wrong = RetrievalModelConfig("test_resnet", 8, timm_gsp.format_gsp_spec(num_prototypes=4, transport_ratio=0.5))
    with pytest.raises(CheckpointMismatchError, match="embeddings differ"):
        save_pretrained(model, tmp_path / "p", model_config=wrong)


def test_only_safetensors_is_read(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"not read")
    with pytest.raises(ConfigError, match="only safetensors"):
        read_state_dict(tmp_path / "model.pth")


def test_output_that_is_a_file_or_holds_other_files_is_refused(cnn, tmp_path):
    from timm_gsp import OutputExistsError

    (tmp_path / "optimizer.pt").write_bytes(b"")
    with pytest.raises(OutputExistsError, match="optimizer.pt"):
        save_pretrained(cnn[0], tmp_path, model_config=cnn[2])
    with pytest.raises(OutputExistsError, match="not a folder"):
        save_pretrained(cnn[0], tmp_path / "optimizer.pt", model_config=cnn[2])


# --- load_model: every kind of source ---------------------------------------------------------

@pytest.fixture(scope="module")
def sources(cnn, tmp_path_factory):
    """The CNN as a training run (checkpoint/ + checkpoint-best/ + results.json naming the best)."""
    model, _, config, folder, _ = cnn
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run / "checkpoint-best", model.state_dict(), {"epoch": 1}, model_config=config)
    other = config.build()  # the last epoch: other weights
    save_checkpoint(run / "checkpoint", other.state_dict(), {"epoch": 2}, model_config=config)
    RunResults(model=config, metrics=METRICS, dataset="cub", eval_split="test", checkpoint="checkpoint-best").write(run / "results.json")
    return {"published": folder, "local-dir": f"local-dir:{folder}", "checkpoint": run / "checkpoint-best",
            "run": run, "results": run / "results.json"}


@pytest.mark.parametrize("kind", ["published", "local-dir", "checkpoint", "run", "results"])
def test_load_model_reads_every_kind_of_source(cnn, sources, kind):
    model, _, _, _, x = cnn
    loaded = load_model(sources[kind])
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_load_model_from_the_hub_cache(cnn, tmp_path, monkeypatch):
    from huggingface_hub import constants

    populate_hub_cache(tmp_path / "cache", "someone/tiny", cnn[3])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    found = find_model("hf-hub:someone/tiny")
    assert found.source == "hf-hub:someone/tiny" and found.published
    with torch.no_grad():
        assert torch.equal(found.build()(cnn[4]), cnn[0](cnn[4]))
    with pytest.raises(HubUnavailableError, match="hf-hub:someone/absent.*not in the local"):
        find_model("hf-hub:someone/absent")
    with pytest.raises(ConfigError, match="invalid repo id"):
        find_model("hf-hub:not a repo!")


def test_run_results_attach_only_to_the_checkpoint_they_measured(sources):
    assert find_model(sources["run"]).results == sources["results"]
    assert find_model(sources["checkpoint"]).results == sources["results"]
    assert find_model(sources["run"] / "checkpoint").results is None  # the last epoch: not what was measured


def _broken_copy(folder, tmp_path, name, content):
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / name).write_bytes(content)
    return broken


@pytest.mark.parametrize("name, content, error, match", [
    ("config.json", b"{not json", ConfigError, "config.json is not readable JSON"),
    ("config.json", b'{"model_args": {}}', ConfigError, "config.json is not a timm model config"),
    ("model.safetensors", b"\x00" * 16, CheckpointMismatchError, "model.safetensors: unreadable weights"),
])
def test_corrupt_model_folder_fails_naming_the_path(cnn, tmp_path, name, content, error, match):
    broken = _broken_copy(cnn[3], tmp_path, name, content)
    with pytest.raises(error, match=match) as info:
        load_model(broken)
    assert str(broken) in str(info.value) and "\n" not in str(info.value)


def test_paths_that_hold_no_model_fail_naming_them(tmp_path):
    with pytest.raises(ConfigError, match=f"no such model: {tmp_path / 'absent'}"):
        load_model(tmp_path / "absent")
    with pytest.raises(ConfigError, match="is not a model: expected a published folder"):
        load_model(tmp_path)


# --- the Hub ------------------------------------------------------------------------------------

def test_push_offline_fails_before_writing_anything(cnn, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match="offline"):
        push_to_hub(cnn[0], "someone/model", model_config=cnn[2], token="hf_unused")


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_failed_upload_leaves_the_folder_unchanged(cnn, tmp_path, monkeypatch):
    """An upload that fails leaves the folder as it was. It fails for real: the Hub endpoint is a closed local port."""
    from huggingface_hub import constants

    folder = save_pretrained(cnn[0], tmp_path / "p", model_config=cnn[2])
    before = _snapshot(folder)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(HubUnavailableError, match="uploading .* to someone/model failed"):
        upload_folder(folder, "someone/model", token="hf_unused")
    with pytest.raises(ConfigError, match="invalid repo id 'not a/valid id!'"):
        upload_folder(folder, "not a/valid id!", token="hf_unused")
    with pytest.raises(ConfigError, match="no such model folder"):
        upload_folder(tmp_path / "absent", "someone/model", token="hf_unused")
    assert _snapshot(folder) == before and "<namespace>/<model-name>" in before["README.md"].decode()


def _hub_user(token):
    from huggingface_hub import HfApi

    try:
        return HfApi(token=token).whoami()["name"]
    except Exception:  # no network, DNS failure, bad token: all mean "cannot run the upload test"
        return None


def test_real_upload_round_trip(cnn, tmp_path):
    token = os.environ.get("HF_TOKEN")
    if not token:
        pytest.skip("no HF_TOKEN: the real Hub upload test needs a token with write access")
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE=1: the real Hub upload test needs the network")
    user = _hub_user(token)
    if user is None:
        pytest.skip("huggingface.co is unreachable or the token is invalid")
    model, _, config, _, x = cnn
    repo_id = f"{user}/timm-gsp-test-{uuid.uuid4().hex[:8]}"
    try:
        push_to_hub(model, repo_id, results_for(config), token=token, upload_kwargs={"private": True})
        uploaded = {f for f in HfApi(token=token).list_repo_files(repo_id)} - {".gitattributes"}
        assert uploaded == set(PUBLISHED_FILES)
        save_file({"x": x}, str(tmp_path / "x.safetensors"))
        expected = embed_single_threaded(model, x)
        env = dict(os.environ, HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(tmp_path / "cache"))
        (got,) = reload_in_fresh_process([(f"hf-hub:{repo_id}", tmp_path / "x.safetensors", tmp_path / "y.safetensors")], env)
        assert torch.equal(got, expected)
    finally:
        HfApi(token=token).delete_repo(repo_id, missing_ok=True)


# --- the model card: huggingface_hub's own format ---------------------------------------------------

def test_card_parses_back_with_huggingface_hub_and_names_its_metrics(cnn, tmp_path):
    from huggingface_hub import ModelCard

    model, _, config, *_ = cnn
    folder = save_pretrained(model, tmp_path / "p", results_for(config), repo_id="someone/gsp-resnet-cub")
    card = ModelCard.load(folder / "README.md")
    assert (card.data.library_name, card.data.pipeline_tag, card.data.model_name) == \
        ("timm", "image-feature-extraction", "gsp-resnet-cub")
    results = card.data.eval_results
    assert {r.metric_type: r.metric_value for r in results} == METRICS
    assert {(r.dataset_type, r.dataset_name, r.dataset_split, r.task_type) for r in results} == \
        {("cub", "CUB-200-2011", "test", "image-feature-extraction")}
    assert {r.metric_type: r.metric_name for r in results}["map_at_r"] == "MAP@R"


def test_card_written_before_the_repo_is_known_names_it_at_upload(cnn, tmp_path):
    from huggingface_hub import ModelCard

    from timm_gsp.hub.transfer import upload_files

    folder = save_pretrained(cnn[0], tmp_path / "p", results_for(cnn[2]))
    files = upload_files(folder, "someone/tiny-gsp")
    assert sorted(files) == sorted(PUBLISHED_FILES) and files["model.safetensors"] == folder / "model.safetensors"
    (tmp_path / "sent.md").write_bytes(files["README.md"])
    card = ModelCard.load(tmp_path / "sent.md")
    assert card.data.model_name == "tiny-gsp" and "# tiny-gsp" in card.text
    assert 'timm.create_model("hf-hub:someone/tiny-gsp"' in card.text and "<model-name>" not in card.text
    assert "<namespace>/<model-name>" in (folder / "README.md").read_text()  # the folder is unchanged


# --- an upload sends only what changed ------------------------------------------------------------

def _hub_listing(files, lfs=("model.safetensors",)):
    """The Hub's own ``RepoFile`` entries of a repo holding ``files``, as ``get_paths_info`` returns them."""
    import hashlib

    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils.sha import git_hash

    entries = []
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.read_bytes()
        info = {"size": len(data), "oid": hashlib.sha256(data).hexdigest(), "pointerSize": 134} if name in lfs else None
        entries.append(RepoFile(path=name, size=len(data), oid=git_hash(data) if info is None else "0" * 40, lfs=info))
    return entries


def test_upload_operations_add_only_the_files_the_hub_lacks_or_holds_otherwise(cnn, tmp_path):
    from huggingface_hub import CommitOperationAdd

    from timm_gsp.hub.transfer import upload_files, upload_operations

    files = upload_files(save_pretrained(cnn[0], tmp_path / "p", results_for(cnn[2])), "someone/tiny")
    assert upload_operations(files, _hub_listing(files)) == []  # the Hub holds all of it: no commit
    everything = upload_operations(files, [])  # a new repo gets every file
    assert [op.path_in_repo for op in everything] == list(files) and all(isinstance(op, CommitOperationAdd) for op in everything)

    new_card = dict(files, **{"README.md": files["README.md"].replace(b"P@1", b"Precision@1")})
    (card_only,) = upload_operations(new_card, _hub_listing(files))
    assert card_only.path_in_repo == "README.md" and card_only.path_or_fileobj == new_card["README.md"]

    other_weights = tmp_path / "other.safetensors"
    other_weights.write_bytes(files["model.safetensors"].read_bytes()[:-1] + b" ")  # same size, other bytes
    (weights,) = upload_operations(dict(files, **{"model.safetensors": other_weights}), _hub_listing(files))
    assert weights.path_in_repo == "model.safetensors" and weights.path_or_fileobj == str(other_weights)
    held_elsewhere = _hub_listing({"README.md": files["README.md"]}, lfs=("README.md",))  # LFS there, same bytes
    assert [op.path_in_repo for op in upload_operations({"README.md": files["README.md"]}, held_elsewhere)] == []


# --- baseline pools and embedding-free models publish like GSP ones ----------------------------------

@pytest.mark.parametrize("name, kwargs, pool, embed_dim, architecture", [
    ("test_resnet", {}, "gem", 8, "gsp_retrieval"),
    ("test_resnet", {}, "catavgmax", 8, "test_resnet"),
    ("test_vit", {"img_size": 32}, "catavgmax", 8, "gsp_retrieval"),
    ("test_vit", {"img_size": 32}, "avgmax", 8, "test_vit"),
    ("test_resnet", {}, SPEC, 0, "test_resnet"),
    ("xcit_nano_12_p16_224", {"img_size": 32}, "gem", 0, "gsp_retrieval"),
], ids=["gem", "catavgmax-cnn", "catavgmax-vit", "avgmax-vit", "gsp-no-embedding", "gem-wrapped-no-embedding"])
def test_baselines_and_embedding_free_models_round_trip(tmp_path, name, kwargs, pool, embed_dim, architecture):
    torch.manual_seed(0)
    config = RetrievalModelConfig(name, embed_dim=embed_dim, pool=pool, model_kwargs=kwargs,
                                  data_config={"input_size": [3, 32, 32]})
    model = config.build().eval()
    if pool == "gem":
        with torch.no_grad():
            model.pool.p.fill_(2.5)  # a learnt exponent travels with the weights
    folder = save_pretrained(model, tmp_path / "p", model_config=config)
    written = json.loads((folder / "config.json").read_text())
    assert written["architecture"] == architecture and written["global_pool"] == pool
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True).shape[1]
        assert torch.equal(timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(x), expected)
        assert torch.equal(load_model(folder)(x), expected)
    found = find_model(folder)
    assert (found.config.pool, found.config.embed_dim) == (pool, embed_dim)
    card = (folder / "README.md").read_text()
    assert expected.shape[1] == (embed_dim or pooled)
    if embed_dim:
        assert f"**Embedding size:** {embed_dim} (a linear layer on {pooled} pooled features)" in card
    else:
        assert f"**Embedding size:** {pooled} (the pooled features; no embedding layer)" in card


# --- the model description: one home for what config.json says -------------------------------------

def test_finding_a_model_loads_no_evaluation_code():
    """Every CLI command finds its model through model_sources: that must not import torchmetrics."""
    script = ("import sys, timm_gsp.hub.model_sources; "
              "print(sorted(m for m in ('timm_gsp.retrieval.evaluate', 'torchmetrics', 'timm_gsp.metrics.retrieval') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], check=True, env=subprocess_env(), capture_output=True,
                         text=True, timeout=120).stdout
    assert out.strip() == "[]"


def test_a_config_json_without_the_description_is_described_from_timms_keys(cnn, tmp_path):
    model, _, config, *_ = cnn
    folder = save_pretrained(model, tmp_path / "p", model_config=config)
    written = json.loads((folder / "config.json").read_text())
    described = find_model(folder).config
    _edit_config(folder, lambda c: c.pop("timm_gsp"))
    assert find_model(folder).config == described == dataclasses.replace(config, data_config=described.data_config)
    assert described.data_config == {k: written["pretrained_cfg"][k] for k in described.data_config}
    with torch.no_grad():
        assert torch.equal(load_model(folder)(cnn[4]), model(cnn[4]))


@pytest.mark.parametrize("given, expected", [
    (48, (3, 48, 48)), ([40, 56], (3, 40, 56)), ((1, 32, 32), (1, 32, 32)), ([3, 64, 64], (3, 64, 64)),
])
def test_input_size_is_read_in_every_spelling(given, expected):
    from timm_gsp.models.model_config import parse_input_size

    assert parse_input_size(given) == expected
    assert RetrievalModelConfig("test_resnet", data_config={"input_size": given}).input_size == expected


@pytest.mark.parametrize("given", [True, [32], [3, 32, 32, 1], "large", [0, 32], None])
def test_an_unreadable_input_size_is_a_config_error(given):
    from timm_gsp.models.model_config import parse_input_size

    with pytest.raises(ConfigError, match="input_size must be an int, \\(H, W\\) or \\(C, H, W\\)"):
        parse_input_size(given)


def test_published_input_size_may_be_given_as_one_number(cnn, tmp_path):
    from timm_gsp.models.model_config import evaluation_data_config

    model, _, config, *_ = cnn
    assert evaluation_data_config(model, config, input_size=48)["input_size"] == [3, 48, 48]
    with pytest.raises(ConfigError, match="not evaluation settings"):
        evaluation_data_config(model, config, crop=0.9)
