from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("x", "model_version", "model")
    X_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    x: Tensor
    model_version: str
    model: str
    def __init__(self, x: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("mean", "logvar", "model_version")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    LOGVAR_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    mean: Tensor
    logvar: Tensor
    model_version: str
    def __init__(self, mean: _Optional[_Union[Tensor, _Mapping]] = ..., logvar: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("num_samples", "seed", "mean", "logvar", "decode", "model_version", "model")
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    LOGVAR_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    num_samples: int
    seed: int
    mean: Tensor
    logvar: Tensor
    decode: bool
    model_version: str
    model: str
    def __init__(self, num_samples: _Optional[int] = ..., seed: _Optional[int] = ..., mean: _Optional[_Union[Tensor, _Mapping]] = ..., logvar: _Optional[_Union[Tensor, _Mapping]] = ..., decode: _Optional[bool] = ..., model_version: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("z", "x", "model_version")
    Z_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    z: Tensor
    x: Tensor
    model_version: str
    def __init__(self, z: _Optional[_Union[Tensor, _Mapping]] = ..., x: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("z", "model_version", "model")
    Z_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    z: Tensor
    model_version: str
    model: str
    def __init__(self, z: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("x", "model_version")
    X_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    x: Tensor
    model_version: str
    def __init__(self, x: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model_version", "model")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    model: str
    def __init__(self, model_version: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "input_dim", "image_shape", "latent_dim", "execution_provider", "card", "limits", "server_id", "loaded_versions", "model_card")
    class CardEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CARD_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    LOADED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_CARD_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    input_dim: int
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    latent_dim: int
    execution_provider: str
    card: _containers.ScalarMap[str, str]
    limits: ServerLimits
    server_id: str
    loaded_versions: _containers.RepeatedScalarFieldContainer[str]
    model_card: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., input_dim: _Optional[int] = ..., image_shape: _Optional[_Iterable[int]] = ..., latent_dim: _Optional[int] = ..., execution_provider: _Optional[str] = ..., card: _Optional[_Mapping[str, str]] = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ..., server_id: _Optional[str] = ..., loaded_versions: _Optional[_Iterable[str]] = ..., model_card: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ServerLimits(_message.Message):
    __slots__ = ("max_request_rows", "max_samples", "max_message_bytes")
    MAX_REQUEST_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_request_rows: int
    max_samples: int
    max_message_bytes: int
    def __init__(self, max_request_rows: _Optional[int] = ..., max_samples: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("id", "encode", "decode", "sample")
    ID_FIELD_NUMBER: _ClassVar[int]
    ENCODE_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    id: str
    encode: EncodeRequest
    decode: DecodeRequest
    sample: SampleRequest
    def __init__(self, id: _Optional[str] = ..., encode: _Optional[_Union[EncodeRequest, _Mapping]] = ..., decode: _Optional[_Union[DecodeRequest, _Mapping]] = ..., sample: _Optional[_Union[SampleRequest, _Mapping]] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("id", "encode", "decode", "sample", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    ENCODE_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    encode: EncodeResponse
    decode: DecodeResponse
    sample: SampleResponse
    error: StreamError
    def __init__(self, id: _Optional[str] = ..., encode: _Optional[_Union[EncodeResponse, _Mapping]] = ..., decode: _Optional[_Union[DecodeResponse, _Mapping]] = ..., sample: _Optional[_Union[SampleResponse, _Mapping]] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ...) -> None: ...

class StreamError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...
