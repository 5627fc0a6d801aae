-- The cluster page and the home page chart the last 24 hours: tries that ended and runs that
-- finished, by hour. These indexes keep that a range read, whatever the history's size.
CREATE INDEX task_instance_history_end ON task_instance_history (end_date);
CREATE INDEX dag_run_end ON dag_run (end_date);
