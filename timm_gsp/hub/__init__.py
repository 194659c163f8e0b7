"""Published models in timm's own Hugging Face Hub format (a tool: loaded when used, never by the core).

* ``published``: a published folder: write (``save_pretrained``), check, read and rebuild;
* ``transfer``: to and from the Hub (upload only what changed, ``push_to_hub``, download);
* ``model_card``: the model card;
* ``model_sources``: ``find_model`` / ``load_model``, the one loader of every model source.
"""
