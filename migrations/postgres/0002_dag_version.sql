-- A counter bumped by every change to DAG rows or pools made outside the scheduler's own
-- bookkeeping (a parse, a pause, a pool edit), so that an idle scheduler can tell in one
-- tiny query whether it must re-read them.
CREATE TABLE dag_version (
    id       BIGINT PRIMARY KEY,
    version  BIGINT NOT NULL
);
INSERT INTO dag_version (id, version) VALUES (1, 0);
