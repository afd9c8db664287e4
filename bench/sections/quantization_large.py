"""`python -m bench --only quantization_large`: the `quantization` section's comparison (float, post-training
int8, QAT int8 and 16x8, with paired flips, sizes and the worst layer) on the bundled cases that take minutes
each on 2 cores: the sign-language photos at 64x64 (small_cnn, ds_cnn) and the application backbones on the
photos at 32x32 (mobilenet_v3_small with hard-swish, efficientnet_v2_b0 with swish and squeeze-excite),
trained from scratch with the defaults. The default QAT only (no variants: each QAT of a backbone is
minutes). Nothing here is asserted."""

from bench.common import SIGNS, Section
from bench.sections import quantization

PHOTOS = [f'data.source="{SIGNS}"', "data.channels=3", "data.calibration_samples=100"]
CASES = [
    ("sign-language photos 64x64 RGB, small_cnn", [*PHOTOS, "data.image_size=64"]),
    ("sign-language photos 64x64 RGB, ds_cnn", [*PHOTOS, "data.image_size=64", 'train.recipe="ds_cnn"']),
    ("sign-language photos 32x32 RGB, mobilenet_v3_small", [*PHOTOS, 'train.recipe="mobilenet_v3_small"']),
    ("sign-language photos 32x32 RGB, efficientnet_v2_b0", [*PHOTOS, 'train.recipe="efficientnet_v2_b0"']),
]

SECTION = Section("Quantization on larger images and backbones",
                  "the quantization comparison on the photos at 64x64 and mobilenet_v3_small / efficientnet_v2_b0",
                  "quantization_large",
                  lambda args, work, tc: quantization.quantization(work, tc, CASES, (), "quantization_large"),
                  quantization.markdown)
