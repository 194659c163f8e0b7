"""The training record the library owns (``TrainingSetup``, ``results.json``'s ``setup``): what a real run
writes, its round trip through results.json, records written before it existed (their ``recipe`` flags
read into one), and the model card built from it."""
import json
import sys
from dataclasses import fields

import pytest

import timm_gsp
from timm_gsp import RetrievalModelConfig
from timm_gsp.train.run_results import RunResults, TrainingSetup, read_results

from conftest import REPO

sys.path.insert(0, str(REPO / "examples"))
import train as train_script  # noqa: E402

V1_RUN = REPO / "tests" / "fixtures" / "v1" / "run" / "results.json"
TINY = ["--model", "test_resnet", "--no-pretrained", "--img-size", "32", "--embed-dim", "8", "--num-prototypes", "4",
        "--batch-size", "4", "--m-per-class", "2", "--workers", "0", "--no-progress", "--epochs", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real (tiny) examples/train.py run: the folder-scratch recipe with a few flags changed."""
    from fixtures_data import make_folder_tree

    tmp = tmp_path_factory.mktemp("setup")
    root = make_folder_tree(tmp / "data", num_classes=4, per_class=4)
    output = tmp / "run"
    assert train_script.main(["--recipe", "folder-scratch", "--dataset", "folder", "--data-dir", str(root), *TINY,
                              "--lr", "0.003", "--backbone-lr", "0.001", "--loss", "proxyanchor", "--loss-lr", "0.01",
                              "--zsr-weight", "0.2", "--scale", "0.5", "1.0", "--hflip", "0.25", "--crop-pct", "0.5",
                              "--seed", "7", "--output", str(output)]) == 0
    return output


def test_a_run_records_its_setup_in_the_librarys_terms(run):
    results = read_results(run / "results.json")
    setup = results.setup
    assert isinstance(setup, TrainingSetup)
    assert (setup.recipe, setup.dataset, setup.model, setup.pretrained, setup.embed_dim) == \
        ("folder-scratch", "folder", "test_resnet", False, 8)
    assert setup.pool == results.model.pool and setup.pool.startswith("gsp:num_prototypes=4")
    assert (setup.loss, setup.zsr_weight, setup.optimizer, setup.schedule) == ("proxyanchor", 0.2, "adamw", "cosine")
    # one peak rate per parameter group the optimiser has, named as the run's first lines name them
    assert setup.learning_rates == {"backbone": 0.001, "head": 0.003, "prototypes": 0.003, "loss": 0.01}
    assert (setup.batch_size, setup.m_per_class, setup.seed, setup.epochs, setup.world_size) == (4, 2, 7, 1, 1)
    assert setup.augmentation == {**timm_gsp.data.Augmentation(scale=(0.5, 1.0), ratio=(1.0, 1.0), hflip=0.25,
                                                               color_jitter=0.0).to_dict(), "scale": [0.5, 1.0],
                                  "ratio": [1.0, 1.0]}
    # the evaluation transform the metrics were measured with: the one the exported model publishes
    assert setup.eval_transform == json.loads(json.dumps(results.model.data_config))
    assert setup.eval_transform["crop_pct"] == 0.5 and setup.eval_transform["input_size"] == [3, 32, 32]
    assert setup.amp == "none"  # on the CPU
    # the flags stay beside it, for people: the library reads none of them when a setup is there
    assert results.recipe["lr"] == 0.003 and results.recipe["reprob"] == 0.0


def test_the_record_round_trips_through_results_json(run, tmp_path):
    text = (run / "results.json").read_text()
    results = RunResults.from_dict(json.loads(text))
    assert results.to_dict() == json.loads(text)
    again = read_results(results.write(tmp_path / "results.json"))
    assert again == results and again.setup == results.setup
    # a setup made in Python (tuples, nested mappings) reads back equal from its JSON
    setup = TrainingSetup(model="resnet50", learning_rates={"backbone": 1e-5, "head": 1e-4},
                          augmentation=timm_gsp.data.Augmentation(scale=(0.16, 1.0)).to_dict(),
                          eval_transform={"input_size": (3, 224, 224), "mean": (0.5, 0.5, 0.5)}, world_size=8)
    path = RunResults(setup=setup).write(tmp_path / "made.json")
    assert read_results(path).setup == setup
    assert json.loads(path.read_text())["setup"]["eval_transform"]["input_size"] == [3, 224, 224]
    # a key a newer release adds is skipped, not refused
    values = json.loads(path.read_text())
    values["setup"]["optimizer_betas"] = [0.9, 0.99]
    assert RunResults.from_dict(values).setup == setup


def test_an_old_results_json_is_read_into_a_setup():
    """tests/fixtures/v1: written by timm-gsp 0.2.0, a ``recipe`` of train.py's flags and no ``setup``."""
    results = read_results(V1_RUN)
    assert "setup" not in json.loads(V1_RUN.read_text())
    setup = results.setup
    assert (setup.model, setup.embed_dim, setup.learning_rates) == ("test_resnet", 8, {"head": 0.5})
    assert setup.pool == results.model.pool and setup.eval_transform == results.model.data_config
    assert (setup.epochs, setup.world_size) == (1, 1)
    assert setup.loss is None and setup.augmentation is None  # not recorded: not guessed
    assert RunResults.from_dict(results.to_dict()) == results  # written back, it keeps what it was read as


def committed_runs():
    paths = sorted((REPO / "benchmarks" / "results").rglob("results.json"))
    return [p for p in paths if json.loads(p.read_text()).get("format")]


def test_every_committed_benchmark_run_reads_into_its_setup():
    """Every results.json under benchmarks/results (train.py's flags as ``recipe``) reads, and its setup says
    what its flags said, in the library's names."""
    paths = committed_runs()
    assert len(paths) > 100
    for path in paths:
        results = read_results(path)
        flags, setup = results.recipe, results.setup
        assert (setup.dataset, setup.model, setup.optimizer, setup.schedule) == \
            (flags["dataset"], flags["model"], flags["opt"], flags["sched"]), path
        rates = {"backbone": flags["backbone_lr"], "head": flags["lr"], "prototypes": flags["prototype_lr"],
                 "loss": flags["loss_lr"]}
        if "setup" in json.loads(path.read_text()):  # recorded by the run: only the groups its optimiser had
            rates = {group: rate for group, rate in rates.items() if group in setup.learning_rates}
        assert setup.learning_rates == rates, path
        assert setup.augmentation["re_prob"] == flags["reprob"] and setup.augmentation["scale"] == flags["scale"], path
        assert setup.pool == results.model.pool and setup.eval_transform == results.model.data_config, path
        assert setup.zsr_weight == (flags["zsr_weight"] if results.model.gsp else 0.0), path
        assert (setup.seed, setup.epochs, setup.world_size) == (flags["seed"], results.epochs, results.world_size), path


def card_table(card_text):
    section = card_text.split("## Training recipe", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def test_the_model_card_reads_the_setup_not_flags(tmp_path):
    config = RetrievalModelConfig("test_resnet", embed_dim=8, pool=timm_gsp.format_gsp_spec(num_prototypes=4),
                                  data_config={"input_size": [3, 32, 32]})
    model = config.build().eval()
    setup = TrainingSetup(recipe=str(tmp_path / "home" / "me" / "mine.yaml"), dataset="cub", model="test_resnet",
                          pool=config.pool, loss="multisimilarity", zsr_weight=0.1, optimizer="adamw",
                          learning_rates={"backbone": 1e-5, "head": 1e-4}, augmentation={"scale": [0.16, 1.0]},
                          eval_transform={"crop_pct": 0.875}, seed=3, world_size=2)
    results = RunResults(model=config, metrics={"precision_at_1": 0.5}, dataset="cub", eval_split="test", setup=setup,
                         recipe={"lr": 123.0, "data_dir": "/home/me/data", "opt": "sgd"})  # flags: never read now
    card = (timm_gsp.save_pretrained(model, tmp_path / "published", results) / "README.md").read_text()
    rows = card_table(card)
    assert rows[:2] == ["| Setting | Value |", "|---|---|"]
    for row in ("| recipe | mine.yaml |", "| dataset | cub |", "| optimizer | adamw |", "| zsr_weight | 0.1 |",
                "| learning_rates.backbone | 1e-05 |", "| learning_rates.head | 0.0001 |",
                "| augmentation.scale | [0.16, 1.0] |", "| eval_transform.crop_pct | 0.875 |", "| world_size | 2 |"):
        assert row in rows, row
    assert not any(flag in card for flag in ("123.0", "sgd", "/home/me", "data_dir"))
    assert len(rows) == 2 + 13  # the fields that were recorded, none of the others


def test_the_model_card_of_an_old_run_shows_its_setup(tmp_path):
    results = read_results(V1_RUN)
    model = results.model.build().eval()
    card = (timm_gsp.save_pretrained(model, tmp_path / "published", V1_RUN) / "README.md").read_text()
    rows = card_table(card)
    assert "| learning_rates.head | 0.5 |" in rows and "| model | test_resnet |" in rows and "| epochs | 1 |" in rows
    assert "| lr | 0.5 |" not in rows  # the flag's name is not the card's


def test_setup_fields_are_documented():
    doc = TrainingSetup.__doc__
    for f in fields(TrainingSetup):
        assert f"{f.name}:" in doc or f"{f.name}," in doc, f.name
