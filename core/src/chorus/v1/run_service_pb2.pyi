from chorus.v1 import run_pb2 as _run_pb2
from chorus.v1 import team_pb2 as _team_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateRunRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: _run_pb2.RunSpec
    def __init__(self, spec: _Optional[_Union[_run_pb2.RunSpec, _Mapping]] = ...) -> None: ...

class CreateRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ...) -> None: ...

class StreamRunRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: _run_pb2.RunSpec
    def __init__(self, spec: _Optional[_Union[_run_pb2.RunSpec, _Mapping]] = ...) -> None: ...

class StreamRunResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _run_pb2.RunEvent
    def __init__(self, event: _Optional[_Union[_run_pb2.RunEvent, _Mapping]] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id", "after_seq")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    after_seq: int
    def __init__(self, run_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class WatchRunResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _run_pb2.RunEvent
    def __init__(self, event: _Optional[_Union[_run_pb2.RunEvent, _Mapping]] = ...) -> None: ...

class WatchRunsRequest(_message.Message):
    __slots__ = ("watch_id", "user", "request_id", "start", "watch", "pause", "resume", "stop", "response_window", "acknowledged", "trace_context")
    class Pause(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class Resume(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class Stop(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WATCH_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    WATCH_FIELD_NUMBER: _ClassVar[int]
    PAUSE_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    watch_id: int
    user: str
    request_id: str
    start: _run_pb2.RunSpec
    watch: WatchRunRequest
    pause: WatchRunsRequest.Pause
    resume: WatchRunsRequest.Resume
    stop: WatchRunsRequest.Stop
    response_window: int
    acknowledged: int
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, watch_id: _Optional[int] = ..., user: _Optional[str] = ..., request_id: _Optional[str] = ..., start: _Optional[_Union[_run_pb2.RunSpec, _Mapping]] = ..., watch: _Optional[_Union[WatchRunRequest, _Mapping]] = ..., pause: _Optional[_Union[WatchRunsRequest.Pause, _Mapping]] = ..., resume: _Optional[_Union[WatchRunsRequest.Resume, _Mapping]] = ..., stop: _Optional[_Union[WatchRunsRequest.Stop, _Mapping]] = ..., response_window: _Optional[int] = ..., acknowledged: _Optional[int] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class WatchRunsResponse(_message.Message):
    __slots__ = ("updates",)
    class Update(_message.Message):
        __slots__ = ("watch_id", "events", "status")
        WATCH_ID_FIELD_NUMBER: _ClassVar[int]
        EVENTS_FIELD_NUMBER: _ClassVar[int]
        STATUS_FIELD_NUMBER: _ClassVar[int]
        watch_id: int
        events: _containers.RepeatedCompositeFieldContainer[_run_pb2.RunEvent]
        status: _status_pb2.Status
        def __init__(self, watch_id: _Optional[int] = ..., events: _Optional[_Iterable[_Union[_run_pb2.RunEvent, _Mapping]]] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[WatchRunsResponse.Update]
    def __init__(self, updates: _Optional[_Iterable[_Union[WatchRunsResponse.Update, _Mapping]]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "conversation_id", "status")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    conversation_id: str
    status: _run_pb2.RunStatus
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., conversation_id: _Optional[str] = ..., status: _Optional[_Union[_run_pb2.RunStatus, str]] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[_run_pb2.Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[_run_pb2.Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelRunResponse(_message.Message):
    __slots__ = ("run", "cancelled", "message")
    RUN_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    cancelled: bool
    message: str
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ..., cancelled: bool = ..., message: _Optional[str] = ...) -> None: ...

class DeleteRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class DeleteRunResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateRunAgentRequest(_message.Message):
    __slots__ = ("run_id", "agent_name", "agent", "update_mask")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    agent_name: str
    agent: _team_pb2.AgentSpec
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, run_id: _Optional[str] = ..., agent_name: _Optional[str] = ..., agent: _Optional[_Union[_team_pb2.AgentSpec, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateRunAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: _team_pb2.AgentSpec
    def __init__(self, agent: _Optional[_Union[_team_pb2.AgentSpec, _Mapping]] = ...) -> None: ...

class SubmitRunInputRequest(_message.Message):
    __slots__ = ("run_id", "input_id", "text", "decision", "request_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    input_id: str
    text: str
    decision: _run_pb2.ApprovalDecision
    request_id: str
    def __init__(self, run_id: _Optional[str] = ..., input_id: _Optional[str] = ..., text: _Optional[str] = ..., decision: _Optional[_Union[_run_pb2.ApprovalDecision, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitRunInputResponse(_message.Message):
    __slots__ = ("run", "event")
    RUN_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    event: _run_pb2.RunEvent
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ..., event: _Optional[_Union[_run_pb2.RunEvent, _Mapping]] = ...) -> None: ...

class ListTeamTemplatesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTeamTemplatesResponse(_message.Message):
    __slots__ = ("templates",)
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[_team_pb2.TeamTemplate]
    def __init__(self, templates: _Optional[_Iterable[_Union[_team_pb2.TeamTemplate, _Mapping]]] = ...) -> None: ...
