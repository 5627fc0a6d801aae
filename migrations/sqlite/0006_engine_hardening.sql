-- Dag run transitions name where they came from and who made them, as ti_transition does, so
-- that every recorded change can be checked against the model's rules (`from_state` is NULL
-- for the run's creation).
ALTER TABLE dag_run_transition ADD COLUMN from_state TEXT;
ALTER TABLE dag_run_transition ADD COLUMN actor TEXT NOT NULL DEFAULT 'scheduler';
ALTER TABLE dag_run_transition ADD COLUMN reason TEXT;

-- Dynamic task mapping: the label a mapped task instance shows (Airflow's
-- `map_index_template`, rendered after the try).
ALTER TABLE task_instance ADD COLUMN rendered_map_index TEXT;
