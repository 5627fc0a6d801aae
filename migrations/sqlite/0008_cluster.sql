-- The distributed mode: jobs say who and what they are (a worker's id must be unique among
-- live workers), and small facts the processes of a cluster must agree on.
ALTER TABLE job ADD COLUMN unixname TEXT;
ALTER TABLE job ADD COLUMN pid BIGINT;
ALTER TABLE job ADD COLUMN version TEXT;
-- A worker's id (`flow worker --worker-id`), a triggerer's id: unique among live jobs.
ALTER TABLE job ADD COLUMN instance TEXT;
CREATE INDEX job_type_state ON job (job_type, state);

-- key -> value: the Fernet check token (a constant encrypted with the cluster's key, so a
-- process started with another key is refused before it writes anything).
CREATE TABLE flow_meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
