-- Retention (`flow db clean`, `[core] max_runs_kept_per_dag`) deletes a run's transitions with
-- it; without this index each batch of runs would read the whole dag_run_transition table.
CREATE INDEX dag_run_transition_run ON dag_run_transition (dag_id, run_id);
