-- flow's metadata schema. Times are microseconds since the Unix epoch (UTC) in BIGINT columns
-- and flags are 0/1 BIGINTs, so that PostgreSQL and SQLite share every query.

CREATE TABLE dag (
    dag_id              TEXT PRIMARY KEY,
    fileloc             TEXT NOT NULL,
    relative_fileloc    TEXT NOT NULL,
    is_paused           BIGINT NOT NULL DEFAULT 1,
    is_active           BIGINT NOT NULL DEFAULT 1,
    owners              TEXT NOT NULL DEFAULT '',
    description         TEXT,
    schedule            TEXT NOT NULL DEFAULT 'None',
    timetable_summary   TEXT NOT NULL DEFAULT '',
    tags                TEXT NOT NULL DEFAULT '[]',
    max_active_runs     BIGINT NOT NULL DEFAULT 16,
    max_active_tasks    BIGINT NOT NULL DEFAULT 16,
    dag_hash            TEXT NOT NULL DEFAULT '',
    next_dagrun                     BIGINT,
    next_dagrun_data_interval_start BIGINT,
    next_dagrun_data_interval_end   BIGINT,
    next_dagrun_create_after        BIGINT,
    last_parsed_time    BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE serialized_dag (
    dag_id      TEXT PRIMARY KEY,
    data        TEXT NOT NULL,
    dag_hash    TEXT NOT NULL,
    fileloc     TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE dag_code (
    fileloc      TEXT PRIMARY KEY,
    source       TEXT NOT NULL,
    source_hash  TEXT NOT NULL,
    updated_at   BIGINT NOT NULL
);

CREATE TABLE import_error (
    id          BIGSERIAL PRIMARY KEY,
    filename    TEXT NOT NULL UNIQUE,
    stacktrace  TEXT NOT NULL,
    timestamp   BIGINT NOT NULL
);

CREATE TABLE dag_run (
    id                   BIGSERIAL PRIMARY KEY,
    dag_id               TEXT NOT NULL,
    run_id               TEXT NOT NULL,
    run_type             TEXT NOT NULL,
    state                TEXT NOT NULL,
    logical_date         BIGINT,
    data_interval_start  BIGINT,
    data_interval_end    BIGINT,
    run_after            BIGINT NOT NULL,
    queued_at            BIGINT,
    start_date           BIGINT,
    end_date             BIGINT,
    conf                 TEXT NOT NULL DEFAULT '{}',
    note                 TEXT,
    triggered_by         TEXT,
    dag_hash             TEXT NOT NULL DEFAULT '',
    updated_at           BIGINT NOT NULL,
    UNIQUE (dag_id, run_id)
);
-- One automated run per logical date: two schedulers (or a restarted one) cannot both create it.
CREATE UNIQUE INDEX dag_run_dag_logical_date ON dag_run (dag_id, logical_date)
    WHERE logical_date IS NOT NULL AND run_type IN ('scheduled', 'backfill');
CREATE INDEX dag_run_state ON dag_run (state, dag_id);

CREATE TABLE task_instance (
    dag_id             TEXT NOT NULL,
    run_id             TEXT NOT NULL,
    task_id            TEXT NOT NULL,
    map_index          BIGINT NOT NULL DEFAULT -1,
    state              TEXT NOT NULL DEFAULT 'none',
    try_number         BIGINT NOT NULL DEFAULT 0,
    max_tries          BIGINT NOT NULL DEFAULT 0,
    operator           TEXT NOT NULL DEFAULT '',
    queue              TEXT NOT NULL DEFAULT 'default',
    pool               TEXT NOT NULL DEFAULT 'default_pool',
    pool_slots         BIGINT NOT NULL DEFAULT 1,
    priority_weight    BIGINT NOT NULL DEFAULT 1,
    start_date         BIGINT,
    end_date           BIGINT,
    duration           DOUBLE PRECISION,
    scheduled_dttm     BIGINT,
    queued_dttm        BIGINT,
    next_retry_at      BIGINT,
    hostname           TEXT NOT NULL DEFAULT '',
    pid                BIGINT,
    worker_id          TEXT,
    last_heartbeat_at  BIGINT,
    rendered_fields    TEXT,
    note               TEXT,
    updated_at         BIGINT NOT NULL,
    PRIMARY KEY (dag_id, run_id, task_id, map_index)
);
CREATE INDEX task_instance_state ON task_instance (state, queue, priority_weight);
CREATE INDEX task_instance_pool ON task_instance (pool, state);

CREATE TABLE task_instance_history (
    id               BIGSERIAL PRIMARY KEY,
    dag_id           TEXT NOT NULL,
    run_id           TEXT NOT NULL,
    task_id          TEXT NOT NULL,
    map_index        BIGINT NOT NULL,
    try_number       BIGINT NOT NULL,
    state            TEXT NOT NULL,
    start_date       BIGINT,
    end_date         BIGINT,
    duration         DOUBLE PRECISION,
    hostname         TEXT NOT NULL DEFAULT '',
    operator         TEXT NOT NULL DEFAULT '',
    queue            TEXT NOT NULL DEFAULT '',
    pool             TEXT NOT NULL DEFAULT '',
    reason           TEXT,
    UNIQUE (dag_id, run_id, task_id, map_index, try_number)
);

CREATE TABLE ti_transition (
    id           BIGSERIAL PRIMARY KEY,
    dag_id       TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    map_index    BIGINT NOT NULL,
    try_number   BIGINT NOT NULL,
    from_state   TEXT NOT NULL,
    to_state     TEXT NOT NULL,
    actor        TEXT NOT NULL,
    reason       TEXT,
    at           BIGINT NOT NULL
);
CREATE INDEX ti_transition_ti ON ti_transition (dag_id, run_id, task_id, map_index, id);

CREATE TABLE xcom (
    dag_id      TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    map_index   BIGINT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    timestamp   BIGINT NOT NULL,
    PRIMARY KEY (dag_id, run_id, task_id, map_index, key)
);

CREATE TABLE log_chunk (
    id          BIGSERIAL PRIMARY KEY,
    dag_id      TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    map_index   BIGINT NOT NULL,
    try_number  BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    stream      TEXT NOT NULL,
    line        TEXT NOT NULL
);
CREATE INDEX log_chunk_ti ON log_chunk (dag_id, run_id, task_id, map_index, try_number, id);

CREATE TABLE slot_pool (
    pool         TEXT PRIMARY KEY,
    slots        BIGINT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    include_deferred BIGINT NOT NULL DEFAULT 0
);
INSERT INTO slot_pool (pool, slots, description) VALUES ('default_pool', 128, 'Default pool');

CREATE TABLE job (
    id                BIGSERIAL PRIMARY KEY,
    job_type          TEXT NOT NULL,
    hostname          TEXT NOT NULL,
    state             TEXT NOT NULL,
    start_date        BIGINT NOT NULL,
    latest_heartbeat  BIGINT NOT NULL,
    end_date          BIGINT
);
