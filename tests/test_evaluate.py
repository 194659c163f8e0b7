"""Which queries a report shows (timm_gsp.evaluate.retrieval_examples), against the metric's oracle."""
import pytest
import torch
import torch.nn.functional as F

from timm_gsp.evaluate import retrieval_examples
from timm_gsp.metrics import retrieval_metrics


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
