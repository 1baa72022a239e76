"""Every kvid layer through the shared harness."""

import pytest

from kvid import layers
from tests.kvid.layers.harness import run_layer_checks

VIDEO = (4, 8, 8, 8)
TOKENS = (3, 16)

CASES = [
    (layers.LayerNorm, {}, [VIDEO]),
    (layers.FrameConv, dict(filters=12, kernel_size=3, strides=2, activation="relu6"), [VIDEO]),
    (layers.FrameConv, dict(filters=12, kernel_size=1, groups=4), [VIDEO]),
    (layers.FrameConv, dict(depthwise=True, depth_multiplier=2, kernel_size=3), [VIDEO]),
    (layers.Conv2Plus1D, dict(kernel_size=(3, 3, 3), strides=(2, 2, 2)), [VIDEO]),
    (layers.Conv2Plus1D, dict(kernel_size=3, depth_multiplier=3, activation="hard_swish"), [VIDEO]),
    (layers.ChannelShuffle, dict(groups=4), [VIDEO]),
    (layers.DynamicReLU, dict(token_index=1, reduction=4), [VIDEO, TOKENS]),
    (layers.Mobile2Former, dict(num_heads=2), [VIDEO, TOKENS]),
    (layers.Mobile2Former, dict(formulation="factorized", max_keys_per_frame=16), [VIDEO, TOKENS]),
    (layers.Former2Mobile, dict(num_heads=2), [VIDEO, TOKENS]),
    (layers.Former, dict(num_heads=4, ffn_expansion=2), [TOKENS]),
    (layers.GlobalTokens, dict(num_tokens=3, token_dim=16), [VIDEO]),
    (layers.Normalize, dict(mean=[0.5] * 8, std=[0.25] * 8), [VIDEO]),
    (layers.DropPath, dict(rate=0.2), [VIDEO]),
    (layers.Activation, dict(activation="hard_swish"), [VIDEO]),
    (layers.PooledTokenConcat, dict(num_cls_tokens=2), [VIDEO, TOKENS]),
    (layers.DenseBN, dict(units=8), [(12,)]),
]


@pytest.mark.parametrize(
    "cls, kwargs, shapes", CASES, ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(CASES)]
)
def test_layer_harness(cls, kwargs, shapes):
    run_layer_checks(cls, kwargs, shapes)


def test_every_exported_layer_is_covered():
    covered = {cls.__name__ for cls, _, _ in CASES}
    exported = set(layers.__all__) - {"QuantizableLayer"}
    assert exported <= covered, sorted(exported - covered)
