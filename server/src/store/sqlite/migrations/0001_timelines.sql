-- messages, timelines, per-user heads, conversations, device cursors.
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    sender TEXT NOT NULL,
    client_msg_id BLOB NOT NULL,
    recipient TEXT NOT NULL,
    kind INTEGER NOT NULL,
    content_type INTEGER NOT NULL,
    body BLOB NOT NULL,
    client_ts INTEGER NOT NULL,
    server_ts INTEGER NOT NULL,
    sender_seq INTEGER NOT NULL,
    UNIQUE (sender, client_msg_id)
);
CREATE TABLE timeline (
    user TEXT NOT NULL,
    seq INTEGER NOT NULL,
    conv_kind INTEGER NOT NULL,
    conversation TEXT NOT NULL,
    message_id INTEGER,
    receipt BLOB,
    PRIMARY KEY (user, seq)
) WITHOUT ROWID;
CREATE INDEX timeline_by_conversation ON timeline (user, conv_kind, conversation, seq);
CREATE TABLE users (
    user TEXT PRIMARY KEY,
    head_seq INTEGER NOT NULL DEFAULT 0,
    delivered_seq INTEGER NOT NULL DEFAULT 0,
    last_login_ms INTEGER
) WITHOUT ROWID;
CREATE TABLE conversations (
    user TEXT NOT NULL,
    conv_kind INTEGER NOT NULL,
    conversation TEXT NOT NULL,
    latest_seq INTEGER NOT NULL,
    unread INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, conv_kind, conversation)
) WITHOUT ROWID;
CREATE INDEX conversations_by_activity ON conversations (user, latest_seq);
CREATE TABLE devices (
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    delivered_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, device)
) WITHOUT ROWID;
