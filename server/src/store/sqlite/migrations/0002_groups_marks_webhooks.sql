-- groups, read marks, recall, push tokens, the webhook outbox. `timeline.event`
-- holds an encoded TimelineEntry body for entries that are neither a message nor a
-- receipt (recalls, group events).
ALTER TABLE timeline ADD COLUMN event BLOB;
ALTER TABLE messages ADD COLUMN recalled INTEGER NOT NULL DEFAULT 0;
CREATE TABLE groups (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE group_members (
    grp TEXT NOT NULL,
    user TEXT NOT NULL,
    joined INTEGER NOT NULL,
    PRIMARY KEY (grp, user)
) WITHOUT ROWID;
CREATE INDEX group_members_by_user ON group_members (user);
CREATE TABLE read_marks (
    user TEXT NOT NULL,
    conv_kind INTEGER NOT NULL,
    conversation TEXT NOT NULL,
    up_to_seq INTEGER NOT NULL,
    PRIMARY KEY (user, conv_kind, conversation)
) WITHOUT ROWID;
CREATE TABLE push_tokens (
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    platform INTEGER NOT NULL,
    provider TEXT NOT NULL,
    token TEXT NOT NULL,
    PRIMARY KEY (user, device)
) WITHOUT ROWID;
CREATE TABLE webhook_outbox (
    id INTEGER PRIMARY KEY,
    hook TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at_ms INTEGER NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at_ms);
