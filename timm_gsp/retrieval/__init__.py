"""Using a retrieval model (a tool: loaded when used, never by the core).

* ``evaluate``: DDP-aware embedding and retrieval evaluation, example sheets;
* ``search``: embedding indexes on disk, exact (``metrics.knn``) and faiss search;
* ``viz``: pictures of GSP's pooling weights and of what a model retrieves.
"""
