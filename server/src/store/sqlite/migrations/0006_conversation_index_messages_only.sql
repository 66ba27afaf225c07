-- The per-conversation index holds message entries only. Every read of a conversation's
-- entries joins them to their message (a page of history, the summaries' last messages,
-- unread counts, read receipts), so the receipts and events it also held were written
-- and never read: under a relay load a delivered receipt is a third of the timeline's
-- entries, and this index took a third of the pages a commit wrote (docs/bench/
-- analysis.md, "Cost per message: thirteenth round"). Those reads now name the index
-- (timeline.rs, CONVERSATION_ENTRIES). Rebuilding it reads the timeline once, at the
-- first start after the upgrade, before the server listens.
DROP INDEX timeline_by_conversation;
CREATE INDEX timeline_by_conversation ON timeline (user, conv_kind, conversation, seq)
    WHERE message_id IS NOT NULL;
