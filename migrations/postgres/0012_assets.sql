-- Assets (Airflow 2's datasets), known by URI. Rows stay when no DAG refers to an asset any
-- more: its events are history.
CREATE TABLE asset (
    id          BIGSERIAL PRIMARY KEY,
    uri         TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    asset_group TEXT NOT NULL DEFAULT 'asset',
    extra       TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Who refers to an asset, as the DAG processor last read each DAG: `schedule` (the DAG runs
-- on it; task_id is ''), `outlet` and `inlet` (a task updates or reads it).
CREATE TABLE asset_reference (
    asset_id    BIGINT NOT NULL,
    dag_id      TEXT NOT NULL,
    task_id     TEXT NOT NULL DEFAULT '',
    kind        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (asset_id, dag_id, task_id, kind)
);
CREATE INDEX asset_reference_dag ON asset_reference (dag_id);

-- An update of an asset: by a task's success (source_*) or through the REST API.
CREATE TABLE asset_event (
    id               BIGSERIAL PRIMARY KEY,
    asset_id         BIGINT NOT NULL,
    extra            TEXT NOT NULL DEFAULT '{}',
    source_dag_id    TEXT,
    source_task_id   TEXT,
    source_run_id    TEXT,
    source_map_index BIGINT NOT NULL DEFAULT -1,
    timestamp        BIGINT NOT NULL
);
CREATE INDEX asset_event_asset ON asset_event (asset_id, id);

-- Events waiting for a DAG scheduled on their asset (Airflow's asset_dag_run_queue, one row
-- per event): made with the event, deleted by the transaction that creates the run they
-- trigger, so that each is consumed once whichever scheduler gets there first.
CREATE TABLE asset_dag_run_queue (
    target_dag_id TEXT NOT NULL,
    event_id      BIGINT NOT NULL,
    asset_id      BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (target_dag_id, event_id)
);

-- The events an asset-triggered run consumed (its `triggering_asset_events`).
CREATE TABLE dag_run_asset_event (
    dag_id    TEXT NOT NULL,
    run_id    TEXT NOT NULL,
    event_id  BIGINT NOT NULL,
    PRIMARY KEY (dag_id, run_id, event_id)
);
CREATE INDEX dag_run_asset_event_event ON dag_run_asset_event (event_id);
