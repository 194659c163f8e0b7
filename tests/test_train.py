"""examples/train.py end to end on fixture trees: every official layout, recipes and their transforms,
model selection, resume, a careless user's mistakes, and a real 2-process DDP job."""
import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torchvision import transforms as T

import timm_gsp
from timm_gsp import RetrievalModelConfig
from timm_gsp.data import build_dataset, build_eval_transform, build_train_transform, resolve_input_config
from timm_gsp.retrieval.evaluate import evaluate_retrieval
from timm_gsp.train.distributed import DistributedJob
from timm_gsp.train.run_results import read_results

from conftest import REPO, subprocess_env, torchrun
from fixtures_data import make_fixture_tree, make_folder_tree, make_image, make_inshop_tree

sys.path.insert(0, str(REPO / "examples"))
import train as train_script  # noqa: E402

TINY = ["--model", "test_resnet", "--no-pretrained", "--img-size", "32", "--embed-dim", "8", "--num-prototypes", "4",
        "--batch-size", "4", "--m-per-class", "2", "--workers", "0", "--no-progress", "--lr", "1e-3"]


def run_train(output, *args, expect=0):
    status = train_script.main([*TINY, "--output", str(output), *args])
    assert status == expect
    return output


@pytest.mark.parametrize("dataset", ["cub", "cars", "sop", "inshop", "folder"])
def test_trains_on_each_layout_and_writes_results(dataset, tmp_path):
    kwargs = {"per_item": 4} if dataset == "inshop" else {"per_class": 4}
    root = make_fixture_tree(dataset, tmp_path / "data", **kwargs)
    extra = ["--cache-images"] if dataset == "folder" else []  # the decoded-image cache on one of them
    output = run_train(tmp_path / "run", "--dataset", dataset, "--data-dir", str(root), "--epochs", "1", *extra)
    results = read_results(output / "results.json")
    for key in ("precision_at_1", "recall_at_1", "recall_at_8", "r_precision", "map_at_r"):
        assert 0.0 <= results.metrics[key] <= 1.0
    assert results.dataset == dataset and results.model.model_name == "test_resnet"
    assert results.model.data_config["input_size"] == [3, 32, 32]
    assert results.eval_split == ("query+gallery" if dataset == "inshop" else "test")
    assert results.checkpoint == "checkpoint" and results.best_epoch is None
    for name in ("metrics.png", "gsp_weights.png", "metrics.jsonl", "checkpoint/model.safetensors"):
        assert (output / name).is_file(), name
    assert not list(output.glob(".checkpoint*")), "temporary checkpoint folders left behind"


def test_validation_split_selects_the_best_epoch(tmp_path):
    root = make_folder_tree(tmp_path / "data", num_classes=12, per_class=4)
    output = run_train(tmp_path / "run", "--dataset", "folder", "--data-dir", str(root), "--epochs", "3", "--pool", "gap",
                       "--val-fraction", "0.5", "--eval-every", "1")
    results = read_results(output / "results.json")
    history = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    best = max(history, key=lambda h: h["map_at_r"])
    assert results.eval_split == "val" and results.checkpoint == "checkpoint-best"
    assert results.best_epoch == best["epoch"] and results.metrics["map_at_r"] == best["map_at_r"]
    # the best checkpoint holds that epoch's weights: evaluated again, the same metrics
    model = RetrievalModelConfig.from_dict(results.model.to_dict()).build()
    model.load_state_dict(load_file(str(output / "checkpoint-best" / "model.safetensors")))
    assert not any(k.endswith("prototypes") for k in model.state_dict())  # --pool gap: no GSP
    full = build_dataset("folder", root, "train", build_eval_transform(results.model.data_config))
    from timm_gsp.data import carve_validation
    val = carve_validation(full, "val", 0.5, 0)
    again = evaluate_retrieval(model, {"val": val}, batch_size=4, progress=False)
    assert again["map_at_r"] == pytest.approx(best["map_at_r"], abs=1e-6)


@pytest.mark.parametrize("batches", [[], ["--m-per-class", "0", "--pool", "gap"]], ids=["m-per-class", "random"])
def test_resume_reproduces_the_uninterrupted_run_and_logs_each_epoch_once(batches, tmp_path, capsys):
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=8)
    # the warm-up ends mid-run: the resumed run must pick the schedule up at its update count
    common = ["--dataset", "folder", "--data-dir", str(root), "--epochs", "3", "--loss", "proxyanchor",
              "--warmup-epochs", "1.5", *batches]
    straight = run_train(tmp_path / "a", *common)
    interrupted = run_train(tmp_path / "b", *common, "--stop-after-epoch", "1")
    assert not (interrupted / "results.json").exists()
    run_train(interrupted, *common, "--resume")
    a = load_file(str(straight / "checkpoint" / "model.safetensors"))
    b = load_file(str(interrupted / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert read_results(straight / "results.json").metrics == read_results(interrupted / "results.json").metrics
    epochs = [json.loads(line)["epoch"] for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    # a run that learns is judged so (the loss falls, P@1 is far above chance) and says nothing about it
    check = read_results(straight / "results.json").learning_check
    assert check["not_learning"] is False and check["epochs"] == 3
    assert check["last_epoch_loss"] < train_script.LOSS_STALL_RATIO * check["first_epoch_loss"]
    assert "not learning" not in capsys.readouterr().err


def test_resume_with_other_settings_is_refused_naming_each(tmp_path, capsys):
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=4)
    common = ["--dataset", "folder", "--data-dir", str(root), "--epochs", "2"]
    output = run_train(tmp_path / "run", *common, "--stop-after-epoch", "1")
    before = (output / "checkpoint" / "model.safetensors").read_bytes()
    capsys.readouterr()
    run_train(output, *common, "--resume", "--transport-ratio", "0.9", "--gamma", "50", "--lr", "0.5", expect=1)
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: error:") and len(err.splitlines()) == 1
    for flag in ("--transport-ratio", "--gamma", "--lr"):
        assert flag in err
    assert (output / "checkpoint" / "model.safetensors").read_bytes() == before
    assert not (output / "results.json").exists()
    run_train(output, *common, "--resume", "--epochs", "3")  # epochs may change
    assert read_results(output / "results.json").epochs == 3


def test_second_run_into_the_same_output_is_refused(tmp_path, capsys):
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=4)
    common = ["--dataset", "folder", "--data-dir", str(root), "--epochs", "1"]
    output = run_train(tmp_path / "run", *common)
    results = (output / "results.json").read_bytes()
    capsys.readouterr()
    run_train(output, *common, "--seed", "1", expect=1)
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and str(output) in err
    assert (output / "results.json").read_bytes() == results
    assert len((output / "metrics.jsonl").read_text().splitlines()) == 1
    (output / "notes.txt").write_text("mine")
    run_train(output, *common, "--seed", "1", "--overwrite")
    assert (output / "results.json").read_bytes() != results
    assert (output / "notes.txt").read_text() == "mine"  # --overwrite replaces the run, not the user's files


@pytest.mark.parametrize("args,message", [
    (["--m-per-class", "1", "--batch-size", "4", "--zsr-weight", "0.1"], "--m-per-class"),
    (["--batch-size", "6", "--m-per-class", "4"], "--batch-size 6 must be a positive multiple of --m-per-class 4"),
    (["--scale", "0.9", "0.1"], "scale"),
    (["--num-prototypes", "0"], "num-prototypes"),
    (["--zsr-wieght", "0.1"], "unrecognized arguments: --zsr-wieght 0.1"),  # a typo: no screen of usage first
    (["--recipe", "folder_scratch"], "--recipe takes one of"),
    (["--gsp-border", "-1"], "border"),
])
def test_bad_settings_are_one_line_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_script.parse_args(["--recipe", "folder-scratch", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error:") and message in err[0], err


def test_errors_found_while_running_are_one_line(tmp_path, capsys):
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=4)
    # k-center needs more local features than the images give at this size
    run_train(tmp_path / "a", "--dataset", "folder", "--data-dir", str(root), "--epochs", "1", "--img-size", "16",
              "--num-prototypes", "4000", expect=1)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--num-prototypes" in err and "--prototype-init random" in err
    run_train(tmp_path / "b", "--dataset", "cub", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1", expect=1)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "nowhere") in err
    # a missing dataset root is named before the model or its pretrained weights are loaded, and no
    # output folder is left behind
    status = train_script.main(["--dataset", "folder", "--data-dir", str(tmp_path / "nowhere"), "--pretrained",
                                "--output", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert status == 1 and err == f"train.py: error: --data-dir {tmp_path / 'nowhere'}: no such folder"
    assert not (tmp_path / "c").exists()
    (tmp_path / "a-file").write_text("not images")
    assert train_script.main(["--dataset", "folder", "--data-dir", str(tmp_path / "a-file"), "--output", str(tmp_path / "c")]) == 1
    assert capsys.readouterr().err.strip() == f"train.py: error: --data-dir {tmp_path / 'a-file'}: a file, not a folder"
    assert train_script.main(["--dataset", "folder", "--output", str(tmp_path / "d")]) == 1
    assert "pass --data-dir" in capsys.readouterr().err


def test_evaluation_split_without_pairs_is_refused_not_nan(tmp_path, capsys):
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=4)
    for folder in ("class_02", "class_03"):  # the test classes keep one image each
        for image in sorted((root / folder).iterdir())[1:]:
            image.unlink()
    output = run_train(tmp_path / "run", "--dataset", "folder", "--data-dir", str(root), "--epochs", "1", expect=1)
    err = capsys.readouterr().err
    assert "no class has two or more images" in err
    assert not (output / "results.json").exists()


@pytest.mark.parametrize("recipe", ["collage", "folder", "folder-scratch", "cub", "cars", "sop", "inshop"])
def test_recipes_parse(recipe):
    args = train_script.parse_args(["--recipe", recipe])
    assert args.recipe == recipe and args.dataset in ("collage", "folder", "cub", "cars", "sop", "inshop")
    assert args.backbone_lr is not None and args.prototype_lr is not None


def test_dataset_picks_its_recipe_never_the_collages():
    assert train_script.parse_args([]).recipe == "collage"
    folder = train_script.parse_args(["--dataset", "folder"])
    collage = train_script.parse_args(["--recipe", "collage"])
    assert folder.recipe == "folder" and folder.pretrained and folder.model != collage.model
    assert folder.backbone_lr < folder.lr  # a pretrained backbone moves slower than the new head
    assert tuple(folder.scale) != tuple(collage.scale)
    assert train_script.parse_args(["--dataset", "cub"]).recipe == "cub"


def _random_resized_crop(tf):
    """timm's RandomResizedCropAndInterpolation (or torchvision's RandomResizedCrop)."""
    return next(t for t in tf.transforms if "RandomResizedCrop" in type(t).__name__)


def test_recipes_and_flags_reach_the_transforms(tmp_path):
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=4)
    model = timm_gsp.create_model("test_resnet", embed_dim=8, num_prototypes=4)

    def transforms(*argv):
        args = train_script.parse_args(["--data-dir", str(root), "--workers", "0", "--batch-size", "4", "--m-per-class", "2", *argv])
        # what train.py makes of them: the evaluation data config, and the augmentation on top of it
        config = resolve_input_config(model, args.img_size, crop_pct=args.crop_pct, interpolation=args.interpolation)
        return build_train_transform(config, train_script.augmentation_of(args)), build_eval_transform(config)

    recipe_train, recipe_eval = transforms("--recipe", "folder-scratch")
    flag_train, flag_eval = transforms("--recipe", "folder-scratch", "--scale", "0.3", "0.5", "--hflip", "0",
                                       "--crop-pct", "0.5", "--img-size", "40")
    assert _random_resized_crop(recipe_train).scale != (0.3, 0.5)
    assert _random_resized_crop(flag_train).scale == (0.3, 0.5)
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in flag_train.transforms)
    resize = lambda tf: next(t for t in tf.transforms if isinstance(t, T.Resize)).size  # noqa: E731
    assert resize(flag_eval) == 80 and resize(recipe_eval) != 80  # 40 px at crop_pct 0.5


def test_start_of_run_says_recipe_learning_rates_and_transforms(tmp_path, capsys):
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=4)
    run_train(tmp_path / "run", "--recipe", "folder-scratch", "--dataset", "folder", "--data-dir", str(root), "--epochs", "1")
    out = capsys.readouterr().out
    assert "recipe folder-scratch" in out and "learning rates: backbone 0.001, head 0.001" in out
    assert "train transform: RandomResizedCrop" in out and "eval transform:" in out


def test_folder_recipe_trains_with_its_own_learning_rates(tmp_path, capsys):
    """`--dataset folder` alone: the folder recipe's per-group rates reach the optimizer (a pretrained
    backbone at a tenth of the head's rate), never the collage's 1e-2 for everything."""
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=4)
    status = train_script.main(["--dataset", "folder", "--data-dir", str(root), "--no-pretrained", "--model", "test_resnet",
                                "--img-size", "32", "--embed-dim", "8", "--num-prototypes", "4", "--batch-size", "4",
                                "--m-per-class", "2", "--workers", "0", "--no-progress", "--epochs", "1",
                                "--output", str(tmp_path / "run")])
    assert status == 0
    out = capsys.readouterr().out
    assert "recipe folder (" in out
    assert "learning rates: backbone 1e-05, head 0.0001, prototypes 0.0001 (after 1 warm-up epoch)" in out
    assert "multisimilarity;" in out  # no ZSR: the recipe's weight is 0


def test_schedule_is_timms_warmup_then_cosine_and_resumes_from_its_update_count():
    """Update t runs at peak * t / W in the warm-up, then peak * (1 + cos(pi (t - W) / (T - W))) / 2; the
    torch LambdaLR it replaced ran the warm-up one update ahead, peak * (t + 1) / W, and the same cosine."""
    steps, epochs, warmup_epochs, peaks = 5, 4, 1, (0.1, 0.01)
    argv = ["--recipe", "folder-scratch", "--epochs", str(epochs), "--warmup-epochs", str(warmup_epochs)]

    def schedule(*extra, updates_done=0):
        args = train_script.parse_args([*argv, *extra])
        optimizer = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in peaks])
        scheduler = train_script.build_scheduler(optimizer, steps, args.epochs, args.warmup_epochs, args.sched)
        if updates_done:
            scheduler.step_update(updates_done)
        lrs = []
        for t in range(updates_done, args.epochs * steps):
            lrs.append([group["lr"] for group in optimizer.param_groups])
            scheduler.step_update(t + 1)
        return lrs

    total, warm = epochs * steps, warmup_epochs * steps
    closed = [[peak * t / warm if t < warm else peak * (1 + math.cos(math.pi * (t - warm) / (total - warm))) / 2
               for peak in peaks] for t in range(total)]
    lrs = schedule()
    assert lrs == [pytest.approx(row, rel=1e-12, abs=1e-15) for row in closed]
    assert lrs[0] == [0.0, 0.0] and lrs[warm] == list(peaks) and lrs[-1][0] < 0.02 * peaks[0]
    old_warmup = [[peak * (t + 1) / warm for peak in peaks] for t in range(warm)]
    assert lrs[1:warm + 1] == [pytest.approx(row, rel=1e-12) for row in old_warmup]
    # a resumed run restores the update count and continues with the very same rates
    assert schedule(updates_done=7) == lrs[7:]
    # --resume with another --epochs follows the stretched schedule from the same update count
    stretched = schedule("--epochs", "8", updates_done=7)
    assert stretched[0][0] == pytest.approx(peaks[0] * (1 + math.cos(math.pi * (7 - warm) / (8 * steps - warm))) / 2)
    # --sched none: the same warm-up, then the peak rates
    flat = schedule("--sched", "none")
    assert flat[:warm] == lrs[:warm] and all(row == list(peaks) for row in flat[warm:])


def test_random_batches_pool_and_embedding_are_said_at_start(tmp_path, capsys):
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=4)
    run_train(tmp_path / "run", "--dataset", "folder", "--data-dir", str(root), "--epochs", "1", "--m-per-class", "0",
              "--zsr-weight", "0")
    out = capsys.readouterr().out
    assert "batch 4 (random images, no class balancing)" in out
    assert "pool gsp (gsp:" in out and "embedding 8" in out
    run_train(tmp_path / "balanced", "--dataset", "folder", "--data-dir", str(root), "--epochs", "1", "--pool", "gap")
    out = capsys.readouterr().out
    assert "batch 4 (2 classes x 2)" in out and "pool gap (avg), embedding 8" in out


def test_gsp_border_reaches_the_pool_and_the_saved_description(tmp_path, capsys):
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=4)
    output = run_train(tmp_path / "run", "--dataset", "folder", "--data-dir", str(root), "--epochs", "1", "--gsp-border", "1",
                       "--channels-last", "--model-kwargs", "output_stride=8")  # a 4 x 4 map: 2 x 2 inside the border
    assert "border=1" in capsys.readouterr().out
    description = read_results(output / "results.json").model
    assert "border=1" in description.pool
    model = description.build()
    model.load_state_dict(load_file(str(output / "checkpoint" / "model.safetensors")))
    (_, pool), = timm_gsp.gsp_modules(model)
    assert pool.border == 1
    run_train(tmp_path / "wide", "--dataset", "folder", "--data-dir", str(root), "--epochs", "1", "--gsp-border", "2",
              "--model-kwargs", "output_stride=8", expect=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "border=2 leaves no cell of a 4x4 feature grid" in err[0] and "fewer" not in err[0], err


def test_random_batches_with_the_zero_shot_regulariser_are_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_script.parse_args(["--recipe", "folder-scratch", "--m-per-class", "0", "--zsr-weight", "0.1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "random batches (--m-per-class 0)" in err[0] and "--zsr-weight 0" in err[0], err
    # without GSP there is no regulariser: random batches are fine
    assert train_script.parse_args(["--recipe", "folder-scratch", "--m-per-class", "0", "--pool", "gap"]).m_per_class == 0
    with pytest.raises(SystemExit):
        train_script.parse_args(["--recipe", "folder-scratch", "--m-per-class", "-1"])
    assert "--m-per-class must be >= 1 (class-balanced batches) or 0 (random batches)" in capsys.readouterr().err


def test_without_an_embedding_layer_the_proxies_take_the_pooled_width(tmp_path, capsys):
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=4)
    pool = "catavgmax" if "catavgmax" in train_script.POOLS else "max"  # catavgmax: twice the backbone's width
    output = run_train(tmp_path / "run", "--dataset", "folder", "--data-dir", str(root), "--epochs", "1", "--pool", pool,
                       "--embed-dim", "0", "--loss", "proxyanchor")
    model = read_results(output / "results.json").model.build().eval()
    width = model(torch.zeros(1, 3, 32, 32)).shape[-1]
    assert width == (2 if pool == "catavgmax" else 1) * model.num_features
    assert f"no embedding layer (the {width}-d pooled features)" in capsys.readouterr().out
    proxies = load_file(str(output / "checkpoint" / "training_state.safetensors"))
    assert any(tensor.shape == (2, width) for tensor in proxies.values())  # 2 training classes x width


def test_gem_exponent_learns_at_the_head_rate_not_the_pretrained_backbones():
    args = train_script.parse_args(["--recipe", "folder", "--pool", "gem", "--lr", "0.01", "--backbone-lr", "0.0001"])
    model = timm_gsp.create_model("test_resnet", embed_dim=8, pool="gem")
    exponents = [p for name, p in model.named_parameters() if name.endswith("pool.p")]
    assert len(exponents) == 1
    criterion = train_script.build_criterion(args.loss, model, 2, 8, 0.0, None, DistributedJob())  # GeM: no ZSR
    learning_rates = {"backbone": args.backbone_lr, "head": args.lr, "prototypes": args.prototype_lr, "loss": args.loss_lr}
    groups = {g["name"]: g for g in train_script.build_optimizer(model, criterion, args.opt, learning_rates,
                                                                 args.weight_decay).param_groups}
    assert any(p is exponents[0] for p in groups["head"]["params"]) and groups["head"]["lr"] == 0.01
    assert not any(p is exponents[0] for p in groups["backbone"]["params"]) and groups["backbone"]["lr"] == 0.0001


def test_chance_precision_at_1_is_the_share_of_same_class_candidates(tmp_path):
    root = make_folder_tree(tmp_path / "data", num_classes=4, per_class=3)
    (root / "class_02" / "img_2.png").unlink()  # test classes of 2 and 3 images
    one_split = {"test": build_dataset("folder", root, "test")}
    assert sorted(torch.bincount(one_split["test"].labels).tolist()) == [2, 3]
    # queries of class 0 find 1 of 4 candidates, those of class 1 find 2 of 4: (2 * 1/4 + 3 * 2/4) / 5
    assert train_script.chance_precision_at_1(one_split) == pytest.approx(0.4)
    shop = make_inshop_tree(tmp_path / "shop", num_test_items=3, per_item=4)
    pair = {name: build_dataset("inshop", shop, name) for name in ("query", "gallery")}
    assert train_script.chance_precision_at_1(pair) == pytest.approx(2 / 6)  # 2 of the 6 gallery images


def test_a_run_that_does_not_learn_is_told_so_with_its_numbers(tmp_path, capsys):
    """lr 0 on images whose classes look alike: the loss stays put and P@1 stays near chance."""
    root = tmp_path / "data"
    for c in range(12):
        for k in range(4):
            make_image(root / f"class_{c:02d}" / f"img_{k}.png", 0, 100 * c + k)  # one colour for every class
    output = run_train(tmp_path / "run", "--dataset", "folder", "--data-dir", str(root), "--epochs", "2", "--lr", "0",
                       "--pool", "gap")
    err = [line for line in capsys.readouterr().err.splitlines() if "not learning" in line]
    check = read_results(output / "results.json").learning_check
    assert check["not_learning"] is True and check["epochs"] == 2
    assert check["chance_precision_at_1"] == pytest.approx(3 / 23)  # 6 test classes x 4 images
    assert check["precision_at_1"] < train_script.CHANCE_MULTIPLE * check["chance_precision_at_1"]
    assert check["last_epoch_loss"] >= train_script.LOSS_STALL_RATIO * check["first_epoch_loss"]
    assert len(err) == 1 and err[0].startswith("train.py: warning: this run is not learning")
    for said in (f"{check['precision_at_1']:.3f}", f"{check['chance_precision_at_1']:.3f}", "--lr", "--m-per-class",
                 "--img-size", "resolution"):
        assert said in err[0], said


def test_two_process_ddp_job_matches_single_process_evaluation(tmp_path):
    root = make_folder_tree(tmp_path / "data", num_classes=8, per_class=6)
    output = tmp_path / "ddp"
    command = torchrun(2, REPO / "examples" / "train.py", *TINY, "--dataset", "folder", "--data-dir", root,
                       "--epochs", "2", "--output", output)
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_results(output / "results.json")
    assert results.world_size == 2
    # The same weights evaluated in this single process give the metrics the two ranks gathered.
    model = results.model.build()
    model.load_state_dict(load_file(str(output / "checkpoint" / "model.safetensors")))
    test_set = build_dataset("folder", root, "test", build_eval_transform(results.model.data_config))
    single = evaluate_retrieval(model, {"test": test_set}, batch_size=4, progress=False)
    for key, value in results.metrics.items():
        assert single[key] == pytest.approx(value, abs=1e-6), key
