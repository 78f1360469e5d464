"""Size and count limits of HistoryService requests.

The values marked "contract" are stated in the proto comments
(proto/chorus/v1/history_service.proto, conversation.proto, run.proto) and must change only
together with them; the others are this service's own choices, documented in
history-svc/README.md. Every violation is INVALID_ARGUMENT with a BadRequest field violation.
"""

from __future__ import annotations

MAX_REQUEST_ID_CHARS = 128  # contract: CreateConversationRequest.request_id, RunSpec.request_id
MAX_TITLE_CHARS = 500  # contract: Conversation.title
MAX_METADATA_ENTRIES = 64  # contract: Conversation.metadata
MAX_METADATA_KEY_CHARS = 128  # contract
MAX_METADATA_VALUE_CHARS = 1024  # contract
MAX_TEAM_CHARS = 128
MAX_MODEL_FIELD_CHARS = 256  # ModelRef.provider / ModelRef.model

MAX_MESSAGES_PER_APPEND = 500  # contract: AppendMessagesRequest.messages
MAX_CONTENT_BYTES = 1024 * 1024  # contract: Message.content, UTF-8 bytes
MAX_CLIENT_MESSAGE_ID_CHARS = 128  # contract
MAX_AGENT_CHARS = 256
MAX_TOOL_CALLS_PER_MESSAGE = 128
MAX_TOOL_CALL_ID_CHARS = 256
MAX_TOOL_NAME_CHARS = 256
MAX_TOOL_ARGUMENTS_BYTES = 1024 * 1024
MAX_INCLUDED_MESSAGES = 1000  # contract: GetConversationRequest.include_messages
MAX_MESSAGES_PER_RUN_START = 100  # contract: RecordRunStartRequest.messages
MAX_RECENT_MESSAGES = 1000  # contract: RecordRunStartRequest.recent_message_count

MAX_RUN_INPUT_BYTES = 64 * 1024  # contract: RunSpec.input
MAX_FINAL_ANSWER_BYTES = 1024 * 1024
MAX_ERROR_MESSAGE_CHARS = 8192
MAX_CANCEL_REASON_CHARS = 4096
MAX_OWNER_INSTANCE_CHARS = 256
MAX_HEARTBEATS_PER_CALL = 1000  # contract: RecordRunHeartbeatsRequest.heartbeats
MAX_CLAIM_OWNER_INSTANCE_CHARS = 128  # contract: ClaimRunRequest.owner_instance
MAX_STALE_AFTER_S = 86_400  # ClaimRunRequest.stale_after: at most a day
MAX_CHECKPOINT_STATE_BYTES = 16 * 1024 * 1024  # contract: RunCheckpoint.team_state

MAX_INPUT_ID_CHARS = 128  # InputRequested.input_id / InputReceived.input_id (issue 21)
MAX_INPUT_TEXT_BYTES = 64 * 1024  # contract: InputReceived.text, 1 byte..64 KiB
MAX_DECISION_REASON_CHARS = 1000  # contract: ApprovalDecision.reason
MAX_INPUT_PROMPT_BYTES = 64 * 1024  # InputRequested.prompt (a human agent's prompt ≤ 32 KiB)

MAX_EVENTS_PER_APPEND = 1000  # contract: AppendRunEventsRequest.events
MAX_BATCHES_PER_APPEND = 1000  # contract: AppendRunEventBatchesRequest.batches
MAX_EVENTS_PER_BATCHES_APPEND = 10_000  # contract: AppendRunEventBatchesRequest, all batches

# (max, default) page sizes — contract: the request comments.
CONVERSATIONS_PAGE = (1000, 50)
MESSAGES_PAGE = (1000, 100)
RUNS_PAGE = (1000, 50)
EVENTS_PAGE = (5000, 1000)
