-- The queues a worker serves (comma-separated), so that the scheduler can say when a task
-- waits in a queue no live worker serves.
ALTER TABLE job ADD COLUMN queues TEXT;
