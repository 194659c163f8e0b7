"""Zero-shot regularisation: numpy oracle, gradients, errors, and the metric-loss wrapper on GSP models."""
import gc
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from pytorch_metric_learning import losses, miners

from timm_gsp import GeneralizedSumPool, capture_transport
from timm_gsp.loss.zsr import GSPMetricLoss, ZeroShotLoss, zero_shot_loss

NUM_CLASSES = 4
EMBED_DIM = 16
# Samples of a class next to each other (as an M-per-class sampler emits them): every class in both halves.
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


# ----------------------------------------------------------------------------------------------- oracle
def numpy_zero_shot_loss(attributes, labels, class_embeddings, ridge_lambda=0.05, scale=9.5):
    """The ZSR formula of docs/method.md written out in float64 numpy with an explicit inverse."""
    x = np.asarray(attributes, dtype=np.float64)
    e = np.asarray(class_embeddings, dtype=np.float64)
    y = np.asarray(labels)
    half_a, half_b = np.arange(0, len(y), 2), np.arange(1, len(y), 2)
    per_sample = np.full(len(y), np.nan)
    for fit, query in ((half_a, half_b), (half_b, half_a)):
        x_fit, y_fit = x[fit], e[y[fit]]
        w = x_fit.T @ np.linalg.inv(x_fit @ x_fit.T + ridge_lambda * np.eye(len(fit))) @ y_fit
        logits = scale * (x[query] @ w) @ e.T
        log_norm = logits.max(1) + np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))
        per_sample[query] = log_norm - logits[np.arange(len(query)), y[query]]
    # Every sample is predicted once, by the other half; the loss is the mean over all of them.
    return per_sample.mean()


def random_attributes(batch, k, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(batch, k, generator=generator, dtype=dtype), dim=1)


@pytest.mark.parametrize("labels", [LABELS, torch.tensor([2, 2, 0, 1, 1, 0, 2, 3, 3])], ids=["even", "odd"])
def test_matches_numpy_oracle(labels):
    x = random_attributes(len(labels), 6)
    e = torch.randn(NUM_CLASSES, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for ridge_lambda, scale in [(0.05, 9.5), (0.5, 2.0)]:
        expected = numpy_zero_shot_loss(x.numpy(), labels.numpy(), e.numpy(), ridge_lambda, scale)
        got = zero_shot_loss(x, labels, e, ridge_lambda, scale)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    # float32 input is computed in float32 and still agrees with the float64 oracle.
    got32 = zero_shot_loss(x.float(), labels, e.float())
    assert got32.dtype == torch.float32
    assert got32.item() == pytest.approx(numpy_zero_shot_loss(x.numpy(), labels.numpy(), e.numpy()), rel=1e-4)


def test_halves_are_even_and_odd_positions():
    # Moving the samples changes which samples fit the predictor: the loss must follow the positions.
    x, e = random_attributes(8, 6), torch.randn(NUM_CLASSES, 5, dtype=torch.float64)
    order = torch.tensor([0, 1, 2, 4, 3, 5, 6, 7])  # still both halves share classes
    shuffled = zero_shot_loss(x[order], LABELS[order], e).item()
    assert shuffled == pytest.approx(numpy_zero_shot_loss(x[order].numpy(), LABELS[order].numpy(), e.numpy()), rel=1e-10)
    assert shuffled != pytest.approx(zero_shot_loss(x, LABELS, e).item(), rel=1e-3)


def test_module_uses_its_class_embeddings_and_hyper_parameters():
    criterion = ZeroShotLoss(NUM_CLASSES, class_embed_dim=5, ridge_lambda=0.2, scale=3.0).double()
    x = random_attributes(8, 6)
    expected = numpy_zero_shot_loss(x.numpy(), LABELS.numpy(), criterion.class_embeddings.detach().numpy(), 0.2, 3.0)
    assert criterion(x, LABELS).item() == pytest.approx(expected, rel=1e-10)


def test_gradcheck_attributes_and_class_embeddings():
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    x = random_attributes(6, 4).requires_grad_()
    e = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: zero_shot_loss(a, labels, b), (x, e))
    assert torch.autograd.gradcheck(lambda a, b: zero_shot_loss(a, labels, b, 0.3, 2.0), (x, e))


def test_class_embeddings_are_he_normal_with_fan_in():
    torch.manual_seed(0)
    criterion = ZeroShotLoss(num_classes=300, class_embed_dim=200)
    e = criterion.class_embeddings
    assert e.shape == (300, 200) and e.requires_grad
    assert e.std().item() == pytest.approx(math.sqrt(2 / 200), rel=0.03)
    assert abs(e.mean().item()) < 0.01


def test_autocast_does_not_lower_precision():
    x, e = random_attributes(8, 6, dtype=torch.float32), torch.randn(NUM_CLASSES, 5)
    reference = zero_shot_loss(x, LABELS, e)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = zero_shot_loss(x, LABELS, e)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference)


@pytest.mark.parametrize(
    "attributes, labels, match",
    [
        (random_attributes(4, 3), torch.tensor([0, 1, 0, 1]), r"classes \[0\].*classes \[1\]\) share no class"),
        (random_attributes(4, 3), torch.tensor([0, 0, 1, NUM_CLASSES]), r"\[0, 4\).*\[0, 4\]"),
        (random_attributes(4, 3), torch.tensor([0, 0, -1, -1]), r"\[0, 4\)"),
        (random_attributes(1, 3), torch.tensor([0]), "at least 2"),
        (random_attributes(4, 3), torch.tensor([0, 0, 1]), "labels must have shape"),
        (random_attributes(4, 3)[:, :, None], torch.tensor([0, 0, 1, 1]), r"attributes must have shape \(B, K\)"),
        (random_attributes(4, 3), torch.tensor([0.0, 0.0, 1.0, 1.0]), "integer"),
    ],
    ids=["no-shared-class", "label-too-large", "negative-label", "batch-of-one", "length-mismatch", "3d", "float-labels"],
)
def test_errors(attributes, labels, match):
    with pytest.raises(ValueError, match=match):
        ZeroShotLoss(NUM_CLASSES)(attributes, labels)


@pytest.mark.parametrize(
    "kwargs", [dict(num_classes=0), dict(class_embed_dim=0), dict(ridge_lambda=0.0), dict(scale=-1.0)]
)
def test_bad_hyper_parameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ZeroShotLoss(**{"num_classes": NUM_CLASSES, **kwargs})


# ---------------------------------------------------------------------------------------------- wrapper
class PlainNet(nn.Sequential):
    """A model without GSP (its class name must appear in the wrapper's error)."""


def tiny_gsp_model(num_prototypes=8):
    """timm test_resnet features (96 x 3 x 3 at 96 px) -> GSP -> linear embedding."""
    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=0, global_pool="")
    pool = GeneralizedSumPool(in_chs=backbone.num_features, num_prototypes=num_prototypes)
    model = nn.Sequential(backbone, pool, nn.Linear(backbone.num_features, EMBED_DIM))
    images = torch.randn(len(LABELS), 3, 96, 96)
    with torch.no_grad():
        # Prototypes on the features (as the k-center warm-up does): random ones give uniform attributes.
        pool.init_prototypes_kcenter(backbone(images))
    return model, images


@pytest.fixture(scope="module")
def model_and_images():
    return tiny_gsp_model()


def metric_losses():
    return {
        "contrastive": lambda: losses.ContrastiveLoss(),
        "triplet": lambda: losses.TripletMarginLoss(margin=0.2),
        "multi-similarity": lambda: losses.MultiSimilarityLoss(),
        "proxy-anchor": lambda: losses.ProxyAnchorLoss(NUM_CLASSES, EMBED_DIM),
    }


@pytest.mark.parametrize("name", list(metric_losses()))
def test_total_is_weighted_sum_and_gradients_reach_prototypes_and_class_embeddings(model_and_images, name):
    model, images = model_and_images
    model.zero_grad()
    weight = 0.3
    criterion = GSPMetricLoss(metric_losses()[name](), model, NUM_CLASSES, zsr_weight=weight)
    with capture_transport(model, detach=False) as plans:  # an independent look at the attributes
        embeddings = model(images)
    total = criterion(embeddings, LABELS)

    metric = criterion.metric_loss(embeddings, LABELS)
    zsr = zero_shot_loss(plans[-1].attributes, LABELS, criterion.zsr.class_embeddings)
    torch.testing.assert_close(total, (1 - weight) * metric + weight * zsr)
    assert abs(total.item() - metric.item()) > 1e-3  # the ZSR term is really in there
    torch.testing.assert_close(criterion.last_zsr_loss, zsr.detach())

    total.backward()
    pool = model[1]
    assert pool.prototypes.grad is not None and pool.prototypes.grad.abs().sum() > 0
    assert criterion.zsr.class_embeddings.grad.abs().sum() > 0
    for parameter in criterion.metric_loss_parameters():  # ProxyAnchor's proxies
        assert parameter.grad.abs().sum() > 0
    criterion.remove()


def test_zsr_gradient_alone_reaches_prototypes_and_backbone(model_and_images):
    model, images = model_and_images
    model.zero_grad()
    with GSPMetricLoss(losses.ContrastiveLoss(), model, NUM_CLASSES, zsr_weight=1.0) as criterion:
        criterion(model(images), LABELS).backward()
    assert model[1].prototypes.grad.abs().sum() > 0
    assert next(model[0].parameters()).grad.abs().sum() > 0  # the stem
    assert model[2].weight.grad is None or model[2].weight.grad.abs().sum() == 0  # the head does not feed ZSR


def test_extra_arguments_go_to_the_metric_loss(model_and_images):
    model, images = model_and_images
    metric = losses.TripletMarginLoss(margin=0.2)
    with GSPMetricLoss(metric, model, NUM_CLASSES, zsr_weight=0.25) as criterion:
        embeddings = model(images)
        pairs = miners.TripletMarginMiner(margin=0.2, type_of_triplets="all")(embeddings, LABELS)
        total = criterion(embeddings, LABELS, indices_tuple=pairs)
        zsr = criterion.zsr(criterion.captured_attributes(), LABELS)
        torch.testing.assert_close(total, 0.75 * metric(embeddings, LABELS, indices_tuple=pairs) + 0.25 * zsr)


def test_zero_weight_is_the_metric_loss_without_hook(model_and_images):
    model, images = model_and_images
    metric = losses.MultiSimilarityLoss()
    criterion = GSPMetricLoss(metric, model, NUM_CLASSES, zsr_weight=0.0)
    assert not model[1].transport._forward_hooks and not criterion.hooked
    embeddings = model(images)
    assert torch.equal(criterion(embeddings, LABELS), metric(embeddings, LABELS))
    assert list(criterion.zsr_parameters()) == [] and criterion.zsr is None
    with pytest.raises(ValueError, match="zsr_weight=0"):
        criterion.zsr_weight = 0.1
    # No GSP needed either: the same training code runs a GAP baseline.
    plain = PlainNet(nn.Flatten(), nn.Linear(3 * 96 * 96, EMBED_DIM))
    GSPMetricLoss(metric, plain, NUM_CLASSES, zsr_weight=0.0)(plain(images), LABELS)


def test_weight_can_be_scheduled_down_to_zero(model_and_images):
    model, images = model_and_images
    with GSPMetricLoss(losses.ContrastiveLoss(), model, NUM_CLASSES) as criterion:
        assert criterion.zsr_weight == 0.1
        criterion.zsr_weight = 0.0
        embeddings = model(images)
        assert torch.equal(criterion(embeddings, LABELS), criterion.metric_loss(embeddings, LABELS))
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            criterion.zsr_weight = 1.5


def test_parameters_and_state_dict_exclude_the_model(model_and_images):
    model, _ = model_and_images
    with GSPMetricLoss(losses.ProxyAnchorLoss(NUM_CLASSES, EMBED_DIM), model, NUM_CLASSES, class_embed_dim=32) as criterion:
        assert set(criterion.state_dict()) == {"metric_loss.proxies", "zsr.class_embeddings"}
        metric_ids = {id(p) for p in criterion.metric_loss_parameters()}
        zsr_ids = {id(p) for p in criterion.zsr_parameters()}
        assert metric_ids == {id(criterion.metric_loss.proxies)}
        assert zsr_ids == {id(criterion.zsr.class_embeddings)}
        assert {id(p) for p in criterion.parameters()} == metric_ids | zsr_ids
        assert criterion.zsr.class_embeddings.shape == (NUM_CLASSES, 32)
        assert criterion.model is model
        assert all(not name.startswith(("0.", "1.", "2.")) for name, _ in criterion.named_modules())


def test_errors_of_the_wrapper(model_and_images):
    model, images = model_and_images
    plain = PlainNet(nn.Flatten(), nn.Linear(3 * 96 * 96, EMBED_DIM))
    with pytest.raises(ValueError, match="PlainNet has no GeneralizedSumPool"):
        GSPMetricLoss(losses.ContrastiveLoss(), plain, NUM_CLASSES)
    with pytest.raises(TypeError, match="nn.Module"):
        GSPMetricLoss(lambda e, y: e.sum(), model, NUM_CLASSES)
    with pytest.raises(ValueError, match=r"zsr_weight must be in \[0, 1\]"):
        GSPMetricLoss(losses.ContrastiveLoss(), model, NUM_CLASSES, zsr_weight=-0.1)
    with pytest.raises(ValueError, match="not one of the GSP pools"):
        GSPMetricLoss(losses.ContrastiveLoss(), model, NUM_CLASSES, gsp_pool="head")
    with pytest.raises(ValueError, match="DataParallel"):
        GSPMetricLoss(losses.ContrastiveLoss(), nn.DataParallel(model), NUM_CLASSES)

    with GSPMetricLoss(losses.ContrastiveLoss(), model, NUM_CLASSES) as criterion:
        embeddings = torch.randn(len(LABELS), EMBED_DIM)
        with pytest.raises(RuntimeError, match="before calling the loss"):
            criterion(embeddings, LABELS)
        with torch.no_grad():
            model(images[:6])
        with pytest.raises(ValueError, match="batch size 6.*8 labels"):
            criterion(embeddings, LABELS)
        model(images)
        with pytest.raises(ValueError, match="share no class"):
            criterion(embeddings, torch.tensor([0, 1, 0, 1, 0, 1, 0, 1]))


def test_remove_context_and_garbage_collection_detach_the_hook(model_and_images):
    model, images = model_and_images
    transport = model[1].transport
    criterion = GSPMetricLoss(losses.ContrastiveLoss(), model, NUM_CLASSES)
    assert len(transport._forward_hooks) == 1
    criterion.remove()
    criterion.remove()  # idempotent
    assert not transport._forward_hooks and not criterion.hooked
    with pytest.raises(RuntimeError, match="remove"):
        criterion(model(images), LABELS)

    with GSPMetricLoss(losses.ContrastiveLoss(), model, NUM_CLASSES):
        assert len(transport._forward_hooks) == 1
    assert not transport._forward_hooks

    GSPMetricLoss(losses.ContrastiveLoss(), model, NUM_CLASSES)  # dropped at once
    gc.collect()
    assert not transport._forward_hooks


class TwoPools(nn.Module):
    """Two GSP pools on the same features, with different K, run in the order second, first."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.first = GeneralizedSumPool(8, num_prototypes=3)
        self.second = GeneralizedSumPool(8, num_prototypes=5)

    def forward(self, x):
        features = self.stem(x)
        return torch.cat([self.second(features), self.first(features)], dim=1)


def test_several_pools_latest_in_forward_order_or_selected():
    torch.manual_seed(0)
    model, images = TwoPools(), torch.randn(len(LABELS), 3, 16, 16)
    with GSPMetricLoss(losses.ContrastiveLoss(), model, NUM_CLASSES) as criterion:
        model(images)
        assert criterion.captured_attributes().shape == (len(LABELS), 3)  # `first` ran last
    for selected in ["second", model.second]:
        with GSPMetricLoss(losses.ContrastiveLoss(), model, NUM_CLASSES, gsp_pool=selected) as criterion:
            criterion(model(images), LABELS).backward()
            assert criterion.captured_attributes().shape == (len(LABELS), 5)
            assert not model.first.transport._forward_hooks


def test_timm_global_pool_gsp_model():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=EMBED_DIM, global_pool="gsp:num_prototypes=8")
    with GSPMetricLoss(losses.MultiSimilarityLoss(), model, NUM_CLASSES) as criterion:
        with capture_transport(model, detach=False) as plans:
            embeddings = model(torch.randn(len(LABELS), 3, 64, 64))
        total = criterion(embeddings, LABELS)
        zsr = zero_shot_loss(plans[-1].attributes, LABELS, criterion.zsr.class_embeddings)
        torch.testing.assert_close(total, 0.9 * criterion.metric_loss(embeddings, LABELS) + 0.1 * zsr)


def test_distributed_data_parallel_model(tmp_path, model_and_images):
    import torch.distributed as dist

    model, images = model_and_images
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp_model = nn.parallel.DistributedDataParallel(model)
        with GSPMetricLoss(losses.ContrastiveLoss(), ddp_model, NUM_CLASSES) as criterion:
            assert criterion.model is model and "Sequential" in repr(criterion)
            model.zero_grad()
            criterion(ddp_model(images), LABELS).backward()
            assert model[1].prototypes.grad.abs().sum() > 0
            assert criterion.captured_attributes().shape == (len(LABELS), 8)
    finally:
        dist.destroy_process_group()


def test_border_pool_feeds_zsr_through_its_attributes():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=EMBED_DIM,
                              global_pool="gsp:num_prototypes=8,border=1")
    images = torch.randn(len(LABELS), 3, 128, 128)  # a 4x4 map: a 2x2 interior
    with GSPMetricLoss(losses.ContrastiveLoss(), model, NUM_CLASSES, zsr_weight=1.0) as criterion:
        with capture_transport(model, detach=False) as plans:
            embeddings = model(images)
        assert plans[-1].weights.shape == (len(LABELS), 16)
        torch.testing.assert_close(criterion.captured_attributes(), plans[-1].attributes)
        criterion(embeddings, LABELS).backward()
    (_, pool), = [(n, m) for n, m in model.named_modules() if isinstance(m, GeneralizedSumPool)]
    assert pool.prototypes.grad.abs().sum() > 0


def test_a_copy_of_the_hooked_model_does_not_feed_the_criterion(model_and_images):
    """An EMA copy (deepcopy) or a saved copy (pickle) of a hooked model, made after a training
    forward, has hooks of its own: its forwards leave the criterion's capture alone."""
    import copy
    import io

    model, images = model_and_images
    with GSPMetricLoss(losses.ContrastiveLoss(), model, NUM_CLASSES) as criterion:
        model(images)
        captured = criterion.captured_attributes()
        assert captured.grad_fn is not None
        twin = copy.deepcopy(model)
        with torch.no_grad():
            twin(images[:4])
        assert criterion.captured_attributes() is captured
        buffer = io.BytesIO()
        torch.save(model, buffer)  # the hooks hold no graph that would refuse to be saved
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        with torch.no_grad():
            loaded(images[:2])
        assert criterion.captured_attributes() is captured
        assert copy.deepcopy(criterion).hooked  # the criterion deep-copies, as before
