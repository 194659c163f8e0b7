"""examples/model_card/ is what today's writer makes of a run: a fresh ``examples/train.py`` run (tiny) and
its ``timm-gsp export`` give a folder of the same files and a card of the same shape as the committed
one (the same section headings, the same keys in the YAML front matter; not the same numbers).

When this fails because the writer changed, regenerate the example with
``bash examples/model_card/regenerate.sh`` (the default run and its export, a few minutes on a CPU).
"""
from __future__ import annotations

import re
import sys

import pytest
import yaml

import timm_gsp
from timm_gsp.cli import main as cli_main
from timm_gsp.hub.model_sources import load_model

from conftest import REPO
from fixtures_data import make_folder_tree

sys.path.insert(0, str(REPO / "examples"))
import train as train_script  # noqa: E402

EXAMPLE = REPO / "examples" / "model_card"


def card_shape(text: str):
    """(the key structure of the YAML front matter, the Markdown headings outside code blocks)."""
    _, front, body = text.split("---\n", 2)

    def keys(value):
        if isinstance(value, dict):
            return {key: keys(item) for key, item in value.items()}
        if isinstance(value, list):
            return [keys(item) for item in value]
        return type(value).__name__ if isinstance(value, (bool, int, float)) and not isinstance(value, bool) else None

    headings, fenced = [], False
    for line in body.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            headings.append(line)
    return keys(yaml.safe_load(front)), headings


def test_card_shape_sees_headings_and_keys_only():
    card = "---\na: 1\nb:\n- c: x\n---\n# T\n\n## One\n```python\n# not a heading\n```\n## Two\n"
    assert card_shape(card) == ({"a": "int", "b": [{"c": None}]}, ["# T", "## One", "## Two"])
    assert card_shape(card.replace("a: 1", "a: 2").replace("c: x", "c: y")) == card_shape(card)
    assert card_shape(card.replace("## Two", "## Three")) != card_shape(card)
    assert card_shape(card.replace("b:", "d:")) != card_shape(card)


def test_the_committed_example_loads_with_todays_code():
    model = load_model(EXAMPLE)
    assert timm_gsp.gsp_modules(model), "a GSP model"
    assert (EXAMPLE / "regenerate.sh").is_file()


@pytest.fixture(scope="module")
def fresh_export(tmp_path_factory):
    """A tiny examples/train.py run on an image folder (evaluated on its test classes, so the export
    draws the example pictures) and its ``timm-gsp export``."""
    tmp = tmp_path_factory.mktemp("card")
    data = make_folder_tree(tmp / "data", num_classes=6, per_class=4, image_size=32)
    run = tmp / "train"
    assert train_script.main(["--dataset", "folder", "--data-dir", str(data), "--model", "test_resnet", "--no-pretrained",
                              "--img-size", "32", "--embed-dim", "8", "--num-prototypes", "4", "--batch-size", "4",
                              "--m-per-class", "2", "--workers", "0", "--no-progress", "--epochs", "1",
                              "--output", str(run)]) == 0
    assert cli_main(["export", str(run), str(run / "hub")]) == 0
    return run / "hub"


def test_a_fresh_export_has_the_committed_files(fresh_export):
    committed = sorted(p.name for p in EXAMPLE.iterdir() if p.name != "regenerate.sh")
    assert sorted(p.name for p in fresh_export.iterdir()) == committed


def test_a_fresh_export_has_the_committed_card_shape(fresh_export):
    fresh_keys, fresh_headings = card_shape((fresh_export / "README.md").read_text())
    committed_keys, committed_headings = card_shape((EXAMPLE / "README.md").read_text())
    assert fresh_headings == committed_headings, "regenerate: bash examples/model_card/regenerate.sh"
    assert fresh_keys == committed_keys, "regenerate: bash examples/model_card/regenerate.sh"
