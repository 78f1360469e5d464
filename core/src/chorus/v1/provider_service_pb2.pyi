from chorus.v1 import chat_pb2 as _chat_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.rpc import code_pb2 as _code_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_TOOL_CALLS: _ClassVar[FinishReason]
    FINISH_REASON_CONTENT_FILTER: _ClassVar[FinishReason]
    FINISH_REASON_OTHER: _ClassVar[FinishReason]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_TOOL_CALLS: FinishReason
FINISH_REASON_CONTENT_FILTER: FinishReason
FINISH_REASON_OTHER: FinishReason

class ChatMessage(_message.Message):
    __slots__ = ("role", "content", "name", "tool_calls", "tool_call_id", "is_error")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    IS_ERROR_FIELD_NUMBER: _ClassVar[int]
    role: _chat_pb2.Role
    content: str
    name: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[_chat_pb2.ToolCall]
    tool_call_id: str
    is_error: bool
    def __init__(self, role: _Optional[_Union[_chat_pb2.Role, str]] = ..., content: _Optional[str] = ..., name: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[_chat_pb2.ToolCall, _Mapping]]] = ..., tool_call_id: _Optional[str] = ..., is_error: bool = ...) -> None: ...

class ToolDefinition(_message.Message):
    __slots__ = ("name", "description", "parameters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ToolChoice(_message.Message):
    __slots__ = ("mode", "tool_name")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MODE_UNSPECIFIED: _ClassVar[ToolChoice.Mode]
        MODE_AUTO: _ClassVar[ToolChoice.Mode]
        MODE_NONE: _ClassVar[ToolChoice.Mode]
        MODE_REQUIRED: _ClassVar[ToolChoice.Mode]
        MODE_TOOL: _ClassVar[ToolChoice.Mode]
    MODE_UNSPECIFIED: ToolChoice.Mode
    MODE_AUTO: ToolChoice.Mode
    MODE_NONE: ToolChoice.Mode
    MODE_REQUIRED: ToolChoice.Mode
    MODE_TOOL: ToolChoice.Mode
    MODE_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    mode: ToolChoice.Mode
    tool_name: str
    def __init__(self, mode: _Optional[_Union[ToolChoice.Mode, str]] = ..., tool_name: _Optional[str] = ...) -> None: ...

class StreamChatRequest(_message.Message):
    __slots__ = ("model", "messages", "tools", "temperature", "top_p", "max_output_tokens", "stop", "tool_choice", "fallbacks", "metadata", "simulator")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SIMULATOR_FIELD_NUMBER: _ClassVar[int]
    model: _chat_pb2.ModelRef
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    tools: _containers.RepeatedCompositeFieldContainer[ToolDefinition]
    temperature: float
    top_p: float
    max_output_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    tool_choice: ToolChoice
    fallbacks: _containers.RepeatedCompositeFieldContainer[_chat_pb2.ModelRef]
    metadata: _containers.ScalarMap[str, str]
    simulator: _chat_pb2.SimulatorOptions
    def __init__(self, model: _Optional[_Union[_chat_pb2.ModelRef, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., tools: _Optional[_Iterable[_Union[ToolDefinition, _Mapping]]] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., max_output_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., tool_choice: _Optional[_Union[ToolChoice, _Mapping]] = ..., fallbacks: _Optional[_Iterable[_Union[_chat_pb2.ModelRef, _Mapping]]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., simulator: _Optional[_Union[_chat_pb2.SimulatorOptions, _Mapping]] = ...) -> None: ...

class StreamChatResponse(_message.Message):
    __slots__ = ("start", "text_delta", "reasoning_delta", "tool_call_start", "tool_call_delta", "tool_call_end", "usage", "finish", "error")
    class Start(_message.Message):
        __slots__ = ("model", "retries", "fallback", "response_id")
        MODEL_FIELD_NUMBER: _ClassVar[int]
        RETRIES_FIELD_NUMBER: _ClassVar[int]
        FALLBACK_FIELD_NUMBER: _ClassVar[int]
        RESPONSE_ID_FIELD_NUMBER: _ClassVar[int]
        model: _chat_pb2.ModelRef
        retries: int
        fallback: bool
        response_id: str
        def __init__(self, model: _Optional[_Union[_chat_pb2.ModelRef, _Mapping]] = ..., retries: _Optional[int] = ..., fallback: bool = ..., response_id: _Optional[str] = ...) -> None: ...
    class TextDelta(_message.Message):
        __slots__ = ("text",)
        TEXT_FIELD_NUMBER: _ClassVar[int]
        text: str
        def __init__(self, text: _Optional[str] = ...) -> None: ...
    class ReasoningDelta(_message.Message):
        __slots__ = ("text",)
        TEXT_FIELD_NUMBER: _ClassVar[int]
        text: str
        def __init__(self, text: _Optional[str] = ...) -> None: ...
    class ToolCallStart(_message.Message):
        __slots__ = ("index", "id", "name")
        INDEX_FIELD_NUMBER: _ClassVar[int]
        ID_FIELD_NUMBER: _ClassVar[int]
        NAME_FIELD_NUMBER: _ClassVar[int]
        index: int
        id: str
        name: str
        def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...
    class ToolCallDelta(_message.Message):
        __slots__ = ("index", "arguments_delta")
        INDEX_FIELD_NUMBER: _ClassVar[int]
        ARGUMENTS_DELTA_FIELD_NUMBER: _ClassVar[int]
        index: int
        arguments_delta: str
        def __init__(self, index: _Optional[int] = ..., arguments_delta: _Optional[str] = ...) -> None: ...
    class ToolCallEnd(_message.Message):
        __slots__ = ("index", "call")
        INDEX_FIELD_NUMBER: _ClassVar[int]
        CALL_FIELD_NUMBER: _ClassVar[int]
        index: int
        call: _chat_pb2.ToolCall
        def __init__(self, index: _Optional[int] = ..., call: _Optional[_Union[_chat_pb2.ToolCall, _Mapping]] = ...) -> None: ...
    class Finish(_message.Message):
        __slots__ = ("reason", "raw_reason")
        REASON_FIELD_NUMBER: _ClassVar[int]
        RAW_REASON_FIELD_NUMBER: _ClassVar[int]
        reason: FinishReason
        raw_reason: str
        def __init__(self, reason: _Optional[_Union[FinishReason, str]] = ..., raw_reason: _Optional[str] = ...) -> None: ...
    class Error(_message.Message):
        __slots__ = ("code", "message", "retryable")
        CODE_FIELD_NUMBER: _ClassVar[int]
        MESSAGE_FIELD_NUMBER: _ClassVar[int]
        RETRYABLE_FIELD_NUMBER: _ClassVar[int]
        code: _code_pb2.Code
        message: str
        retryable: bool
        def __init__(self, code: _Optional[_Union[_code_pb2.Code, str]] = ..., message: _Optional[str] = ..., retryable: bool = ...) -> None: ...
    START_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    REASONING_DELTA_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_START_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_DELTA_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_END_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    start: StreamChatResponse.Start
    text_delta: StreamChatResponse.TextDelta
    reasoning_delta: StreamChatResponse.ReasoningDelta
    tool_call_start: StreamChatResponse.ToolCallStart
    tool_call_delta: StreamChatResponse.ToolCallDelta
    tool_call_end: StreamChatResponse.ToolCallEnd
    usage: _chat_pb2.Usage
    finish: StreamChatResponse.Finish
    error: StreamChatResponse.Error
    def __init__(self, start: _Optional[_Union[StreamChatResponse.Start, _Mapping]] = ..., text_delta: _Optional[_Union[StreamChatResponse.TextDelta, _Mapping]] = ..., reasoning_delta: _Optional[_Union[StreamChatResponse.ReasoningDelta, _Mapping]] = ..., tool_call_start: _Optional[_Union[StreamChatResponse.ToolCallStart, _Mapping]] = ..., tool_call_delta: _Optional[_Union[StreamChatResponse.ToolCallDelta, _Mapping]] = ..., tool_call_end: _Optional[_Union[StreamChatResponse.ToolCallEnd, _Mapping]] = ..., usage: _Optional[_Union[_chat_pb2.Usage, _Mapping]] = ..., finish: _Optional[_Union[StreamChatResponse.Finish, _Mapping]] = ..., error: _Optional[_Union[StreamChatResponse.Error, _Mapping]] = ...) -> None: ...

class StreamChatsRequest(_message.Message):
    __slots__ = ("stream_id", "user", "request_id", "open", "cancel", "timeout", "response_window", "acknowledged")
    class Cancel(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    user: str
    request_id: str
    open: StreamChatRequest
    cancel: StreamChatsRequest.Cancel
    timeout: _duration_pb2.Duration
    response_window: int
    acknowledged: int
    def __init__(self, stream_id: _Optional[int] = ..., user: _Optional[str] = ..., request_id: _Optional[str] = ..., open: _Optional[_Union[StreamChatRequest, _Mapping]] = ..., cancel: _Optional[_Union[StreamChatsRequest.Cancel, _Mapping]] = ..., timeout: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., response_window: _Optional[int] = ..., acknowledged: _Optional[int] = ...) -> None: ...

class StreamChatsResponse(_message.Message):
    __slots__ = ("updates",)
    class Update(_message.Message):
        __slots__ = ("stream_id", "events", "status")
        STREAM_ID_FIELD_NUMBER: _ClassVar[int]
        EVENTS_FIELD_NUMBER: _ClassVar[int]
        STATUS_FIELD_NUMBER: _ClassVar[int]
        stream_id: int
        events: _containers.RepeatedCompositeFieldContainer[StreamChatResponse]
        status: _status_pb2.Status
        def __init__(self, stream_id: _Optional[int] = ..., events: _Optional[_Iterable[_Union[StreamChatResponse, _Mapping]]] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[StreamChatsResponse.Update]
    def __init__(self, updates: _Optional[_Iterable[_Union[StreamChatsResponse.Update, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("provider",)
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    provider: str
    def __init__(self, provider: _Optional[str] = ...) -> None: ...

class ModelCapabilities(_message.Message):
    __slots__ = ("tools", "vision", "reasoning", "json_output")
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    VISION_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    JSON_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    tools: bool
    vision: bool
    reasoning: bool
    json_output: bool
    def __init__(self, tools: bool = ..., vision: bool = ..., reasoning: bool = ..., json_output: bool = ...) -> None: ...

class ModelPrice(_message.Message):
    __slots__ = ("input_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok", "output_per_mtok")
    INPUT_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    input_per_mtok: float
    cached_input_per_mtok: float
    cache_write_per_mtok: float
    output_per_mtok: float
    def __init__(self, input_per_mtok: _Optional[float] = ..., cached_input_per_mtok: _Optional[float] = ..., cache_write_per_mtok: _Optional[float] = ..., output_per_mtok: _Optional[float] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("ref", "capabilities", "context_window", "price", "credentials_present", "default")
    REF_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_PRESENT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    ref: _chat_pb2.ModelRef
    capabilities: ModelCapabilities
    context_window: int
    price: ModelPrice
    credentials_present: bool
    default: bool
    def __init__(self, ref: _Optional[_Union[_chat_pb2.ModelRef, _Mapping]] = ..., capabilities: _Optional[_Union[ModelCapabilities, _Mapping]] = ..., context_window: _Optional[int] = ..., price: _Optional[_Union[ModelPrice, _Mapping]] = ..., credentials_present: bool = ..., default: bool = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...
