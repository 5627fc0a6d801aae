-- The dags folder's files stored by content, so that a remote worker needs no copy of the
-- folder: a bundle is a manifest of (path, blob) pairs named by the hash of that manifest;
-- every DAG row says which bundle it was parsed with.
CREATE TABLE dag_bundle_blob (
    hash     TEXT PRIMARY KEY,
    content  BYTEA NOT NULL
);
CREATE TABLE dag_bundle_file (
    bundle_hash  TEXT NOT NULL,
    path         TEXT NOT NULL,
    blob_hash    TEXT NOT NULL,
    executable   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (bundle_hash, path)
);
CREATE INDEX dag_bundle_file_blob ON dag_bundle_file (blob_hash);
ALTER TABLE serialized_dag ADD COLUMN bundle_hash TEXT;
