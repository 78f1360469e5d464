-- Initial schema of history-svc on SQLite (the embedded default). Times are integer
-- microseconds since the Unix epoch (UTC); JSON columns are text; ids are text UUIDs.

CREATE TABLE conversations (
    id text PRIMARY KEY,
    owner text NOT NULL,
    title text NOT NULL DEFAULT '',
    model_provider text NOT NULL DEFAULT '',
    model_name text NOT NULL DEFAULT '',
    team text NOT NULL DEFAULT '',
    metadata text NOT NULL DEFAULT '{}',
    message_count integer NOT NULL DEFAULT 0,
    request_id text,
    create_time integer NOT NULL,
    update_time integer NOT NULL
);
CREATE UNIQUE INDEX conversations_owner_request_id ON conversations (owner, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX conversations_owner_update_time ON conversations (owner, update_time DESC, id DESC);

CREATE TABLE messages (
    id text PRIMARY KEY,
    conversation_id text NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    position integer NOT NULL,
    client_message_id text,
    role integer NOT NULL,
    agent text NOT NULL DEFAULT '',
    content text NOT NULL DEFAULT '',
    tool_calls text,
    tool_call_id text NOT NULL DEFAULT '',
    usage text,
    run_id text,
    create_time integer NOT NULL,
    UNIQUE (conversation_id, position)
);
CREATE UNIQUE INDEX messages_client_message_id ON messages (conversation_id, client_message_id)
    WHERE client_message_id IS NOT NULL;
CREATE INDEX messages_run ON messages (conversation_id, run_id, position)
    WHERE run_id IS NOT NULL;

CREATE TABLE runs (
    id text PRIMARY KEY,
    owner text NOT NULL,
    conversation_id text NOT NULL,
    status integer NOT NULL,
    request_id text,
    input text NOT NULL DEFAULT '',
    turns integer NOT NULL DEFAULT 0,
    final_answer text NOT NULL DEFAULT '',
    error text,
    cancellation text,
    usage text,
    owner_instance text NOT NULL DEFAULT '',
    heartbeat_time integer,
    create_time integer NOT NULL,
    start_time integer,
    end_time integer,
    update_time integer NOT NULL,
    last_seq integer NOT NULL DEFAULT 0,
    event_seq integer NOT NULL DEFAULT 0,
    events_ended integer NOT NULL DEFAULT 0,
    record blob NOT NULL
);
CREATE UNIQUE INDEX runs_owner_request_id ON runs (owner, request_id) WHERE request_id IS NOT NULL;
CREATE UNIQUE INDEX runs_one_active_per_conversation ON runs (conversation_id)
    WHERE status IN (1, 2);
CREATE INDEX runs_owner_create_time ON runs (owner, create_time DESC, id DESC);
CREATE INDEX runs_create_time ON runs (create_time DESC, id DESC);
CREATE INDEX runs_conversation ON runs (conversation_id, create_time DESC);

CREATE TABLE run_events (
    run_id text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq integer NOT NULL,
    kind text NOT NULL,
    event blob NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
