-- recalls, group read counts, read marks waiting to reach the server, the seq
-- ranges of each conversation held completely (history roaming), group names.
ALTER TABLE messages ADD COLUMN recalled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN read_count INTEGER NOT NULL DEFAULT 0;
CREATE INDEX messages_by_conv_seq ON messages (conv_kind, conversation, seq);
CREATE TABLE recalled_ids (server_msg_id INTEGER PRIMARY KEY);
CREATE TABLE group_reads (
    conversation TEXT NOT NULL,
    reader TEXT NOT NULL,
    up_to INTEGER NOT NULL,
    PRIMARY KEY (conversation, reader)
) WITHOUT ROWID;
CREATE TABLE pending_reads (
    conv_kind INTEGER NOT NULL,
    conversation TEXT NOT NULL,
    up_to_seq INTEGER NOT NULL,
    PRIMARY KEY (conv_kind, conversation)
) WITHOUT ROWID;
CREATE TABLE held_ranges (
    conv_kind INTEGER NOT NULL,
    conversation TEXT NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    PRIMARY KEY (conv_kind, conversation, lo)
) WITHOUT ROWID;
CREATE TABLE groups (id TEXT PRIMARY KEY, name TEXT NOT NULL) WITHOUT ROWID;
