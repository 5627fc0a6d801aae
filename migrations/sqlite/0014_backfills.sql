-- Backfills as Airflow 3 models them: a range of logical dates of one DAG, its runs (made
-- queued at once, each carrying `backfill_id`) started within the backfill's own
-- `max_active_runs`, pausable and cancellable. `completed_at` is set when its last run
-- ends or when it is cancelled; one backfill per DAG runs at a time.
CREATE TABLE backfill (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    dag_id              TEXT NOT NULL,
    from_date           BIGINT NOT NULL,
    to_date             BIGINT NOT NULL,
    dag_run_conf        TEXT NOT NULL DEFAULT '{}',
    is_paused           BIGINT NOT NULL DEFAULT 0,
    reprocess_behavior  TEXT NOT NULL,
    max_active_runs     BIGINT NOT NULL,
    run_backwards       BIGINT NOT NULL DEFAULT 0,
    triggering_user     TEXT,
    created_at          BIGINT NOT NULL,
    completed_at        BIGINT,
    updated_at          BIGINT NOT NULL
);
CREATE INDEX backfill_dag ON backfill (dag_id, completed_at);
ALTER TABLE dag_run ADD COLUMN backfill_id BIGINT;
CREATE INDEX dag_run_backfill ON dag_run (backfill_id);
