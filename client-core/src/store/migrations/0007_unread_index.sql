-- A conversation's unread count is the incoming messages above its read position: with
-- `outgoing` in the index, it is counted in the index alone, without visiting each
-- message's row (a catch-up re-counts every conversation a page touched). Same leading
-- columns as before, so every query that used the old index still does.
DROP INDEX messages_by_conv_seq;
CREATE INDEX messages_by_conv_seq ON messages (conv_kind, conversation, seq, outgoing);
