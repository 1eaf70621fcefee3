-- Queries of `runner jobs`, the operator's commands, one named block each, named
-- entity first. runner.admin runs them. Every value is a bound parameter.
--
-- They stay cheap however many finished jobs the table holds: queued and running
-- rows are read through their partial indexes (jobs_claim_idx, jobs_running_idx)
-- and finished rows by state and finish time (jobs_finished_state_idx) or newest
-- first by id. `since` is a time (`since_at`) or an interval back from now
-- (`since_ago`), on the database's clock.

-- name: job_list
-- The newest jobs, by id, in the given states. Each state class is its own branch,
-- limited on its own, so that the planner picks an index per branch; finished jobs
-- are within `since` by their finish time, unfinished ones by their last change.
(SELECT id, task, queue, state::text, priority, attempts, max_attempts, run_at,
        created_at, updated_at, finished_at, last_error
 FROM runner.jobs
 WHERE state = 'queued'
   AND 'queued' = ANY(%(states)s::runner.job_state[])
   AND (%(task)s::text IS NULL OR task = %(task)s::text)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
   AND updated_at >= coalesce(%(since_at)s::timestamptz,
                              now() - %(since_ago)s::interval, '-infinity')
 ORDER BY id DESC
 LIMIT %(limit)s)
UNION ALL
(SELECT id, task, queue, state::text, priority, attempts, max_attempts, run_at,
        created_at, updated_at, finished_at, last_error
 FROM runner.jobs
 WHERE state = 'running'
   AND 'running' = ANY(%(states)s::runner.job_state[])
   AND (%(task)s::text IS NULL OR task = %(task)s::text)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
   AND updated_at >= coalesce(%(since_at)s::timestamptz,
                              now() - %(since_ago)s::interval, '-infinity')
 ORDER BY id DESC
 LIMIT %(limit)s)
UNION ALL
(SELECT id, task, queue, state::text, priority, attempts, max_attempts, run_at,
        created_at, updated_at, finished_at, last_error
 FROM runner.jobs
 -- Spelled out so that jobs_finished_state_idx, partial on it, can serve.
 WHERE finished_at IS NOT NULL
   AND state = ANY(%(states)s::runner.job_state[])
   AND (%(task)s::text IS NULL OR task = %(task)s::text)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
   AND finished_at >= coalesce(%(since_at)s::timestamptz,
                               now() - %(since_ago)s::interval, '-infinity')
 ORDER BY id DESC
 LIMIT %(limit)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: job_detail
-- Every column of one job, with what is known of the runner that holds it.
SELECT j.id, j.task, j.queue, j.priority, j.state::text, j.attempts, j.max_attempts,
       j.run_at, j.claimed_by, j.claimed_at, j.cancel_requested_at, j.created_at,
       j.updated_at, j.finished_at, j.last_error, j.args, j.result, j.errors,
       w.hostname AS runner_hostname, w.pid AS runner_pid,
       w.last_seen_at AS runner_last_seen_at, now() AS now
FROM runner.jobs AS j
LEFT JOIN runner.workers AS w ON w.id = j.claimed_by
WHERE j.id = %(id)s;

-- name: job_retry_by_hand
-- Put a failed or cancelled job back in the queue, runnable now, with a fresh set of
-- attempts. Its error history is kept, and says that it was retried.
UPDATE runner.jobs
SET state = 'queued', attempts = 0, run_at = now(), finished_at = NULL,
    cancel_requested_at = NULL, result = NULL, updated_at = now(),
    errors = runner.job_errors_append(errors, attempts, NULL, %(note)s)
WHERE id = %(id)s AND state IN ('failed', 'cancelled')
RETURNING max_attempts;

-- name: job_cancel_by_hand
-- Cancel a queued job at once; for a running job, record the request, which its
-- runner reads at its next heartbeat. Returns the job's state after the statement.
UPDATE runner.jobs
SET state = (CASE WHEN state = 'queued'
                  THEN 'cancelled' ELSE state END)::runner.job_state,
    finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END,
    cancel_requested_at = coalesce(cancel_requested_at, now()),
    updated_at = now()
WHERE id = %(id)s AND state IN ('queued', 'running')
RETURNING state::text, claimed_by, cancel_requested_at;

-- name: job_count
-- Jobs by task and state: every queued and running job, and the jobs that finished
-- within `since`.
SELECT task, state::text, count(*)
FROM (
    SELECT task, state FROM runner.jobs WHERE state = 'queued'
    UNION ALL
    SELECT task, state FROM runner.jobs WHERE state = 'running'
    UNION ALL
    SELECT task, state FROM runner.jobs
    WHERE finished_at IS NOT NULL
      AND state IN ('succeeded', 'failed', 'cancelled')
      AND finished_at >= coalesce(%(since_at)s::timestamptz,
                                  now() - %(since_ago)s::interval)
) AS j
GROUP BY task, state
ORDER BY task, state;

-- name: job_oldest_runnable
-- How many queued jobs may run now, for how long (seconds) the oldest has waited
-- since it fell due, and the time now.
SELECT count(*), extract(epoch FROM now() - min(run_at))::float8, now()
FROM runner.jobs
WHERE state = 'queued' AND run_at <= now();
