"""Pack an ONNX artifact so that pruned (zero) weights cost almost nothing on disk.

An INT8 QDQ graph stores each weight tensor densely, one byte per weight. A pruned weight is
a zero byte, and long zero runs compress to nearly nothing, so the artifact is stored as an
xz (LZMA2) stream of the ONNX bytes. The device unpacks it once, with Python's standard
library or any xz tool, before handing it to onnxruntime. Unpruned int8 weights compress
only a little; the saving comes from sparsity.

Examples:
    >>> blob = pack(b"\\x00" * 10_000 + b"onnx")
    >>> len(blob) < 200, unpack(blob) == b"\\x00" * 10_000 + b"onnx"
    (True, True)
"""

from __future__ import annotations

import lzma

from stamen.core.errors import ArtifactError

PACKED_SUFFIX = ".onnx.xz"
# No literal context (lc=0) and no position bits (pb=0): int8 weights are close to independent
# bytes, and a small file cannot afford to learn many contexts.
_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": 0, "lp": 0, "pb": 0}]


def pack(onnx_bytes: bytes) -> bytes:
    """Compress ONNX bytes into the packed artifact.

    Examples:
        >>> len(pack(bytes(100_000))) < 300  # a pruned (all-zero) weight costs almost nothing
        True
    """
    return lzma.compress(onnx_bytes, format=lzma.FORMAT_XZ, filters=_FILTERS)


def unpack(packed: bytes) -> bytes:
    """The ONNX bytes inside a packed artifact; a corrupt stream raises ``ArtifactError``.

    Examples:
        >>> unpack(pack(b"onnx bytes"))
        b'onnx bytes'
        >>> unpack(b"not xz")
        Traceback (most recent call last):
        ...
        stamen.core.errors.ArtifactError: the packed artifact is corrupt: ...
    """
    try:
        return lzma.decompress(packed, format=lzma.FORMAT_XZ)
    except lzma.LZMAError as error:
        raise ArtifactError(f"the packed artifact is corrupt: {error}") from None
