"""Losses, as timm's ``loss`` (the core): ``zsr``, GSP's zero-shot regularisation (``ZeroShotLoss``) and
``GSPMetricLoss``, which adds it to any metric-learning loss."""
