-- The store's generation: a random number made when the store is created and made
-- anew by `tern-server restore`. Clients see it in LoginResult; a change tells them the
-- store went back in time (a restore) and what they hold above the restore point may
-- differ from the server's.
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('generation', (random() & 4503599627370495) + 1);
-- Each timeline's (user or large-group log) head at the last restore: entries up to it
-- are the same as before the restore; entries above it are new.
CREATE TABLE restore_points (owner TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
-- Each webhook (push, c2s) has its own delivery worker and takes its own due jobs.
CREATE INDEX webhook_outbox_by_hook ON webhook_outbox (hook, next_at_ms);
