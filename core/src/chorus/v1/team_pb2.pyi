from chorus.v1 import chat_pb2 as _chat_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TeamKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEAM_KIND_UNSPECIFIED: _ClassVar[TeamKind]
    TEAM_KIND_ROUND_ROBIN: _ClassVar[TeamKind]
    TEAM_KIND_SELECTOR: _ClassVar[TeamKind]
    TEAM_KIND_MAGENTIC_ONE: _ClassVar[TeamKind]
    TEAM_KIND_SEQUENTIAL: _ClassVar[TeamKind]
    TEAM_KIND_SINGLE: _ClassVar[TeamKind]
TEAM_KIND_UNSPECIFIED: TeamKind
TEAM_KIND_ROUND_ROBIN: TeamKind
TEAM_KIND_SELECTOR: TeamKind
TEAM_KIND_MAGENTIC_ONE: TeamKind
TEAM_KIND_SEQUENTIAL: TeamKind
TEAM_KIND_SINGLE: TeamKind

class AgentSpec(_message.Message):
    __slots__ = ("name", "description", "system_prompt", "model", "temperature", "max_output_tokens", "tools", "simulator", "human", "tools_requiring_approval")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    SIMULATOR_FIELD_NUMBER: _ClassVar[int]
    HUMAN_FIELD_NUMBER: _ClassVar[int]
    TOOLS_REQUIRING_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    system_prompt: str
    model: _chat_pb2.ModelRef
    temperature: float
    max_output_tokens: int
    tools: _containers.RepeatedScalarFieldContainer[str]
    simulator: _chat_pb2.SimulatorOptions
    human: bool
    tools_requiring_approval: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., system_prompt: _Optional[str] = ..., model: _Optional[_Union[_chat_pb2.ModelRef, _Mapping]] = ..., temperature: _Optional[float] = ..., max_output_tokens: _Optional[int] = ..., tools: _Optional[_Iterable[str]] = ..., simulator: _Optional[_Union[_chat_pb2.SimulatorOptions, _Mapping]] = ..., human: bool = ..., tools_requiring_approval: _Optional[_Iterable[str]] = ...) -> None: ...

class TeamSpec(_message.Message):
    __slots__ = ("kind", "agents", "orchestrator_model", "termination_text", "max_turns", "selector_prompt", "tools_requiring_approval", "input_timeout")
    KIND_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    ORCHESTRATOR_MODEL_FIELD_NUMBER: _ClassVar[int]
    TERMINATION_TEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_TURNS_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_PROMPT_FIELD_NUMBER: _ClassVar[int]
    TOOLS_REQUIRING_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    INPUT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    kind: TeamKind
    agents: _containers.RepeatedCompositeFieldContainer[AgentSpec]
    orchestrator_model: _chat_pb2.ModelRef
    termination_text: str
    max_turns: int
    selector_prompt: str
    tools_requiring_approval: _containers.RepeatedScalarFieldContainer[str]
    input_timeout: _duration_pb2.Duration
    def __init__(self, kind: _Optional[_Union[TeamKind, str]] = ..., agents: _Optional[_Iterable[_Union[AgentSpec, _Mapping]]] = ..., orchestrator_model: _Optional[_Union[_chat_pb2.ModelRef, _Mapping]] = ..., termination_text: _Optional[str] = ..., max_turns: _Optional[int] = ..., selector_prompt: _Optional[str] = ..., tools_requiring_approval: _Optional[_Iterable[str]] = ..., input_timeout: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TeamTemplate(_message.Message):
    __slots__ = ("name", "title", "description", "spec", "input_hint", "example_input")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    INPUT_HINT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_INPUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    title: str
    description: str
    spec: TeamSpec
    input_hint: str
    example_input: str
    def __init__(self, name: _Optional[str] = ..., title: _Optional[str] = ..., description: _Optional[str] = ..., spec: _Optional[_Union[TeamSpec, _Mapping]] = ..., input_hint: _Optional[str] = ..., example_input: _Optional[str] = ...) -> None: ...
