"""Folders written by an earlier timm-gsp still load: the fixtures in tests/fixtures/v1/.

``fixtures/v1`` was written by timm-gsp 0.2.0 (before issue 21 moved the model description, the
card and the model sources into their own modules; ``make_fixture.py`` there says how): a published
Hub folder, a training run (``results.json`` naming its checkpoint folder) and the embeddings each
model gave a fixed batch. Each must load with today's code, and with plain timm for the Hub folder,
and embed that batch as it did. (The arithmetic is the same, so the values agree to the last bit
here; the tolerance only allows for CPUs whose vector units round a sum differently.)
"""
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import timm_gsp
from timm_gsp.hub.model_sources import find_model, load_model
from timm_gsp.train.checkpoint import load_checkpoint
from timm_gsp.train.run_results import read_results

V1 = Path(__file__).resolve().parent / "fixtures" / "v1"
V1_POOL = "gsp:num_prototypes=4,transport_ratio=0.3,gamma=5.0"
V1_KWARGS = {"channels": [8, 16, 16, 32], "stem_width": 8, "output_stride": 8}


@pytest.fixture(scope="module")
def stored():
    """images (2, 3, 32, 32) and the embeddings (2, 8) the v1 models gave them."""
    return load_file(str(V1 / "embeddings.safetensors"))


def assert_same_embeddings(model, stored, key):
    with torch.no_grad():
        embeddings = model.eval()(stored["images"])
    torch.testing.assert_close(embeddings, stored[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("source, key", [
    ("published", "published"),
    ("local-dir:published", "published"),
    ("run/checkpoint", "checkpoint"),
    ("run", "checkpoint"),
    ("run/results.json", "checkpoint"),
])
def test_v1_sources_load_with_todays_loader(stored, source, key):
    prefix, _, path = source.rpartition(":")
    loaded = load_model(f"{prefix}:{V1 / path}" if prefix else V1 / path)
    assert not loaded.training
    assert_same_embeddings(loaded, stored, key)


def test_v1_published_folder_loads_with_plain_timm(stored):
    model = timm.create_model(f"local-dir:{V1 / 'published'}", pretrained=True)
    assert timm_gsp.gsp_modules(model) and model.num_classes == 8
    assert_same_embeddings(model, stored, "published")


def test_v1_descriptions_read_as_they_were_written():
    published, checkpoint = find_model(V1 / "published"), find_model(V1 / "run")
    for found in (published, checkpoint):
        config = found.config
        assert (config.model_name, config.embed_dim, config.pool, config.model_kwargs) == \
            ("test_resnet", 8, V1_POOL, V1_KWARGS)
        assert config.input_size == (3, 32, 32) and config.data_config["crop_pct"] == 1.0
    assert published.published and not checkpoint.published
    assert checkpoint.results == V1 / "run" / "results.json"  # the run's metrics belong to this checkpoint
    results = read_results(V1 / "run" / "results.json")
    assert results.model == checkpoint.config and results.metrics["precision_at_1"] == 0.5


def test_v1_training_state_and_card_still_read():
    from huggingface_hub import ModelCard

    model_state, state = load_checkpoint(V1 / "run" / "checkpoint")
    assert state == {"epoch": 1, "step": 3} and model_state.keys() == load_file(str(V1 / "run/checkpoint/model.safetensors")).keys()
    card = ModelCard.load(V1 / "published" / "README.md")  # the hand-written front matter of v1
    assert card.data.model_name == "v1-tiny"
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["map_at_r"] == 0.125
