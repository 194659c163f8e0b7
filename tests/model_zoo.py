"""Small timm architectures spanning CNN, NHWC, hybrid and token families, with inputs they accept.

(name, extra create_model kwargs, input (H, W)); used by the plugin and factory tests. The lists hold the
models the installed timm knows (CI also runs on the oldest supported release).
"""
# Families whose constructor asserted on the pool name before a timm release: through global_pool they
# raise GSPUnsupportedModelError on older timm (timm_gsp.create_model wraps them instead).
GLOBAL_POOL_SINCE = {"swin_tiny_patch4_window7_224": (1, 0, 31)}


def timm_version():
    import timm
    return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in timm.__version__.split(".")[:3])


def reachable(name: str) -> bool:
    """Whether ``global_pool="gsp"`` reaches this model on the installed timm."""
    return timm_version() >= GLOBAL_POOL_SINCE.get(name, (0,))


def installed(models):
    """The entries of a model list that the installed timm knows (older releases lack newer families)."""
    import timm
    return [entry for entry in models if timm.is_model(entry[0] if isinstance(entry, tuple) else entry)]


CNNS = [
    ("resnet10t", {}, (64, 64)),
    ("resnext26ts", {}, (64, 64)),
    ("convnext_atto", {}, (64, 64)),
    ("efficientnet_b0", {}, (64, 64)),
    ("mobilenetv3_small_050", {}, (64, 64)),
    ("mobilenetv4_conv_small", {}, (64, 64)),
    ("regnetx_002", {}, (64, 64)),
    ("densenet121", {}, (64, 64)),
    ("inception_v3", {}, (96, 96)),
    ("xception41", {}, (96, 96)),
    ("nf_resnet26", {}, (64, 64)),
    ("ghostnet_100", {}, (64, 64)),
    ("hgnetv2_b0", {}, (64, 64)),
    ("fastvit_t8", {}, (64, 64)),
    ("cspresnet50", {}, (64, 64)),
    ("dla34", {}, (64, 64)),
    ("res2net50_14w_8s", {}, (64, 64)),
    ("rexnet_100", {}, (64, 64)),
    ("lcnet_050", {}, (64, 64)),
    ("efficientvit_b0", {}, (64, 64)),
    ("edgenext_xx_small", {}, (64, 64)),
    ("poolformer_s12", {}, (64, 64)),
    ("starnet_s1", {}, (64, 64)),
    ("fasternet_t0", {}, (64, 64)),
    ("tresnet_m", {}, (64, 64)),
]
NHWC_AND_HYBRIDS = [
    ("swin_tiny_patch4_window7_224", {"img_size": 112}, (112, 112)),
    ("maxvit_nano_rw_256", {"img_size": 128}, (128, 128)),
    ("coatnet_nano_rw_224", {"img_size": 64}, (64, 64)),
    ("mobilevitv2_050", {}, (64, 64)),
    ("vit_small_r26_s32_224", {"img_size": 64}, (64, 64)),
    ("hiera_tiny_224", {}, (224, 224)),
]
VITS = [
    ("vit_tiny_patch16_224", {"img_size": 64}, (64, 64)),
    ("deit_tiny_patch16_224", {"img_size": 64}, (64, 64)),
    ("vit_small_patch14_reg4_dinov2", {"img_size": 56}, (56, 56)),
    ("vit_medium_patch16_gap_256", {"img_size": 64}, (64, 64)),
    ("eva02_tiny_patch14_224", {"img_size": 56}, (56, 56)),
    ("beit_base_patch16_224", {"img_size": 64}, (64, 64)),
    ("vitamin_small_224", {"img_size": 64}, (64, 64)),
]
ALL = installed(CNNS + NHWC_AND_HYBRIDS + VITS)
# Families that build their pooling outside timm's global_pool machinery: only the factory reaches them.
WRAPPED = installed([
    ("xcit_nano_12_p16_224", {"img_size": 64}, (64, 64)),
    ("levit_128s", {}, (224, 224)),
    ("mixer_s16_224", {"img_size": 64}, (64, 64)),
])
