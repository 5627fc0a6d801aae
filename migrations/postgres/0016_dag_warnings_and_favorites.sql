-- Airflow's dag_warning: a problem with a DAG that does not stop it loading (a pool it
-- names does not exist, a connection its Kafka trigger needs is missing), kept while it
-- lasts and shown on the DAG list, instead of a log line every few seconds.
CREATE TABLE dag_warning (
    dag_id        TEXT NOT NULL,
    warning_type  TEXT NOT NULL,
    message       TEXT NOT NULL,
    timestamp     BIGINT NOT NULL,
    PRIMARY KEY (dag_id, warning_type)
);
-- A user's favourite DAGs (Airflow 3's dag_favorite), by user name.
CREATE TABLE dag_favorite (
    username  TEXT NOT NULL,
    dag_id    TEXT NOT NULL,
    PRIMARY KEY (username, dag_id)
);
