from chorus.v1 import chat_pb2 as _chat_pb2
from chorus.v1 import conversation_pb2 as _conversation_pb2
from chorus.v1 import team_pb2 as _team_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import code_pb2 as _code_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_QUEUED: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_COMPLETED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_CANCELLED: _ClassVar[RunStatus]
    RUN_STATUS_AWAITING_INPUT: _ClassVar[RunStatus]

class InputKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INPUT_KIND_UNSPECIFIED: _ClassVar[InputKind]
    INPUT_KIND_TEXT: _ClassVar[InputKind]
    INPUT_KIND_APPROVAL: _ClassVar[InputKind]

class OnDisconnect(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ON_DISCONNECT_UNSPECIFIED: _ClassVar[OnDisconnect]
    ON_DISCONNECT_CONTINUE: _ClassVar[OnDisconnect]
    ON_DISCONNECT_CANCEL: _ClassVar[OnDisconnect]
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_QUEUED: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_COMPLETED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_CANCELLED: RunStatus
RUN_STATUS_AWAITING_INPUT: RunStatus
INPUT_KIND_UNSPECIFIED: InputKind
INPUT_KIND_TEXT: InputKind
INPUT_KIND_APPROVAL: InputKind
ON_DISCONNECT_UNSPECIFIED: OnDisconnect
ON_DISCONNECT_CONTINUE: OnDisconnect
ON_DISCONNECT_CANCEL: OnDisconnect

class ApprovalDecision(_message.Message):
    __slots__ = ("approved", "reason")
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    approved: bool
    reason: str
    def __init__(self, approved: bool = ..., reason: _Optional[str] = ...) -> None: ...

class RunSpec(_message.Message):
    __slots__ = ("template", "team", "model_overrides", "input", "conversation_id", "max_turns", "request_id", "on_disconnect")
    class ModelOverridesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _chat_pb2.ModelRef
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_chat_pb2.ModelRef, _Mapping]] = ...) -> None: ...
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    MODEL_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TURNS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ON_DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    template: str
    team: _team_pb2.TeamSpec
    model_overrides: _containers.MessageMap[str, _chat_pb2.ModelRef]
    input: str
    conversation_id: str
    max_turns: int
    request_id: str
    on_disconnect: OnDisconnect
    def __init__(self, template: _Optional[str] = ..., team: _Optional[_Union[_team_pb2.TeamSpec, _Mapping]] = ..., model_overrides: _Optional[_Mapping[str, _chat_pb2.ModelRef]] = ..., input: _Optional[str] = ..., conversation_id: _Optional[str] = ..., max_turns: _Optional[int] = ..., request_id: _Optional[str] = ..., on_disconnect: _Optional[_Union[OnDisconnect, str]] = ...) -> None: ...

class Cancellation(_message.Message):
    __slots__ = ("requested_by", "reason", "request_time")
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    requested_by: str
    reason: str
    request_time: _timestamp_pb2.Timestamp
    def __init__(self, requested_by: _Optional[str] = ..., reason: _Optional[str] = ..., request_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RunError(_message.Message):
    __slots__ = ("code", "message", "retryable", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: _code_pb2.Code
    message: str
    retryable: bool
    reason: str
    def __init__(self, code: _Optional[_Union[_code_pb2.Code, str]] = ..., message: _Optional[str] = ..., retryable: bool = ..., reason: _Optional[str] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("id", "owner", "spec", "conversation_id", "status", "turns", "final_answer", "error", "cancellation", "usage", "last_seq", "owner_instance", "heartbeat_time", "create_time", "start_time", "end_time", "update_time", "lease_epoch", "attempt", "pending_input", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    FINAL_ANSWER_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CANCELLATION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    OWNER_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PENDING_INPUT_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    owner: str
    spec: RunSpec
    conversation_id: str
    status: RunStatus
    turns: int
    final_answer: str
    error: RunError
    cancellation: Cancellation
    usage: _chat_pb2.Usage
    last_seq: int
    owner_instance: str
    heartbeat_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    lease_epoch: int
    attempt: int
    pending_input: RunEvent.InputRequested
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., owner: _Optional[str] = ..., spec: _Optional[_Union[RunSpec, _Mapping]] = ..., conversation_id: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., turns: _Optional[int] = ..., final_answer: _Optional[str] = ..., error: _Optional[_Union[RunError, _Mapping]] = ..., cancellation: _Optional[_Union[Cancellation, _Mapping]] = ..., usage: _Optional[_Union[_chat_pb2.Usage, _Mapping]] = ..., last_seq: _Optional[int] = ..., owner_instance: _Optional[str] = ..., heartbeat_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., lease_epoch: _Optional[int] = ..., attempt: _Optional[int] = ..., pending_input: _Optional[_Union[RunEvent.InputRequested, _Mapping]] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RunCheckpoint(_message.Message):
    __slots__ = ("seq", "team_state", "agents", "pending_agents", "turns", "usage", "message_count", "speakers", "last_message")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TEAM_STATE_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    PENDING_AGENTS_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SPEAKERS_FIELD_NUMBER: _ClassVar[int]
    LAST_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    team_state: bytes
    agents: _containers.RepeatedCompositeFieldContainer[_team_pb2.AgentSpec]
    pending_agents: _containers.RepeatedCompositeFieldContainer[_team_pb2.AgentSpec]
    turns: int
    usage: _chat_pb2.Usage
    message_count: int
    speakers: _containers.RepeatedScalarFieldContainer[str]
    last_message: str
    def __init__(self, seq: _Optional[int] = ..., team_state: _Optional[bytes] = ..., agents: _Optional[_Iterable[_Union[_team_pb2.AgentSpec, _Mapping]]] = ..., pending_agents: _Optional[_Iterable[_Union[_team_pb2.AgentSpec, _Mapping]]] = ..., turns: _Optional[int] = ..., usage: _Optional[_Union[_chat_pb2.Usage, _Mapping]] = ..., message_count: _Optional[int] = ..., speakers: _Optional[_Iterable[str]] = ..., last_message: _Optional[str] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("run_id", "seq", "time", "agent", "run_started", "agent_started", "agent_finished", "text_delta", "reasoning_delta", "message_completed", "tool_call_started", "tool_call_finished", "agent_updated", "progress", "artifact", "run_completed", "run_failed", "run_cancelled", "run_resumed", "input_requested", "input_received")
    class RunStarted(_message.Message):
        __slots__ = ("run",)
        RUN_FIELD_NUMBER: _ClassVar[int]
        run: Run
        def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...
    class AgentStarted(_message.Message):
        __slots__ = ("turn",)
        TURN_FIELD_NUMBER: _ClassVar[int]
        turn: int
        def __init__(self, turn: _Optional[int] = ...) -> None: ...
    class AgentFinished(_message.Message):
        __slots__ = ("turn",)
        TURN_FIELD_NUMBER: _ClassVar[int]
        turn: int
        def __init__(self, turn: _Optional[int] = ...) -> None: ...
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
    class MessageCompleted(_message.Message):
        __slots__ = ("message",)
        MESSAGE_FIELD_NUMBER: _ClassVar[int]
        message: _conversation_pb2.Message
        def __init__(self, message: _Optional[_Union[_conversation_pb2.Message, _Mapping]] = ...) -> None: ...
    class ToolCallStarted(_message.Message):
        __slots__ = ("call",)
        CALL_FIELD_NUMBER: _ClassVar[int]
        call: _chat_pb2.ToolCall
        def __init__(self, call: _Optional[_Union[_chat_pb2.ToolCall, _Mapping]] = ...) -> None: ...
    class ToolCallFinished(_message.Message):
        __slots__ = ("call", "result", "success")
        CALL_FIELD_NUMBER: _ClassVar[int]
        RESULT_FIELD_NUMBER: _ClassVar[int]
        SUCCESS_FIELD_NUMBER: _ClassVar[int]
        call: _chat_pb2.ToolCall
        result: str
        success: bool
        def __init__(self, call: _Optional[_Union[_chat_pb2.ToolCall, _Mapping]] = ..., result: _Optional[str] = ..., success: bool = ...) -> None: ...
    class AgentUpdated(_message.Message):
        __slots__ = ("agent", "fields", "updated_by")
        AGENT_FIELD_NUMBER: _ClassVar[int]
        FIELDS_FIELD_NUMBER: _ClassVar[int]
        UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
        agent: _team_pb2.AgentSpec
        fields: _containers.RepeatedScalarFieldContainer[str]
        updated_by: str
        def __init__(self, agent: _Optional[_Union[_team_pb2.AgentSpec, _Mapping]] = ..., fields: _Optional[_Iterable[str]] = ..., updated_by: _Optional[str] = ...) -> None: ...
    class Progress(_message.Message):
        __slots__ = ("turn", "max_turns")
        TURN_FIELD_NUMBER: _ClassVar[int]
        MAX_TURNS_FIELD_NUMBER: _ClassVar[int]
        turn: int
        max_turns: int
        def __init__(self, turn: _Optional[int] = ..., max_turns: _Optional[int] = ...) -> None: ...
    class Artifact(_message.Message):
        __slots__ = ("name", "mime_type", "data")
        NAME_FIELD_NUMBER: _ClassVar[int]
        MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
        DATA_FIELD_NUMBER: _ClassVar[int]
        name: str
        mime_type: str
        data: bytes
        def __init__(self, name: _Optional[str] = ..., mime_type: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...
    class RunCompleted(_message.Message):
        __slots__ = ("final_answer", "agents", "usage", "stop_reason")
        FINAL_ANSWER_FIELD_NUMBER: _ClassVar[int]
        AGENTS_FIELD_NUMBER: _ClassVar[int]
        USAGE_FIELD_NUMBER: _ClassVar[int]
        STOP_REASON_FIELD_NUMBER: _ClassVar[int]
        final_answer: str
        agents: _containers.RepeatedScalarFieldContainer[str]
        usage: _chat_pb2.Usage
        stop_reason: str
        def __init__(self, final_answer: _Optional[str] = ..., agents: _Optional[_Iterable[str]] = ..., usage: _Optional[_Union[_chat_pb2.Usage, _Mapping]] = ..., stop_reason: _Optional[str] = ...) -> None: ...
    class RunFailed(_message.Message):
        __slots__ = ("error",)
        ERROR_FIELD_NUMBER: _ClassVar[int]
        error: RunError
        def __init__(self, error: _Optional[_Union[RunError, _Mapping]] = ...) -> None: ...
    class RunResumed(_message.Message):
        __slots__ = ("attempt", "from_seq", "reason")
        ATTEMPT_FIELD_NUMBER: _ClassVar[int]
        FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
        REASON_FIELD_NUMBER: _ClassVar[int]
        attempt: int
        from_seq: int
        reason: str
        def __init__(self, attempt: _Optional[int] = ..., from_seq: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...
    class InputRequested(_message.Message):
        __slots__ = ("input_id", "kind", "prompt", "tool_call", "expire_time", "agent")
        INPUT_ID_FIELD_NUMBER: _ClassVar[int]
        KIND_FIELD_NUMBER: _ClassVar[int]
        PROMPT_FIELD_NUMBER: _ClassVar[int]
        TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
        EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
        AGENT_FIELD_NUMBER: _ClassVar[int]
        input_id: str
        kind: InputKind
        prompt: str
        tool_call: _chat_pb2.ToolCall
        expire_time: _timestamp_pb2.Timestamp
        agent: str
        def __init__(self, input_id: _Optional[str] = ..., kind: _Optional[_Union[InputKind, str]] = ..., prompt: _Optional[str] = ..., tool_call: _Optional[_Union[_chat_pb2.ToolCall, _Mapping]] = ..., expire_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., agent: _Optional[str] = ...) -> None: ...
    class InputReceived(_message.Message):
        __slots__ = ("input_id", "by", "text", "decision", "expired", "request_id")
        INPUT_ID_FIELD_NUMBER: _ClassVar[int]
        BY_FIELD_NUMBER: _ClassVar[int]
        TEXT_FIELD_NUMBER: _ClassVar[int]
        DECISION_FIELD_NUMBER: _ClassVar[int]
        EXPIRED_FIELD_NUMBER: _ClassVar[int]
        REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
        input_id: str
        by: str
        text: str
        decision: ApprovalDecision
        expired: bool
        request_id: str
        def __init__(self, input_id: _Optional[str] = ..., by: _Optional[str] = ..., text: _Optional[str] = ..., decision: _Optional[_Union[ApprovalDecision, _Mapping]] = ..., expired: bool = ..., request_id: _Optional[str] = ...) -> None: ...
    class RunCancelled(_message.Message):
        __slots__ = ("cancellation",)
        CANCELLATION_FIELD_NUMBER: _ClassVar[int]
        cancellation: Cancellation
        def __init__(self, cancellation: _Optional[_Union[Cancellation, _Mapping]] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    RUN_STARTED_FIELD_NUMBER: _ClassVar[int]
    AGENT_STARTED_FIELD_NUMBER: _ClassVar[int]
    AGENT_FINISHED_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    REASONING_DELTA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_STARTED_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FINISHED_FIELD_NUMBER: _ClassVar[int]
    AGENT_UPDATED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    RUN_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    RUN_FAILED_FIELD_NUMBER: _ClassVar[int]
    RUN_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    RUN_RESUMED_FIELD_NUMBER: _ClassVar[int]
    INPUT_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    INPUT_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    seq: int
    time: _timestamp_pb2.Timestamp
    agent: str
    run_started: RunEvent.RunStarted
    agent_started: RunEvent.AgentStarted
    agent_finished: RunEvent.AgentFinished
    text_delta: RunEvent.TextDelta
    reasoning_delta: RunEvent.ReasoningDelta
    message_completed: RunEvent.MessageCompleted
    tool_call_started: RunEvent.ToolCallStarted
    tool_call_finished: RunEvent.ToolCallFinished
    agent_updated: RunEvent.AgentUpdated
    progress: RunEvent.Progress
    artifact: RunEvent.Artifact
    run_completed: RunEvent.RunCompleted
    run_failed: RunEvent.RunFailed
    run_cancelled: RunEvent.RunCancelled
    run_resumed: RunEvent.RunResumed
    input_requested: RunEvent.InputRequested
    input_received: RunEvent.InputReceived
    def __init__(self, run_id: _Optional[str] = ..., seq: _Optional[int] = ..., time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., agent: _Optional[str] = ..., run_started: _Optional[_Union[RunEvent.RunStarted, _Mapping]] = ..., agent_started: _Optional[_Union[RunEvent.AgentStarted, _Mapping]] = ..., agent_finished: _Optional[_Union[RunEvent.AgentFinished, _Mapping]] = ..., text_delta: _Optional[_Union[RunEvent.TextDelta, _Mapping]] = ..., reasoning_delta: _Optional[_Union[RunEvent.ReasoningDelta, _Mapping]] = ..., message_completed: _Optional[_Union[RunEvent.MessageCompleted, _Mapping]] = ..., tool_call_started: _Optional[_Union[RunEvent.ToolCallStarted, _Mapping]] = ..., tool_call_finished: _Optional[_Union[RunEvent.ToolCallFinished, _Mapping]] = ..., agent_updated: _Optional[_Union[RunEvent.AgentUpdated, _Mapping]] = ..., progress: _Optional[_Union[RunEvent.Progress, _Mapping]] = ..., artifact: _Optional[_Union[RunEvent.Artifact, _Mapping]] = ..., run_completed: _Optional[_Union[RunEvent.RunCompleted, _Mapping]] = ..., run_failed: _Optional[_Union[RunEvent.RunFailed, _Mapping]] = ..., run_cancelled: _Optional[_Union[RunEvent.RunCancelled, _Mapping]] = ..., run_resumed: _Optional[_Union[RunEvent.RunResumed, _Mapping]] = ..., input_requested: _Optional[_Union[RunEvent.InputRequested, _Mapping]] = ..., input_received: _Optional[_Union[RunEvent.InputReceived, _Mapping]] = ...) -> None: ...
