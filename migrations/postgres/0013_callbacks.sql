-- Callbacks and notifiers waiting to run, running, or done: one row per callback of an event
-- (a task instance's try reaching a state, or a run finishing), made in the transaction that
-- records the state, run by any worker's callback runner (claimed by `claimed_by` with a
-- lease), retried with a backoff, every attempt appended to `log`.
CREATE TABLE callback_request (
    id              BIGSERIAL PRIMARY KEY,
    dag_id          TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    -- NULL for a DAG's own callbacks.
    task_id         TEXT,
    map_index       BIGINT NOT NULL DEFAULT -1,
    try_number      BIGINT NOT NULL DEFAULT 0,
    event           TEXT NOT NULL,
    callback_index  BIGINT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL,
    reason          TEXT,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    claimed_by      TEXT,
    claimed_at      BIGINT,
    log             TEXT NOT NULL DEFAULT '',
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX callback_request_due ON callback_request (status, next_attempt_at);
CREATE INDEX callback_request_ti ON callback_request (dag_id, run_id, task_id);
