-- SQLite has no LISTEN/NOTIFY. A transaction that would notify a channel on PostgreSQL bumps
-- that channel's counter here instead; watchers (the scheduler, workers and the triggerer of
-- any process on this file) read the counters when `PRAGMA data_version` says another
-- connection committed, and wake the loops whose channel moved. A bump is visible only once
-- its transaction commits, as a NOTIFY is delivered only then.
CREATE TABLE wake_signal (
    channel TEXT PRIMARY KEY,
    seq BIGINT NOT NULL DEFAULT 0
);
INSERT INTO wake_signal (channel, seq) VALUES
    ('flow_wake_scheduler', 0),
    ('flow_wake_workers', 0),
    ('flow_wake_triggerer', 0);
