"""Settings of orchestrator-svc, read from `CHORUS_*` environment variables (and `.env`).

Every field is documented in orchestrator-svc/README.md ("Settings"); the defaults run the
whole stack on one machine next to provider-svc (50051) and history-svc (50052).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from chorus.core.settings import CoreSettings


class Settings(CoreSettings):
    """Configuration of the orchestrator service (`CHORUS_*` environment variables)."""

    orchestrator_port: int = Field(
        50053, ge=0, le=65535, description="gRPC port of RunService (0 picks a free one)."
    )
    provider_address: str = Field(
        "127.0.0.1:50051", description="`host:port` of provider-svc (ProviderService)."
    )
    history_address: str = Field(
        "127.0.0.1:50052", description="`host:port` of history-svc (HistoryService)."
    )

    # --- run limits (server caps) -------------------------------------------------------
    max_turns_cap: int = Field(
        100, ge=1, le=10_000, description="Largest `max_turns` a run or team may ask for."
    )
    default_max_turns: int = Field(
        10, ge=1, description="Turn limit of a team whose spec and run request give none."
    )
    max_agents: int = Field(16, ge=1, le=64, description="Most agents in one team.")
    max_input_bytes: int = Field(
        64 * 1024, ge=1, description="Largest run input (`spec.input`), bytes of UTF-8."
    )
    max_active_runs: int = Field(
        1000,
        ge=1,
        description="Most active runs this process executes at once; more is RESOURCE_EXHAUSTED.",
    )
    max_starting_runs: int = Field(
        16,
        ge=1,
        description="Runs this process starts at once (validation and the opening write to "
        "history-svc); further starts wait their turn, so a burst of new runs cannot starve "
        "the event streams of the runs already going.",
    )
    max_ending_runs: int = Field(
        8,
        ge=1,
        description="Runs this process ends at once (the final message and the final record "
        "written to history-svc); further ends wait their turn, so runs ending together "
        "cannot starve the event streams of the runs still going.",
    )
    max_tool_iterations: int = Field(
        3, ge=1, le=20, description="Model calls an agent may spend on tool calls in one turn."
    )
    context_messages: int = Field(
        200,
        ge=0,
        le=1000,
        description="Most conversation messages loaded as the context of a SINGLE team.",
    )

    autogen_log_level: str = Field(
        "WARNING",
        description="Level of autogen's own loggers (INFO logs every message of every team).",
    )

    # --- model calls --------------------------------------------------------------------
    model_call_timeout_s: float = Field(
        600.0, gt=0, description="Deadline of one ProviderService.StreamChat call, seconds."
    )
    model_catalog_ttl_s: float = Field(
        30.0,
        ge=0,
        description="How long the ListModels answer used to validate specs is cached, seconds.",
    )
    prefetch_first_model_call: bool = Field(
        True,
        description="Open the first model call of a SINGLE run in a new conversation while "
        "the run's opening write is under way (time to first token: the slower of the two "
        "instead of both). A run that fails to start cancels the call at once; off: the "
        "call starts once the run is stored.",
    )
    delta_coalesce_s: float = Field(
        0.002,
        ge=0,
        le=0.1,
        description="Text/reasoning deltas of one model stream arriving within this window "
        "become one event (the first delta is never delayed); 0 turns coalescing off.",
    )

    # --- events and watchers ------------------------------------------------------------
    watcher_buffer_events: int = Field(
        4096,
        ge=64,
        description="Stored events of a live run kept in memory (serialized) for its watchers, "
        "besides the unstored ones; a watcher that falls further behind catches up from "
        "history-svc.",
    )
    store_outage_limit_s: float = Field(
        600.0,
        ge=0,
        description="How long a run waits out an outage of history-svc or its database, "
        "seconds: its writes are retried with backoff meanwhile (watchers see nothing new, "
        "the run pauses at its next event write); past this the run fails UNAVAILABLE.",
    )

    # --- liveness, cancel and crash recovery -------------------------------------------
    heartbeat_interval_s: float = Field(
        1.0,
        gt=0,
        description="Interval of run heartbeats, which renew the runs' leases (and deliver "
        "cross-replica cancels), seconds.",
    )
    lease_duration_s: float = Field(
        4.0,
        gt=0,
        description="A run's lease expires when its heartbeat is older than this, seconds; "
        "any replica's sweep then claims the run and resumes it from its last checkpoint.",
    )
    sweep_interval_s: float = Field(
        0.5,
        gt=0,
        description="Interval of the sweep that claims runs whose lease expired or was "
        "released, seconds (one indexed query per round).",
    )
    input_expiry_interval_s: float = Field(
        5.0,
        gt=0,
        description="How often the sweep looks for requests for input whose expire_time "
        "passed, seconds (issue 21; one indexed query, ListRunRecords input_expire_before).",
    )
    max_run_resumes: int = Field(
        3,
        ge=0,
        description="Resumes a run may take after losing its owner; one more ends it "
        "`run_failed` UNAVAILABLE, reason RESUME_LIMIT.",
    )
    cancel_wait_s: float = Field(
        5.0,
        ge=0,
        description="How long CancelRun waits for a run on this replica to end before answering, s.",
    )

    # --- tools --------------------------------------------------------------------------
    tool_timeout_s: float = Field(30.0, gt=0, description="Deadline of one tool call, seconds.")
    tool_entry_points: bool = Field(
        True, description="Load third-party tools from the `chorus.tools` entry-point group."
    )
    code_execution_enabled: bool = Field(
        False,
        description="Offer the `run_python` tool, which runs model-written code in a "
        "subprocess. Off by default: enable only in a sandbox.",
    )
    code_execution_timeout_s: float = Field(
        10.0, gt=0, description="Wall-clock limit of one `run_python` call, seconds."
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_max_turns > self.max_turns_cap:
            raise ValueError("default_max_turns must not exceed max_turns_cap")
        if self.lease_duration_s <= self.heartbeat_interval_s:
            raise ValueError("lease_duration_s must be longer than heartbeat_interval_s")
        return self
