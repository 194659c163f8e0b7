"""Retrieval models, as timm's ``models`` holds its architectures (the core).

* ``factory``: ``create_model`` / ``convert`` (any timm model -> pool + embedding) and
  ``GSPRetrievalNet`` (registered with timm as ``gsp_retrieval``);
* ``plain_cnn``: ``PlainCNN``, registered as ``plain_cnn6``;
* ``model_config``: ``RetrievalModelConfig``, the one description of a retrieval model in every stored form.
"""
