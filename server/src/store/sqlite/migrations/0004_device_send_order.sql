-- The per-device send order (ChatMessage.send_seq): the last one stored or refused for good.
ALTER TABLE devices ADD COLUMN send_seq INTEGER NOT NULL DEFAULT 0;
