-- The device's send order (ChatMessage.send_seq), assigned when a message enters the
-- outbox (state key `send_seq` holds the last one); rows from before are 0 (unordered).
ALTER TABLE outbox ADD COLUMN send_seq INTEGER NOT NULL DEFAULT 0;
