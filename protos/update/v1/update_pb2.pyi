from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]

class ValueEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALUE_ENCODING_UNSPECIFIED: _ClassVar[ValueEncoding]
    VALUE_ENCODING_FP32: _ClassVar[ValueEncoding]
    VALUE_ENCODING_FP16: _ClassVar[ValueEncoding]
    VALUE_ENCODING_UNIFORM: _ClassVar[ValueEncoding]
    VALUE_ENCODING_INT8_SYMMETRIC: _ClassVar[ValueEncoding]
    VALUE_ENCODING_SIGN: _ClassVar[ValueEncoding]
    VALUE_ENCODING_HADAMARD_SIGN: _ClassVar[ValueEncoding]
    VALUE_ENCODING_SIGNED_LEVELS: _ClassVar[ValueEncoding]

class SparsityEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPARSITY_ENCODING_UNSPECIFIED: _ClassVar[SparsityEncoding]
    SPARSITY_ENCODING_DENSE: _ClassVar[SparsityEncoding]
    SPARSITY_ENCODING_INDICES: _ClassVar[SparsityEncoding]
    SPARSITY_ENCODING_BITMASK: _ClassVar[SparsityEncoding]

class IndexEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INDEX_ENCODING_UNSPECIFIED: _ClassVar[IndexEncoding]
    INDEX_ENCODING_NONE: _ClassVar[IndexEncoding]
    INDEX_ENCODING_VARINT_GAPS: _ClassVar[IndexEncoding]
    INDEX_ENCODING_BITPACKED: _ClassVar[IndexEncoding]
    INDEX_ENCODING_RICE_GAPS: _ClassVar[IndexEncoding]

class Lossless(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOSSLESS_UNSPECIFIED: _ClassVar[Lossless]
    LOSSLESS_NONE: _ClassVar[Lossless]
    LOSSLESS_ZLIB: _ClassVar[Lossless]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_FLOAT64: DType
VALUE_ENCODING_UNSPECIFIED: ValueEncoding
VALUE_ENCODING_FP32: ValueEncoding
VALUE_ENCODING_FP16: ValueEncoding
VALUE_ENCODING_UNIFORM: ValueEncoding
VALUE_ENCODING_INT8_SYMMETRIC: ValueEncoding
VALUE_ENCODING_SIGN: ValueEncoding
VALUE_ENCODING_HADAMARD_SIGN: ValueEncoding
VALUE_ENCODING_SIGNED_LEVELS: ValueEncoding
SPARSITY_ENCODING_UNSPECIFIED: SparsityEncoding
SPARSITY_ENCODING_DENSE: SparsityEncoding
SPARSITY_ENCODING_INDICES: SparsityEncoding
SPARSITY_ENCODING_BITMASK: SparsityEncoding
INDEX_ENCODING_UNSPECIFIED: IndexEncoding
INDEX_ENCODING_NONE: IndexEncoding
INDEX_ENCODING_VARINT_GAPS: IndexEncoding
INDEX_ENCODING_BITPACKED: IndexEncoding
INDEX_ENCODING_RICE_GAPS: IndexEncoding
LOSSLESS_UNSPECIFIED: Lossless
LOSSLESS_NONE: Lossless
LOSSLESS_ZLIB: Lossless

class CompressedTensor(_message.Message):
    __slots__ = ("name", "shape", "dtype", "value_encoding", "bits", "scale", "zero_point", "sparsity", "index_encoding", "index_bits", "num_values", "indices_size", "indices", "values", "lossless", "crc32", "rotation_seed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_ENCODING_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    SPARSITY_FIELD_NUMBER: _ClassVar[int]
    INDEX_ENCODING_FIELD_NUMBER: _ClassVar[int]
    INDEX_BITS_FIELD_NUMBER: _ClassVar[int]
    NUM_VALUES_FIELD_NUMBER: _ClassVar[int]
    INDICES_SIZE_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    LOSSLESS_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    ROTATION_SEED_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    value_encoding: ValueEncoding
    bits: int
    scale: float
    zero_point: float
    sparsity: SparsityEncoding
    index_encoding: IndexEncoding
    index_bits: int
    num_values: int
    indices_size: int
    indices: bytes
    values: bytes
    lossless: Lossless
    crc32: int
    rotation_seed: int
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., value_encoding: _Optional[_Union[ValueEncoding, str]] = ..., bits: _Optional[int] = ..., scale: _Optional[float] = ..., zero_point: _Optional[float] = ..., sparsity: _Optional[_Union[SparsityEncoding, str]] = ..., index_encoding: _Optional[_Union[IndexEncoding, str]] = ..., index_bits: _Optional[int] = ..., num_values: _Optional[int] = ..., indices_size: _Optional[int] = ..., indices: _Optional[bytes] = ..., values: _Optional[bytes] = ..., lossless: _Optional[_Union[Lossless, str]] = ..., crc32: _Optional[int] = ..., rotation_seed: _Optional[int] = ...) -> None: ...

class ModelUpdate(_message.Message):
    __slots__ = ("format_version", "round", "base_model_sha256", "tensors", "flat", "scales", "dense")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    FLAT_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    round: int
    base_model_sha256: bytes
    tensors: _containers.RepeatedCompositeFieldContainer[CompressedTensor]
    flat: bool
    scales: bytes
    dense: bytes
    def __init__(self, format_version: _Optional[int] = ..., round: _Optional[int] = ..., base_model_sha256: _Optional[bytes] = ..., tensors: _Optional[_Iterable[_Union[CompressedTensor, _Mapping]]] = ..., flat: _Optional[bool] = ..., scales: _Optional[bytes] = ..., dense: _Optional[bytes] = ...) -> None: ...

class ModelPayload(_message.Message):
    __slots__ = ("format_version", "round", "model_sha256", "tensors", "base_model_sha256", "pruned", "keep", "flat", "steps")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    PRUNED_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    FLAT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    round: int
    model_sha256: bytes
    tensors: _containers.RepeatedCompositeFieldContainer[CompressedTensor]
    base_model_sha256: bytes
    pruned: _containers.RepeatedScalarFieldContainer[str]
    keep: bool
    flat: bool
    steps: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, format_version: _Optional[int] = ..., round: _Optional[int] = ..., model_sha256: _Optional[bytes] = ..., tensors: _Optional[_Iterable[_Union[CompressedTensor, _Mapping]]] = ..., base_model_sha256: _Optional[bytes] = ..., pruned: _Optional[_Iterable[str]] = ..., keep: _Optional[bool] = ..., flat: _Optional[bool] = ..., steps: _Optional[_Iterable[float]] = ...) -> None: ...
