-- A conversation is shown in the server's store order (server message id), not by the
-- server's wall clock: a clock stepped back must not make new messages look old.
DROP INDEX messages_by_conversation;
CREATE INDEX messages_by_conversation ON messages (conv_kind, conversation, server_msg_id);
