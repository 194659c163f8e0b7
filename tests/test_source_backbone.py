"""The committed pretrained backbone (``benchmarks/weights``, made by ``benchmarks/pretrain_backbone.py``):
it is the file its pretraining record names, small enough to commit, and it loads through timm's own
pretrained mechanism into a GSP retrieval model with every backbone tensor bit for bit and a new head."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import timm_gsp
from timm_gsp.utils import file_sha256

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "benchmarks" / "weights" / "mobilenetv3_small_100.source.safetensors"
RECORD = ROOT / "benchmarks" / "results" / "pretrain_backbone.json"


def test_record_names_the_committed_file():
    record = json.loads(RECORD.read_text())
    assert record["weights"] == WEIGHTS.relative_to(ROOT).as_posix()
    assert record["sha256"] == file_sha256(WEIGHTS)
    assert WEIGHTS.stat().st_size <= 10_000_000
    assert record["held_out_accuracy"]["top1"] > 1 / record["source"]["num_classes"] * 10  # it learnt its classes


@pytest.mark.parametrize("pool", ["gsp", "avg"])
def test_committed_weights_load_into_a_retrieval_model(pool):
    state = load_file(str(WEIGHTS))
    model = timm_gsp.create_model("mobilenetv3_small_100", pretrained_path=WEIGHTS, pool=pool, embed_dim=64)
    loaded = model.state_dict()
    classifier = {k for k in state if k.startswith("classifier.")}
    assert classifier == {"classifier.weight", "classifier.bias"}
    for key in set(state) - classifier:
        assert torch.equal(loaded[key], state[key]), key
    assert loaded["classifier.weight"].shape == (64, state["classifier.weight"].shape[1])  # the new embedding layer
    assert model.eval()(torch.rand(2, 3, 128, 128)).shape == (2, 64)
