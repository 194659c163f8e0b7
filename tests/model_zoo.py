"""Small timm architectures spanning CNN, NHWC, hybrid and token families, with inputs they accept.

(name, extra create_model kwargs, input (H, W)); used by the plugin and factory tests.
"""
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
ALL = CNNS + NHWC_AND_HYBRIDS + VITS
# Families that build their pooling outside timm's global_pool machinery: only the factory reaches them.
WRAPPED = [
    ("xcit_nano_12_p16_224", {"img_size": 64}, (64, 64)),
    ("levit_128s", {}, (224, 224)),
    ("mixer_s16_224", {"img_size": 64}, (64, 64)),
]
