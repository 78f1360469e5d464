from google.protobuf import duration_pb2 as _duration_pb2
from google.rpc import code_pb2 as _code_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_SYSTEM: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ASSISTANT: _ClassVar[Role]
    ROLE_TOOL: _ClassVar[Role]
ROLE_UNSPECIFIED: Role
ROLE_SYSTEM: Role
ROLE_USER: Role
ROLE_ASSISTANT: Role
ROLE_TOOL: Role

class ModelRef(_message.Message):
    __slots__ = ("provider", "model")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("id", "name", "arguments")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    arguments: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., arguments: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens", "estimated", "cost_usd")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    estimated: bool
    cost_usd: float
    def __init__(self, input_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., cache_write_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ..., estimated: bool = ..., cost_usd: _Optional[float] = ...) -> None: ...

class SimulatorOptions(_message.Message):
    __slots__ = ("seed", "time_to_first_token", "tokens_per_second", "output_tokens", "fault")
    SEED_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    seed: int
    time_to_first_token: _duration_pb2.Duration
    tokens_per_second: float
    output_tokens: int
    fault: SimulatorFault
    def __init__(self, seed: _Optional[int] = ..., time_to_first_token: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., tokens_per_second: _Optional[float] = ..., output_tokens: _Optional[int] = ..., fault: _Optional[_Union[SimulatorFault, _Mapping]] = ...) -> None: ...

class SimulatorFault(_message.Message):
    __slots__ = ("kind", "after_tokens", "code", "retry_after", "attempts")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[SimulatorFault.Kind]
        KIND_ERROR: _ClassVar[SimulatorFault.Kind]
        KIND_RATE_LIMIT: _ClassVar[SimulatorFault.Kind]
        KIND_STALL: _ClassVar[SimulatorFault.Kind]
        KIND_DROP: _ClassVar[SimulatorFault.Kind]
    KIND_UNSPECIFIED: SimulatorFault.Kind
    KIND_ERROR: SimulatorFault.Kind
    KIND_RATE_LIMIT: SimulatorFault.Kind
    KIND_STALL: SimulatorFault.Kind
    KIND_DROP: SimulatorFault.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    AFTER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    kind: SimulatorFault.Kind
    after_tokens: int
    code: _code_pb2.Code
    retry_after: _duration_pb2.Duration
    attempts: int
    def __init__(self, kind: _Optional[_Union[SimulatorFault.Kind, str]] = ..., after_tokens: _Optional[int] = ..., code: _Optional[_Union[_code_pb2.Code, str]] = ..., retry_after: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., attempts: _Optional[int] = ...) -> None: ...
