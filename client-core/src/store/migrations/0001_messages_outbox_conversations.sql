-- messages, outbox, conversations, cursor and state
CREATE TABLE messages (
    local_id INTEGER PRIMARY KEY,
    client_msg_id BLOB NOT NULL UNIQUE,
    server_msg_id INTEGER UNIQUE,
    conversation TEXT NOT NULL,
    conv_kind INTEGER NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    content_type INTEGER NOT NULL,
    body BLOB NOT NULL,
    client_ts INTEGER NOT NULL,
    server_ts INTEGER,
    seq INTEGER,
            outgoing INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error TEXT,
    announced INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX messages_unannounced ON messages (seq) WHERE announced = 0;
CREATE INDEX messages_by_conversation ON messages (conv_kind, conversation, server_ts, server_msg_id);
CREATE TABLE outbox (
    local_id INTEGER PRIMARY KEY REFERENCES messages (local_id)
);
CREATE TABLE conversations (
    conv_kind INTEGER NOT NULL,
    conversation TEXT NOT NULL,
    last_local_id INTEGER,
    last_activity INTEGER NOT NULL,
    base_unread INTEGER NOT NULL DEFAULT 0,
    base_seq INTEGER NOT NULL DEFAULT 0,
    latest_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conv_kind, conversation)
) WITHOUT ROWID;
CREATE TABLE received_seqs (seq INTEGER PRIMARY KEY);
CREATE TABLE state (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
