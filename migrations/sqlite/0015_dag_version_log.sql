-- Every version of a DAG the processor has stored (a new serialized hash), with the source
-- of its file at the time: Airflow's dagVersions, and the code of each.
CREATE TABLE dag_version_log (
    dag_id          TEXT NOT NULL,
    version_number  BIGINT NOT NULL,
    dag_hash        TEXT NOT NULL,
    fileloc         TEXT NOT NULL,
    source          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (dag_id, version_number)
);
CREATE UNIQUE INDEX dag_version_log_hash ON dag_version_log (dag_id, dag_hash);
-- The DAGs already stored start at version 1.
INSERT INTO dag_version_log (dag_id, version_number, dag_hash, fileloc, source, created_at)
SELECT s.dag_id, 1, s.dag_hash, s.fileloc, COALESCE(c.source, ''), s.updated_at
FROM serialized_dag s LEFT JOIN dag_code c ON c.fileloc = s.fileloc;
