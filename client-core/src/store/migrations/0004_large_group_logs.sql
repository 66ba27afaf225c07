-- large groups (read diffusion). Their messages are entries of the group's log,
-- not of the user's timeline: `messages.log` names the log and `seq` is the log's
-- seq. Each log has its own cursor (`state` keys `cursor:<group>`,
-- `sync_base:<group>`) and held-above-a-gap set.
ALTER TABLE messages ADD COLUMN log TEXT;
CREATE TABLE log_received (log TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (log, seq)) WITHOUT ROWID;
CREATE TABLE logs (grp TEXT PRIMARY KEY) WITHOUT ROWID;
ALTER TABLE conversations ADD COLUMN base_mark INTEGER NOT NULL DEFAULT 0;
