"""Sample tensors and a tensor round trip, shared by the codec tests."""

from __future__ import annotations

import numpy as np

from stamen.compression.codecs import CodecPipeline


def normal(n: int, seed: int = 0) -> np.ndarray:
    """``n`` standard-normal float32 values."""
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def roundtrip(pipeline: CodecPipeline, x: np.ndarray, seed: int = 0) -> np.ndarray:
    """``x`` encoded by ``pipeline`` and decoded again, as a receiver sees it."""
    message = pipeline.encode_tensor("t", x, np.random.default_rng(seed))
    return pipeline.decode_tensor(message, x.shape)
