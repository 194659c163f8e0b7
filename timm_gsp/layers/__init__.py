"""The GSP layer and its parts, as timm's ``layers`` holds its own (the core; no timm internals here).

* ``pool_spec``: the ``"gsp:..."`` pool string, the GSP defaults and the pool names a model may take;
* ``transport``: the closed-form partial transport GSP pools by (costs, threshold solver, gradients);
* ``gsp_pool``: ``GeneralizedSumPool`` (NCHW / NHWC / NLC features) and the transport-capture hooks;
* ``baseline_pools``: the pools GSP is compared with (avg, max, avgmax, catavgmax, GeM).
"""
