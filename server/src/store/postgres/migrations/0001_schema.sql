-- The whole schema of the first PostgreSQL release: the same model as the SQLite store
-- (its migrations 0001-0005). `uid` is the user id (`user` is reserved in PostgreSQL).
-- Every hot query is by `uid` or by group id, so the tables can be distributed by
-- those keys later (see docs/operations.md).
CREATE TABLE messages (
    id BIGSERIAL PRIMARY KEY,
    sender TEXT NOT NULL,
    client_msg_id BYTEA NOT NULL,
    recipient TEXT NOT NULL,
    kind INTEGER NOT NULL,
    content_type BIGINT NOT NULL,
    body BYTEA NOT NULL,
    client_ts BIGINT NOT NULL,
    server_ts BIGINT NOT NULL,
    sender_seq BIGINT NOT NULL,
    recalled BOOLEAN NOT NULL DEFAULT false,
    UNIQUE (sender, client_msg_id)
);
CREATE TABLE timeline (
    uid TEXT NOT NULL,
    seq BIGINT NOT NULL,
    conv_kind INTEGER NOT NULL,
    conversation TEXT NOT NULL,
    message_id BIGINT,
    receipt BYTEA,
    event BYTEA,
    PRIMARY KEY (uid, seq)
);
CREATE INDEX timeline_by_conversation ON timeline (uid, conv_kind, conversation, seq);
CREATE TABLE users (
    uid TEXT PRIMARY KEY,
    head_seq BIGINT NOT NULL DEFAULT 0,
    delivered_seq BIGINT NOT NULL DEFAULT 0,
    last_login_ms BIGINT
);
CREATE TABLE conversations (
    uid TEXT NOT NULL,
    conv_kind INTEGER NOT NULL,
    conversation TEXT NOT NULL,
    latest_seq BIGINT NOT NULL,
    unread BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (uid, conv_kind, conversation)
);
CREATE INDEX conversations_by_activity ON conversations (uid, latest_seq);
CREATE TABLE devices (
    uid TEXT NOT NULL,
    device TEXT NOT NULL,
    delivered_seq BIGINT NOT NULL DEFAULT 0,
    send_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (uid, device)
);
CREATE TABLE groups (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    large BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE group_members (
    grp TEXT NOT NULL,
    uid TEXT NOT NULL,
    joined BIGINT NOT NULL,
    PRIMARY KEY (grp, uid)
);
CREATE INDEX group_members_by_user ON group_members (uid);
CREATE TABLE log_joins (
    grp TEXT NOT NULL,
    uid TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (grp, uid)
);
CREATE TABLE read_marks (
    uid TEXT NOT NULL,
    conv_kind INTEGER NOT NULL,
    conversation TEXT NOT NULL,
    up_to_seq BIGINT NOT NULL,
    PRIMARY KEY (uid, conv_kind, conversation)
);
CREATE TABLE push_tokens (
    uid TEXT NOT NULL,
    device TEXT NOT NULL,
    platform INTEGER NOT NULL,
    provider TEXT NOT NULL,
    token TEXT NOT NULL,
    PRIMARY KEY (uid, device)
);
-- `leased_until_ms`: a worker (on any server) that took a job holds it until then; a
-- job of a server that died becomes due again when its lease ends.
CREATE TABLE webhook_outbox (
    id BIGSERIAL PRIMARY KEY,
    hook TEXT NOT NULL,
    payload BYTEA NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at_ms BIGINT NOT NULL,
    leased_until_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX webhook_outbox_by_hook ON webhook_outbox (hook, next_at_ms, id);
-- The store's generation (see the SQLite migration 0005) and restore points.
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('generation', floor(random() * 4503599627370495)::bigint + 1);
CREATE TABLE restore_points (owner TEXT PRIMARY KEY, seq BIGINT NOT NULL);
