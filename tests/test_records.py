"""What the project commits and publishes names no directory of the machine that wrote it.

* Every git-tracked text file under ``benchmarks/``, ``examples/`` and ``docs/`` (records, tables, notes,
  scripts) holds no absolute path of a machine: a home, scratch, temporary or work folder
  (``/root/``, ``/home/``, ``/Users/``, ``/work/``, ``/tmp/``, ... or a Windows drive ``C:\\``). URLs and
  placeholders (``<cache>/scenes-s0-v1``, ``/data/CUB_200_2011`` in a usage line) do not count.
* The benchmark harness (``benchmarks/_runs.py``) writes portable names: ``portable_path`` and
  ``scrub_run`` on real records, and ``train_run`` on a real run (slow).
* A published folder (``timm_gsp.save_pretrained``) holds none of the run's local paths.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import timm_gsp
from timm_gsp import RetrievalModelConfig
from timm_gsp.train.run_results import RunResults

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import _runs  # noqa: E402

FOLDERS = ("benchmarks", "examples", "docs")
# An absolute path of one machine: one of these first folders, not preceded by a character that would make
# it part of a URL (``https://host/home/...``), a relative path (``x/tmp/``) or a placeholder (``<cache>/``);
# or a Windows drive path.
MACHINE_PATH = re.compile(r"(?<![\w.:/\\~<>-])/(?:root|home|work|tmp|Users|mnt|var|private|scratch|opt|srv|media|Volumes)/"
                          r"|(?<![\w\\])[A-Za-z]:\\")


def tracked_text_files():
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    names = subprocess.run(["git", "ls-files", "-z", "--", *FOLDERS], cwd=REPO, check=True,
                           capture_output=True).stdout.decode("utf-8").split("\0")
    for name in filter(None, names):
        path = REPO / name
        if not path.is_file():  # deleted in the work tree, not yet committed
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary: pictures, weights
        try:
            yield name, data.decode("utf-8")
        except UnicodeDecodeError:
            continue


def machine_paths(text):
    return [m.group(0) for m in MACHINE_PATH.finditer(text)]


def test_the_pattern_finds_machine_paths_and_leaves_urls_and_placeholders():
    found = ['"dataset_root": "/root/.cache/timm_gsp/scenes-s0-v1"', "/work/main/benchmarks/x", "see /tmp/x.",
             "(/home/me/data)", '"C:\\\\Users\\\\me"', "`/Users/me/x`", "/private/var/folders/x"]
    kept = ["https://huggingface.co/home/x", "file://host/tmp/x", "<cache>/scenes-s0-v1", "benchmarks/results/tmp/x",
            "--data-dir /data/CUB_200_2011", "P@1 19/1999", "a / b", "~/.cache/timm_gsp", "/usr/share/datasets/x"]
    assert all(machine_paths(text) for text in found), [t for t in found if not machine_paths(t)]
    assert not any(machine_paths(text) for text in kept), [t for t in kept if machine_paths(t)]
    assert all(_runs.MACHINE_PATH.search(text) for text in found)  # the harness scrubs what this test finds
    assert not any(_runs.MACHINE_PATH.search(text) for text in kept)


def test_committed_files_hold_no_machine_path():
    offending = []
    checked = 0
    for name, text in tracked_text_files():
        checked += 1
        for number, line in enumerate(text.splitlines(), 1):
            for path in machine_paths(line):
                offending.append(f"{name}:{number}: {path}")
    assert checked > 100, "git listed the records"
    assert not offending, (f"{len(offending)} absolute machine paths (run `python benchmarks/scrub_records.py` on "
                           "records; write code and docs with relative paths or placeholders):\n" + "\n".join(offending[:20]))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("TIMM_GSP_CACHE", str(root))
    return root


def test_portable_path_forms(cache):
    p = _runs.portable_path
    assert p(_runs.ROOT / "benchmarks" / "results" / "x_runs" / "gap_seed0") == "benchmarks/results/x_runs/gap_seed0"
    assert p(cache / "scenes-s0-v1") == "<cache>/scenes-s0-v1"
    assert p("/root/.cache/timm_gsp/fashion-s0-v2/") == "<cache>/fashion-s0-v2"  # another machine's default cache
    assert p("/work/other_checkout/benchmarks/results/collage_runs/gap_seed0") == "benchmarks/results/collage_runs/gap_seed0"
    assert p("/tmp/data/fashion2_s0") == "<elsewhere>/fashion2_s0"
    assert p("C:\\Users\\me\\data\\CUB_200_2011") == "<elsewhere>/CUB_200_2011"
    for portable in ("benchmarks/x", "<cache>/scenes-s0-v1", "<elsewhere>/y", "folder-scratch"):
        assert p(portable) == portable


def _leaves(value, prefix=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{prefix}[{index}]")
    else:
        yield prefix, value


def test_scrub_run_rewrites_only_the_paths_of_a_real_record_and_is_idempotent(tmp_path, cache):
    """A run folder of ``RunResults.write`` (what examples/train.py writes) with the paths a benchmark
    run records: after ``scrub_run`` every number and key is the same, every path portable, the mode
    kept; a second scrub changes nothing; files in checkpoint folders are left alone."""
    run = tmp_path / "elsewhere" / "gsp_seed0"
    data = cache / "scenes-s0-v1"
    config = RetrievalModelConfig("test_resnet", embed_dim=8, pool=timm_gsp.format_gsp_spec(num_prototypes=4),
                                  data_config={"input_size": [3, 32, 32]})
    recipe = {"recipe": str(_runs.ROOT / "examples" / "recipes" / "folder.yaml"), "data_dir": str(data),
              "output": str(run), "lr": 0.0123456789, "scale": [0.08, 1.0], "seed": 3}
    RunResults(model=config, metrics={"precision_at_1": 0.123456789012, "map_at_r": 1 / 3}, dataset="folder",
               dataset_root=str(data), eval_split="test", checkpoint="checkpoint-best", recipe=recipe,
               wall_time_s=12.3456).write(run / "results.json")
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 0.5}\n')
    (run / "checkpoint-best").mkdir()
    (run / "checkpoint-best" / "training_state.json").write_text(json.dumps({"output": str(run)}))
    os.chmod(run / "results.json", 0o640)
    before = json.loads((run / "results.json").read_text())

    assert _runs.scrub_run(run) == [run / "results.json"]
    text = (run / "results.json").read_text()
    after = json.loads(text)
    assert not _runs.MACHINE_PATH.search(text) and str(tmp_path) not in text
    assert after["dataset_root"] == after["recipe"]["data_dir"] == "<cache>/scenes-s0-v1"
    assert after["recipe"]["recipe"] == "examples/recipes/folder.yaml"
    assert after["recipe"]["output"] == "<elsewhere>/gsp_seed0"  # a run outside the repository: its name
    old, new = dict(_leaves(before)), dict(_leaves(after))
    assert old.keys() == new.keys()
    assert {k: v for k, v in old.items() if not isinstance(v, str)} == {k: v for k, v in new.items() if not isinstance(v, str)}
    assert (run / "results.json").stat().st_mode & 0o777 == 0o640
    assert str(run) in (run / "checkpoint-best" / "training_state.json").read_text()  # never committed
    assert _runs.scrub_run(run) == [] and (run / "results.json").read_text() == text


def test_a_run_record_names_its_own_folder_as_its_output(tmp_path):
    """A run first written elsewhere (``/tmp/trials/x``) and kept under benchmarks/results: its output is
    the folder it is in now."""
    text = json.dumps({"recipe": {"output": "/tmp/trials/f2_gsp_issue", "data_dir": "/tmp/data/fashion2_s0"}}, indent=2)
    new = _runs.portable_text(text, "benchmarks/results/folder_search/fashion/cnn6_pa")
    assert json.loads(new) == {"recipe": {"output": "benchmarks/results/folder_search/fashion/cnn6_pa",
                                          "data_dir": "<elsewhere>/fashion2_s0"}}
    assert _runs.portable_text(new, "benchmarks/results/folder_search/fashion/cnn6_pa") == new


def test_record_files_skip_code_and_unfinished_runs():
    files = {p.relative_to(_runs.ROOT).as_posix() for p in _runs.record_files()}
    assert "benchmarks/recipe_search.md" in files and not any(f.endswith(".py") for f in files)
    unfinished = [f for f in files if f.endswith("metrics.jsonl")
                  and not (_runs.ROOT / f).with_name("results.json").is_file()]
    assert not unfinished


def test_train_run_writes_portable_records(tmp_path, cache):
    """A real (tiny) benchmark run through the harness: its results.json names the data by ``<cache>/...``
    and holds no path of this machine."""
    from timm_gsp.data.generated import default_config, write_family
    data = write_family("collage", cache / "collage-tiny", default_config("collage", num_classes=8, images_per_class=4,
                                                                          image_size=48), progress=False)
    out = tmp_path / "run"
    flags = ["--dataset", "folder", "--data-dir", str(data), "--model", "test_resnet", "--no-pretrained", "--img-size", "32",
             "--embed-dim", "8", "--num-prototypes", "4", "--batch-size", "8", "--m-per-class", "2", "--workers", "0",
             "--epochs", "1"]
    _runs.train_run(out, flags)
    text = (out / "results.json").read_text()
    assert json.loads(text)["dataset_root"] == "<cache>/collage-tiny"
    assert not _runs.MACHINE_PATH.search(text) and str(tmp_path) not in text


def test_a_published_folder_holds_no_local_path(tmp_path):
    """``save_pretrained`` with a run that recorded local paths everywhere (data, output, resume,
    pretrained weights, an absolute --recipe file, a path inside model_kwargs): no file of the folder
    names one."""
    local = tmp_path / "home" / "someone"
    config = RetrievalModelConfig("test_resnet", embed_dim=8, pool=timm_gsp.format_gsp_spec(num_prototypes=4),
                                  data_config={"input_size": [3, 32, 32]})
    model = config.build().eval()
    recipe = {"recipe": str(local / "recipes" / "mine.yaml"), "data_dir": str(local / "data"), "output": str(local / "run"),
              "resume": str(local / "run"), "pretrained_path": str(local / "w.safetensors"),
              "model_kwargs": {"file": str(local / "w2.safetensors")}, "lr": 0.01, "dataset": "folder"}
    results = RunResults(model=config, metrics={"precision_at_1": 0.5, "map_at_r": 0.25}, dataset="folder",
                         dataset_root=str(local / "data"), eval_split="test", checkpoint="checkpoint", recipe=recipe,
                         pretrained_weights={"file": "w.safetensors", "sha256": "0" * 64})
    folder = timm_gsp.save_pretrained(model, tmp_path / "published", results)
    texts = {p.name: p.read_text() for p in folder.iterdir() if p.suffix in (".md", ".json")}
    assert set(texts) == {"README.md", "config.json"}
    for name, text in texts.items():
        assert str(local) not in text and "someone" not in text, name
        assert not machine_paths(text), (name, machine_paths(text))
    assert "| recipe | mine.yaml |" in texts["README.md"]  # the recipe file, by its name


def _summary(**methods):
    """A benchmark summary as the benchmark scripts write it: method -> P@1 per seed (fractions)."""
    import numpy as np
    return {"methods": {name: {"runs": [{"seed": i, "precision_at_1": v} for i, v in enumerate(values)],
                               "precision_at_1_mean": float(np.mean(values)), "precision_at_1_std": float(np.std(values))}
                        for name, values in methods.items()}}


def test_pooling_table_judges_gsp_by_the_larger_seed_spread():
    """GSP is first when no baseline's mean is above it, tied-first when every baseline above it is within the
    larger of the two seed standard deviations, and otherwise behind the baseline furthest ahead."""
    import pooling_table
    assert pooling_table.gsp_verdict(_summary(gap=[.5, .5, .5], gsp=[.6, .6, .6])) == "first"
    # max is 1 point ahead; GSP's own spread is 2 points (std of .58/.62/.60 about .016): tied
    assert pooling_table.gsp_verdict(_summary(max=[.61, .61, .61], gsp=[.58, .62, .60])) == "tied-first"
    # 5 points ahead, both spreads near 0: behind, by 5.0
    assert pooling_table.gsp_verdict(_summary(max=[.65, .65, .65], gem=[.62, .62, .62], gsp=[.6, .6, .6])) == \
        "behind max by 5.0"
    assert pooling_table.gsp_verdict(_summary(max=[.65])) == "–"
    rows = pooling_table.table([("a", "nothing_written_here")], ["gap", "gsp"])
    assert rows[-1] == "| GSP against the best baseline | – |"
