-- Initial schema of history-svc on PostgreSQL. Times are timestamptz (µs precision);
-- nested messages that people read are jsonb; the lossless Run record is bytea.

CREATE TABLE conversations (
    id uuid PRIMARY KEY,
    owner text NOT NULL,
    title text NOT NULL DEFAULT '',
    model_provider text NOT NULL DEFAULT '',
    model_name text NOT NULL DEFAULT '',
    team text NOT NULL DEFAULT '',
    metadata jsonb NOT NULL DEFAULT '{}',
    message_count bigint NOT NULL DEFAULT 0,
    request_id text,
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL
);
CREATE UNIQUE INDEX conversations_owner_request_id ON conversations (owner, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX conversations_owner_update_time ON conversations (owner, update_time DESC, id DESC);

CREATE TABLE messages (
    id uuid PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    position bigint NOT NULL,
    client_message_id text,
    role smallint NOT NULL,
    agent text NOT NULL DEFAULT '',
    content text NOT NULL DEFAULT '',
    tool_calls jsonb,
    tool_call_id text NOT NULL DEFAULT '',
    usage jsonb,
    run_id uuid,
    create_time timestamptz NOT NULL,
    UNIQUE (conversation_id, position)
);
CREATE UNIQUE INDEX messages_client_message_id ON messages (conversation_id, client_message_id)
    WHERE client_message_id IS NOT NULL;
CREATE INDEX messages_run ON messages (conversation_id, run_id, position)
    WHERE run_id IS NOT NULL;

CREATE TABLE runs (
    id uuid PRIMARY KEY,
    owner text NOT NULL,
    conversation_id uuid NOT NULL,
    status smallint NOT NULL,
    request_id text,
    input text NOT NULL DEFAULT '',
    turns integer NOT NULL DEFAULT 0,
    final_answer text NOT NULL DEFAULT '',
    error jsonb,
    cancellation jsonb,
    usage jsonb,
    owner_instance text NOT NULL DEFAULT '',
    heartbeat_time timestamptz,
    create_time timestamptz NOT NULL,
    start_time timestamptz,
    end_time timestamptz,
    update_time timestamptz NOT NULL,
    -- Run.last_seq: never decreases; AppendRunEvents raises it.
    last_seq bigint NOT NULL DEFAULT 0,
    -- Highest seq in run_events and whether a terminal event is stored (event-log rules).
    event_seq bigint NOT NULL DEFAULT 0,
    events_ended boolean NOT NULL DEFAULT false,
    -- The whole chorus.v1.Run (spec with its resolved team), without last_seq.
    record bytea NOT NULL
);
CREATE UNIQUE INDEX runs_owner_request_id ON runs (owner, request_id) WHERE request_id IS NOT NULL;
-- One active (QUEUED = 1, RUNNING = 2) run per conversation.
CREATE UNIQUE INDEX runs_one_active_per_conversation ON runs (conversation_id)
    WHERE status IN (1, 2);
CREATE INDEX runs_owner_create_time ON runs (owner, create_time DESC, id DESC);
CREATE INDEX runs_create_time ON runs (create_time DESC, id DESC);
CREATE INDEX runs_conversation ON runs (conversation_id, create_time DESC);
CREATE INDEX runs_active_heartbeat ON runs ((coalesce(heartbeat_time, create_time)))
    WHERE status IN (1, 2);

CREATE TABLE run_events (
    run_id uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq bigint NOT NULL,
    kind text NOT NULL,
    event bytea NOT NULL,
    PRIMARY KEY (run_id, seq)
);
