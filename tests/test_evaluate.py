"""Which queries a report shows (timm_gsp.evaluate.retrieval_examples), against the metric's oracle."""
import pytest
import torch

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
