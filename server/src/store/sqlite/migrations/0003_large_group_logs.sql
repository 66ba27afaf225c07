-- large groups keep one log (the timeline of the pseudo-user `#<group>`) instead
-- of an entry per member.
ALTER TABLE groups ADD COLUMN large INTEGER NOT NULL DEFAULT 0;
CREATE TABLE log_joins (
    grp TEXT NOT NULL,
    user TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (grp, user)
) WITHOUT ROWID;
