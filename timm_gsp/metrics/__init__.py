"""Retrieval metrics (the core, loaded on first use: torchmetrics is slow to import).

* ``knn``: the one exact k-NN (blockwise running top-k, ties by (score, index));
* ``retrieval``: ``RetrievalMetrics`` / ``retrieval_metrics`` (P@1, Recall@K, R-Precision, MAP@R).

This file imports nothing, so ``knn`` loads without torchmetrics.
"""
