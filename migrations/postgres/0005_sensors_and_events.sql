-- Sensors that reschedule or defer continue the same try later (Airflow's next_method /
-- next_kwargs); a deferred task instance waits on a row of `trigger`, run by a triggerer.
ALTER TABLE task_instance ADD COLUMN next_method TEXT;
ALTER TABLE task_instance ADD COLUMN next_kwargs TEXT;
ALTER TABLE task_instance ADD COLUMN trigger_id BIGINT;
ALTER TABLE task_instance ADD COLUMN trigger_timeout BIGINT;
CREATE INDEX task_instance_trigger ON task_instance (trigger_id);

CREATE TABLE trigger (
    id                   BIGSERIAL PRIMARY KEY,
    classpath            TEXT NOT NULL,
    kwargs               TEXT NOT NULL,
    created_date         BIGINT NOT NULL,
    -- The triggerer running it and its last sign of life; a stale one's triggers are taken over.
    triggerer_id         TEXT,
    triggerer_heartbeat  BIGINT
);

-- Every dag run state change, in order (task instances have ti_transition): the lifecycle
-- event publisher tails both by id.
CREATE TABLE dag_run_transition (
    id        BIGSERIAL PRIMARY KEY,
    dag_id    TEXT NOT NULL,
    run_id    TEXT NOT NULL,
    run_type  TEXT NOT NULL,
    to_state  TEXT NOT NULL,
    at        BIGINT NOT NULL
);
