"""A timm checkpoint file as the backbone's pretrained weights: ``timm_gsp.create_model(pretrained_path=...)``
and ``examples/train.py --pretrained-path``. Real timm models saved to real files: loaded bit for bit
through timm's own loading, refused in one line when missing, unreadable or of another architecture,
and recorded by name and content hash, never by the machine's path."""
import json
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

import timm_gsp
from timm_gsp import RetrievalModelConfig
from timm_gsp.errors import ConfigError
from timm_gsp.train.checkpoint import load_checkpoint
from timm_gsp.train.run_results import RunResults, read_results
from timm_gsp.utils import file_sha256

from conftest import REPO, subprocess_env

sys.path.insert(0, str(REPO / "examples"))
import train as train_script  # noqa: E402

TRAIN = [sys.executable, str(REPO / "examples" / "train.py")]
TINY = ["--embed-dim", "8", "--num-prototypes", "4", "--img-size", "32", "--batch-size", "8", "--m-per-class", "2",
        "--workers", "0", "--no-progress"]


def save_weights(model, path):
    """``model``'s state dict as a file: safetensors by extension, else a torch file with the state dict
    under ``state_dict`` (a training checkpoint's layout, which timm's reader unpacks)."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)
    return state


@pytest.fixture
def weights_file(tmp_path):
    """``weights_file(name, suffix, **timm_kwargs) -> (path, state dict)``: a randomly initialised timm model, saved."""
    def make(name="test_resnet", suffix=".safetensors", **kwargs):
        torch.manual_seed(7)
        path = tmp_path / "weights" / f"{name}{suffix}"
        path.parent.mkdir(exist_ok=True)
        return path, save_weights(timm.create_model(name, **kwargs), path)
    return make


def backbone_parameters(name="test_resnet"):
    """Names of the architecture's parameters, classifier left out (running statistics are buffers, which
    training updates even at a learning rate of 0)."""
    model = timm.create_model(name)
    classifier = model.pretrained_cfg["classifier"]
    return [k for k, _ in model.named_parameters() if not k.startswith(classifier + ".")]


# --- timm_gsp.create_model(pretrained_path=...) ----------------------------------------------------

@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("pool,prefix,new", [
    ("gsp", "", {"global_pool.pool.prototypes"}),                  # native route: GSP in timm's head
    ("gem", "backbone.", {"pool.p", "head.weight", "head.bias"}),   # wrapped route: GSPRetrievalNet
])
def test_file_is_the_backbone_bit_for_bit_and_the_head_is_new(weights_file, suffix, pool, prefix, new):
    path, stored = weights_file(suffix=suffix, num_classes=10)
    model = timm_gsp.create_model("test_resnet", pretrained_path=path, embed_dim=8, num_prototypes=4, pool=pool)
    held = model.state_dict()
    for key, tensor in stored.items():
        if not key.startswith("fc."):  # the file's 10-class classifier: timm drops it
            assert torch.equal(held[prefix + key], tensor), key
    assert set(held) - {prefix + k for k in stored} == new
    embedding = held["fc.weight"] if pool == "gsp" else held["head.weight"]
    assert embedding.shape[0] == 8 and stored["fc.weight"].shape[0] == 10
    # the file really is other weights than a fresh build's
    assert not torch.equal(timm_gsp.create_model("test_resnet", embed_dim=8).state_dict()[
        "conv1.0.weight"], stored["conv1.0.weight"])


def test_model_description_builds_with_the_file_and_never_records_it(weights_file):
    path, stored = weights_file(num_classes=10)
    config = RetrievalModelConfig("test_resnet", embed_dim=8, pool="gsp:num_prototypes=4")
    model = config.build(pretrained_path=path)
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], stored["layer1.0.conv1.weight"])
    assert str(path.parent) not in json.dumps(config.to_dict()) and path.name not in json.dumps(config.to_dict())


@pytest.mark.parametrize("pool", ["gsp", "gem"])
def test_checkpoint_of_another_architecture_is_one_line_naming_mismatches(weights_file, pool):
    path, _ = weights_file("resnet10t")  # shapes collide: timm's load fails, the error names them
    with pytest.raises(ConfigError) as error:
        timm_gsp.create_model("test_resnet", pretrained_path=path, embed_dim=8, num_prototypes=4, pool=pool)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{path} does not fit test_resnet:")
    assert "conv1.0.weight: (24, 3, 3, 3) in the file, (16, 3, 3, 3) in the model" in message
    assert "more" in message and "must be a timm checkpoint of the test_resnet architecture" in message


def test_checkpoint_whose_keys_never_collide_is_refused_not_loaded_silently(weights_file):
    """timm loads non-strictly once it has dropped the classifier: a ViT file into a ResNet would load
    nothing and say nothing."""
    path, _ = weights_file("test_vit")
    with pytest.raises(ConfigError) as error:
        timm_gsp.create_model("test_resnet", pretrained_path=path, embed_dim=8, num_prototypes=4)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and "missing conv1.0.weight" in message


def test_missing_folder_and_unreadable_files_are_config_errors_naming_the_path(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a checkpoint" * 4)
    pickled = tmp_path / "corrupt.pth"
    pickled.write_bytes(b"not a checkpoint" * 4)
    for path, problem in [(tmp_path / "nowhere.safetensors", "no such file"), (tmp_path, "a folder, not a file"),
                          (corrupt, "not a readable checkpoint"), (pickled, "not a readable checkpoint")]:
        with pytest.raises(ConfigError) as error:
            timm_gsp.create_model("test_resnet", pretrained_path=path, embed_dim=8, num_prototypes=4)
        message = str(error.value)
        assert len(message.splitlines()) == 1 and message.startswith(f"{path}: {problem}"), message


def test_old_results_without_the_field_still_load():
    results = read_results(REPO / "tests" / "fixtures" / "v1" / "run" / "results.json")
    assert results.pretrained_weights is None
    record = {"file": "w.safetensors", "sha256": "ab" * 32}
    assert RunResults.from_dict(RunResults(pretrained_weights=record).to_dict()).pretrained_weights == record


# --- examples/train.py --pretrained-path -------------------------------------------------------------

def test_train_starts_from_the_file_offline_and_records_its_hash(weights_file, folder_tree, tmp_path):
    path, stored = weights_file(num_classes=10)
    root, output = folder_tree(num_classes=8, per_class=4), tmp_path / "run"
    # the folder recipe (ResNet-50, pretrained) with no network; learning rate 0: the checkpoint's
    # backbone is the weights the model was built with
    done = subprocess.run([*TRAIN, "--dataset", "folder", "--data-dir", str(root), "--recipe", "folder",
                           "--model", "test_resnet", "--pretrained-path", str(path), *TINY, "--epochs", "1",
                           "--lr", "0", "--backbone-lr", "0", "--output", str(output)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    digest = file_sha256(path)
    assert f"model test_resnet (pretrained: {path.name} sha256:{digest[:12]})" in done.stdout
    results = read_results(output / "results.json")
    assert results.pretrained_weights == {"file": path.name, "sha256": digest}
    model_state, _ = load_checkpoint(output / "checkpoint")
    for key in backbone_parameters():
        assert torch.equal(model_state[key], stored[key]), key


def test_resume_takes_the_checkpoints_weights_and_keeps_the_recorded_hash(weights_file, folder_tree, tmp_path):
    path, _ = weights_file(num_classes=10)
    digest = file_sha256(path)
    common = ["--dataset", "folder", "--data-dir", str(folder_tree(num_classes=8, per_class=4)), "--recipe", "folder",
              "--model", "test_resnet", *TINY, "--epochs", "2", "--output", str(tmp_path / "run")]
    assert train_script.main([*common, "--pretrained-path", str(path), "--stop-after-epoch", "1"]) == 0
    path.unlink()  # a resumed run reads no weights file (nor downloads the recipe's), whatever the flag says
    assert train_script.main([*common, "--resume", "--pretrained-path", str(tmp_path / "elsewhere.safetensors")]) == 0
    assert read_results(tmp_path / "run" / "results.json").pretrained_weights == {"file": path.name, "sha256": digest}


def test_train_refuses_a_file_of_another_architecture_before_writing_anything(weights_file, folder_tree, tmp_path):
    path, _ = weights_file("resnet10t")
    output = tmp_path / "run"
    done = subprocess.run([*TRAIN, "--dataset", "folder", "--data-dir", str(folder_tree()), "--recipe", "folder",
                           "--model", "test_resnet", "--pretrained-path", str(path), *TINY, "--output", str(output)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, done.stderr
    assert err[0].startswith(f"train.py: error: --pretrained-path {path} does not fit test_resnet: conv1.0.weight")
    assert "the test_resnet architecture" in err[0]
    assert not output.exists()


@pytest.mark.parametrize("problem", ["no such file", "a folder, not a file"])
def test_train_refuses_a_missing_file_naming_it_and_the_flag(problem, folder_tree, tmp_path, capsys):
    path = tmp_path / ("nowhere.safetensors" if problem == "no such file" else "")
    output = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--dataset", "folder", "--data-dir", str(folder_tree()), "--recipe", "folder",
                           "--model", "test_resnet", "--pretrained-path", str(path), *TINY, "--output", str(output)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"train.py: error: --pretrained-path {path}: {problem}")
    assert not output.exists()


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_keeps_the_pretrained_statistics_and_affine_parameters(weights_file, folder_tree, tmp_path, freeze):
    """--freeze-bn: after fine-tuning at a real learning rate every BatchNorm tensor (running mean and
    variance, weight, bias) is still the file's, while the convolutions moved; without it they all move."""
    path, stored = weights_file(num_classes=10)
    torch.manual_seed(0)
    for key in stored:  # distinctive pretrained statistics, which re-estimation would overwrite
        if key.endswith(("running_mean", "running_var")):
            stored[key] = torch.rand_like(stored[key]) + 0.5
    save_file(stored, str(path))
    output = tmp_path / "run"
    flags = ["--freeze-bn"] if freeze else ["--no-freeze-bn"]
    assert train_script.main(["--dataset", "folder", "--data-dir", str(folder_tree(num_classes=8, per_class=4)),
                              "--recipe", "folder", "--model", "test_resnet", "--pretrained-path", str(path), *TINY,
                              "--epochs", "1", "--lr", "1e-2", "--backbone-lr", "1e-2", *flags, "--output", str(output)]) == 0
    model_state, _ = load_checkpoint(output / "checkpoint")
    norms = [k for k in stored if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "weight", "bias")
             and k.rsplit(".", 1)[0] + ".running_mean" in stored]
    convs = [k for k in backbone_parameters() if k not in norms]
    assert norms and convs
    assert all(torch.equal(model_state[k], stored[k]) for k in norms) == freeze
    assert not any(torch.equal(model_state[k], stored[k]) for k in convs)


def test_folder_recipe_freezes_batch_norm_and_the_flag_overrides_it(folder_tree):
    """The pretrained-backbone recipe keeps BatchNorm's pretrained statistics unless told otherwise."""
    common = ["--dataset", "folder", "--data-dir", str(folder_tree(num_classes=4, per_class=2))]
    assert train_script.parse_args(common).freeze_bn is True
    assert train_script.parse_args([*common, "--no-freeze-bn"]).freeze_bn is False
    assert train_script.parse_args([*common, "--recipe", "folder-scratch"]).freeze_bn is False


def test_freeze_bn_is_moot_on_a_backbone_from_scratch(folder_tree, tmp_path, capsys):
    """The folder recipe freezes BatchNorm; with --no-pretrained there are no statistics to keep, so the
    run trains them (frozen at their initial values they would never normalise anything)."""
    output = tmp_path / "run"
    assert train_script.main(["--dataset", "folder", "--data-dir", str(folder_tree(num_classes=8, per_class=4)),
                              "--model", "test_resnet", "--no-pretrained", *TINY, "--epochs", "1", "--output", str(output)]) == 0
    assert "BatchNorm frozen" not in capsys.readouterr().out
    model_state, _ = load_checkpoint(output / "checkpoint")
    initial = timm.create_model("test_resnet").state_dict()
    assert not torch.equal(model_state["bn1.running_mean"], initial["bn1.running_mean"])


def test_train_builds_the_model_once_with_the_file(weights_file, folder_tree, tmp_path, monkeypatch):
    """The file is checked by the one build the run trains (still before the output folder is touched),
    not by a build of its own first."""
    import timm_gsp.models.factory

    path, stored = weights_file(num_classes=10)
    builds = []

    def counted(*args, **kwargs):
        builds.append(kwargs.get("pretrained_path"))
        return real(*args, **kwargs)

    real = timm_gsp.models.factory.create_model
    monkeypatch.setattr(timm_gsp.models.factory, "create_model", counted)
    output = tmp_path / "run"
    assert train_script.main(["--dataset", "folder", "--data-dir", str(folder_tree(num_classes=8, per_class=4)),
                              "--recipe", "folder", "--model", "test_resnet", "--pretrained-path", str(path), *TINY,
                              "--epochs", "1", "--lr", "0", "--backbone-lr", "0", "--output", str(output)]) == 0
    assert builds == [str(path)]
    model_state, _ = load_checkpoint(output / "checkpoint")
    assert all(torch.equal(model_state[key], stored[key]) for key in backbone_parameters())
