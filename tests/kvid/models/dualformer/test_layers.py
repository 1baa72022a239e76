"""Numerical checks of DualFormer's small layers."""

import numpy as np

from kvid.models.dualformer.position_embedding import PositionEmbedding


def test_position_embedding_adds_the_spatial_and_temporal_tables():
    layer = PositionEmbedding()
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5, 6)).astype(np.float32)
    out = layer(x).numpy()
    spatial, temporal = layer.spatial.numpy(), layer.temporal.numpy()
    assert spatial.shape == (4, 5, 6) and temporal.shape == (3, 6)
    assert spatial.std() > 0.01 and temporal.std() > 0.01
    np.testing.assert_allclose(out - x, np.broadcast_to(
        spatial[None, None] + temporal[None, :, None, None], x.shape), atol=1e-6)  # fmt: skip
