"""Which queries a report shows (timm_gsp.retrieval.evaluate.retrieval_examples), against the metric's oracle."""
import pytest
import torch
import torch.nn.functional as F

from timm_gsp.metrics.retrieval import retrieval_metrics
from timm_gsp.retrieval.evaluate import retrieval_examples


def _embedded(num_classes=5, per_class=4, dim=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    embeddings = torch.randn(len(labels), dim, generator=generator) + 0.8 * torch.randn(num_classes, dim, generator=generator)[labels]
    return embeddings, labels


def test_average_precision_of_every_query_averages_to_map_at_r():
    embeddings, labels = _embedded()
    everything = retrieval_examples({"test": (embeddings, labels)}, num_sample=len(labels), num_worst=0)
    assert sorted(everything.queries.tolist()) == list(range(len(labels)))
    assert everything.average_precision.mean().item() == pytest.approx(retrieval_metrics(embeddings, labels)["map_at_r"], abs=1e-6)


def test_examples_are_a_seeded_sample_then_the_worst_queries():
    embeddings, labels = _embedded()
    first = retrieval_examples({"test": (embeddings, labels)}, k=3, num_sample=3, num_worst=4, seed=7)
    again = retrieval_examples({"test": (embeddings, labels)}, k=3, num_sample=3, num_worst=4, seed=7)
    assert torch.equal(first.queries, again.queries) and first.worst.tolist() == [False] * 3 + [True] * 4
    everything = retrieval_examples({"test": (embeddings, labels)}, num_sample=len(labels), num_worst=0)
    ap = dict(zip(everything.queries.tolist(), everything.average_precision.tolist()))
    sampled, worst = first.queries[:3].tolist(), first.queries[3:].tolist()
    rest = sorted((ap[q], q) for q in ap if q not in sampled)
    assert [ap[q] for q in worst] == [value for value, _ in rest[:4]]
    # ranked by cosine similarity, best first, never the query itself
    assert first.neighbors.shape == (7, 3) and (first.neighbors != first.queries[:, None]).all()
    assert (first.scores[:, :-1] >= first.scores[:, 1:]).all()


def test_query_gallery_examples_search_the_gallery():
    embeddings, labels = _embedded()
    examples = retrieval_examples({"query": (embeddings[::2], labels[::2]), "gallery": (embeddings[1::2], labels[1::2])},
                                  k=2, num_sample=2, num_worst=1)
    assert (examples.query_split, examples.gallery_split) == ("query", "gallery")
    assert examples.neighbors.max() < len(labels[1::2])


def _dense_examples(query, query_labels, gallery, gallery_labels, same_set, k, num_sample, num_worst, seed):
    """The picks from first principles: the full cosine matrix sorted stably (ties by lower index),
    R from the dense label mask, AP@R by its definition; returns (picked queries, their top k)."""
    scores = F.normalize(query.double(), dim=1) @ F.normalize(gallery.double(), dim=1).T
    if same_set:
        scores.fill_diagonal_(float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True)[1]
    r = ((query_labels[:, None] == gallery_labels[None, :]).sum(1) - int(same_set)).tolist()
    ap = []
    for row, label, relevant in zip(order, query_labels, r):
        hits = (gallery_labels[row[:relevant]] == label).tolist()
        precisions = [sum(hits[:i + 1]) / (i + 1) for i, hit in enumerate(hits) if hit]
        ap.append(sum(precisions) / relevant if relevant else float("nan"))
    sample = torch.randperm(len(query), generator=torch.Generator().manual_seed(seed))[:num_sample].tolist()
    others = sorted((value, q) for q, value in enumerate(ap) if q not in sample and value == value)  # NaN: no R
    picked = sample + [q for _, q in others[:num_worst]]
    return picked, order[picked, :k]


@pytest.mark.parametrize("same_set", [True, False], ids=["same-set", "query-gallery"])
def test_picks_and_neighbours_equal_the_dense_definition(same_set):
    # Entries +-1/4 in 16-D: exact cosines, so many exact ties (and duplicate vectors) to break by index.
    g = torch.Generator().manual_seed(3)
    embeddings = (torch.randint(0, 2, (240, 16), generator=g) * 2 - 1) / 4.0
    embeddings[torch.randint(0, 240, (30,), generator=g)] = embeddings[torch.randint(0, 240, (30,), generator=g)]
    labels = torch.randint(0, 30, (240,), generator=g)
    embedded = {"test": (embeddings, labels)} if same_set else \
        {"query": (embeddings[:80], labels[:80]), "gallery": (embeddings[80:], labels[80:])}
    (query, query_labels), (gallery, gallery_labels) = (embedded["test"],) * 2 if same_set else embedded.values()
    examples = retrieval_examples(embedded, k=6, num_sample=5, num_worst=9, seed=2)
    picked, neighbors = _dense_examples(query, query_labels, gallery, gallery_labels, same_set, 6, 5, 9, 2)
    assert examples.queries.tolist() == picked
    assert torch.equal(examples.neighbors, neighbors)


# --- which splits can be evaluated at all (timm_gsp.retrieval.evaluate.check_evaluation_split) ----------------

def _split(root, classes, split="test", name="folder"):
    """A real dataset of real image files: ``classes`` is one class index per image."""
    from fixtures_data import make_image
    from timm_gsp.data.base import RetrievalDataset

    paths = [str(make_image(root / split / f"{c}_{i}.png", c, i)) for i, c in enumerate(classes)]
    return RetrievalDataset(paths, classes, [f"class{c}" for c in range(max(classes) + 1)], name=name, split=split)


def test_a_split_whose_queries_cannot_be_wrong_is_refused(tmp_path):
    from fixtures_data import make_folder_tree, make_inshop_tree
    from timm_gsp import ConfigError
    from timm_gsp.data import build_dataset
    from timm_gsp.retrieval.evaluate import check_evaluation_split

    one_class = {"all": build_dataset("folder", make_folder_tree(tmp_path / "one", num_classes=1, per_class=4), "all")}
    with pytest.raises(ConfigError, match="folder/all: every query's candidates are of its own class") as error:
        check_evaluation_split(one_class)
    assert "100 %" in str(error.value) and "whatever the model" in str(error.value)
    # In-Shop with one test item: query and gallery hold one class
    shop = make_inshop_tree(tmp_path / "shop", num_test_items=1, per_item=4)
    pair = {name: build_dataset("inshop", shop, name) for name in ("query", "gallery")}
    with pytest.raises(ConfigError, match="inshop/query\\+inshop/gallery: every query's candidates"):
        check_evaluation_split(pair)
    # a gallery that holds only class 0: the queries of class 1 have nothing to find, those of class 0 cannot miss
    only_zero = {"query": _split(tmp_path, [0, 1, 1], "query"), "gallery": _split(tmp_path, [0, 0, 0], "gallery")}
    with pytest.raises(ConfigError, match="every query's candidates are of its own class"):
        check_evaluation_split(only_zero)
    # no class with two images: nothing to retrieve (train.py's message, kept)
    with pytest.raises(ConfigError, match="no class has two or more images"):
        check_evaluation_split({"test": _split(tmp_path, [0, 1, 2])})


def test_a_split_that_measures_something_passes_with_its_chance_precision(tmp_path):
    from timm_gsp.retrieval.evaluate import chance_precision_at_1, check_evaluation_split

    # the lone class-1 image is not a query the metrics count, but it is a candidate the others can pick
    mixed = {"test": _split(tmp_path, [0, 0, 0, 1])}
    assert check_evaluation_split(mixed) == pytest.approx(2 / 3)  # each class-0 query: 2 of its 3 candidates
    mixed = {"test": _split(tmp_path, [0, 0, 1, 1])}
    assert check_evaluation_split(mixed) == pytest.approx(1 / 3) == chance_precision_at_1(mixed)
    pair = {"query": _split(tmp_path, [0, 1], "query"), "gallery": _split(tmp_path, [0, 0, 1], "gallery")}
    assert check_evaluation_split(pair) == pytest.approx((2 / 3 + 1 / 3) / 2)
