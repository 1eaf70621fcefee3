-- Runtime queries, one named block each, named entity first. runner.queries loads
-- them once. Every value is a bound parameter.

-- name: job_insert
INSERT INTO runner.jobs (task, args, queue, priority, max_attempts, run_at)
VALUES (
    %(task)s, %(args)s, %(queue)s, %(priority)s, %(max_attempts)s,
    coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay)s))
)
RETURNING id;

-- name: job_insert_many
-- One job per element of `args`, all with the same options, in one statement: the
-- insert trigger then notifies once. Ids follow the order of `args`.
INSERT INTO runner.jobs (task, args, queue, priority, max_attempts, run_at)
SELECT %(task)s, a.args, %(queue)s, %(priority)s, %(max_attempts)s,
       coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay)s))
FROM unnest(%(args)s::jsonb[]) WITH ORDINALITY AS a (args, n)
ORDER BY a.n
RETURNING id;

-- name: job_insert_unique
-- Insert the job unless a queued or running job has the same unique key. A racing
-- insert of the same key waits here for the other transaction, then inserts nothing
-- if it committed; job_get_unique then reads the job that won.
INSERT INTO runner.jobs (task, args, queue, priority, max_attempts, run_at, unique_key)
VALUES (
    %(task)s, %(args)s, %(queue)s, %(priority)s, %(max_attempts)s,
    coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay)s)),
    %(unique_key)s
)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('queued', 'running')
DO NOTHING
RETURNING id;

-- name: job_get_unique
-- The queued or running job with a unique key: a lookup in jobs_unique_key_idx.
SELECT id FROM runner.jobs
WHERE unique_key = %(unique_key)s AND state IN ('queued', 'running');

-- name: job_insert_due_rotations
-- Enqueue a rotation of each key older than `age` seconds that has not expired, has
-- no successor and no rotation queued or running: the oldest `batch` of them, each
-- sealing its new secret to `recipient` (NULL: to nobody). Each half reads one
-- index range (see schema.sql), stopping once it has enough.
WITH candidates AS (
    (SELECT k.id, k.created_at
     FROM control_plane.api_keys AS k
     WHERE k.expires_at IS NULL
       AND k.created_at < now() - make_interval(secs => %(age)s)
       AND NOT EXISTS (
           SELECT 1 FROM control_plane.api_keys AS s WHERE s.replaces_key_id = k.id)
       AND NOT EXISTS (
           SELECT 1 FROM runner.jobs AS j
           WHERE j.unique_key = %(unique_prefix)s::text || k.id
             AND j.state IN ('queued', 'running'))
     ORDER BY k.created_at, k.id
     LIMIT %(batch)s)
    UNION ALL
    (SELECT k.id, k.created_at
     FROM control_plane.api_keys AS k
     WHERE k.expires_at > now()
       AND k.created_at < now() - make_interval(secs => %(age)s)
       AND NOT EXISTS (
           SELECT 1 FROM control_plane.api_keys AS s WHERE s.replaces_key_id = k.id)
       AND NOT EXISTS (
           SELECT 1 FROM runner.jobs AS j
           WHERE j.unique_key = %(unique_prefix)s::text || k.id
             AND j.state IN ('queued', 'running'))
     ORDER BY k.created_at, k.id
     LIMIT %(batch)s)
), due AS (
    SELECT id FROM candidates ORDER BY created_at, id LIMIT %(batch)s
)
INSERT INTO runner.jobs (task, args, unique_key)
SELECT 'rotate_key',
       -- Without a recipient the argument is left out, as rotate_key's default.
       jsonb_strip_nulls(jsonb_build_object(
           'key_id', id,
           'requested_by', %(requested_by)s::text,
           'recipient', %(recipient)s::text)),
       %(unique_prefix)s::text || id
FROM due
-- A rotation enqueued meanwhile by someone else wins.
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('queued', 'running')
DO NOTHING
RETURNING id, (args ->> 'key_id')::integer;

-- name: job_claim
-- Claim up to `limit` runnable jobs: highest priority, then oldest, from the
-- runner's queues (or any queue). Their attempts are counted here, before their
-- handlers run. The same statement first records the successes the runner has not
-- recorded yet (`done_ids` with their `results`), as job_succeed does, and
-- returns in `recorded` the ids of those whose claim it still held; with `beat`,
-- it also records that the runner is alive, as worker_heartbeat does. So a busy
-- runner needs one round trip per batch of jobs, an idle one one per poll. The
-- queue test filters rows of the claim index, so it never changes the plan. When
-- nothing is claimed, `next_due_in` says in how many seconds the earliest queued
-- job falls due (NULL: none is queued). `waited` is how long each job had been
-- runnable.
WITH done AS (
    UPDATE runner.jobs AS j
    SET state = 'succeeded', result = d.result, finished_at = now(),
        updated_at = now(), claimed_by = NULL, claimed_at = NULL
    FROM unnest(%(done_ids)s::bigint[], %(results)s::jsonb[]) AS d (id, result)
    -- The ANY() gives the plan a primary key lookup, whatever the table's size.
    WHERE j.id = ANY(%(done_ids)s::bigint[]) AND j.id = d.id
      AND j.state = 'running' AND j.claimed_by = %(worker_id)s
    RETURNING j.id
), beat AS (
    INSERT INTO runner.workers (id, hostname, pid)
    SELECT %(worker_id)s, %(hostname)s, %(pid)s
    WHERE %(beat)s
    ON CONFLICT (id) DO UPDATE SET last_seen_at = now()
), next AS (
    SELECT id
    FROM runner.jobs
    WHERE state = 'queued' AND run_at <= now()
      AND (%(any_queue)s OR queue = ANY(%(queues)s::text[]))
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE runner.jobs AS j
    SET state = 'running', attempts = j.attempts + 1,
        claimed_by = %(worker_id)s, claimed_at = now(), updated_at = now()
    -- An array, not a join, so that the plan looks the rows up by primary key
    -- rather than hashing the whole table.
    WHERE j.id = ANY(ARRAY(SELECT id FROM next))
    RETURNING j.id, j.task, j.args, j.queue, j.attempts, j.max_attempts,
              j.priority, j.run_at
)
SELECT c.id, c.task, c.args, c.queue, c.attempts, c.max_attempts,
       extract(epoch FROM now() - c.run_at)::float8 AS waited,
       (SELECT coalesce(array_agg(id), '{}') FROM done) AS recorded,
       CASE WHEN c.id IS NULL AND %(limit)s > 0 THEN (
           SELECT extract(epoch FROM min(run_at) - now())::float8
           FROM runner.jobs WHERE state = 'queued'
       ) END AS next_due_in
FROM (SELECT) AS one
LEFT JOIN claimed AS c ON true
ORDER BY c.priority DESC, c.run_at, c.id;

-- name: job_succeed
-- Every finishing write checks that this runner still holds the claim, so an attempt
-- whose job was taken away cannot record an outcome.
UPDATE runner.jobs
SET state = 'succeeded', result = %(result)s, finished_at = now(), updated_at = now(),
    claimed_by = NULL, claimed_at = NULL
WHERE id = %(id)s AND state = 'running' AND claimed_by = %(worker_id)s;

-- name: job_retry
-- Back to the queue after the backoff; a job whose cancellation was requested is
-- cancelled instead. Returns the state the job is now in.
UPDATE runner.jobs
SET state = (CASE WHEN cancel_requested_at IS NULL
                  THEN 'queued' ELSE 'cancelled' END)::runner.job_state,
    finished_at = CASE WHEN cancel_requested_at IS NOT NULL THEN now() END,
    last_error = %(error)s,
    errors = runner.job_errors_append(errors, attempts, claimed_by, %(error)s),
    run_at = now() + make_interval(secs => %(delay)s), updated_at = now(),
    claimed_by = NULL, claimed_at = NULL
WHERE id = %(id)s AND state = 'running' AND claimed_by = %(worker_id)s
RETURNING state::text;

-- name: job_fail
UPDATE runner.jobs
SET state = 'failed', last_error = %(error)s,
    errors = runner.job_errors_append(errors, attempts, claimed_by, %(error)s),
    finished_at = now(), updated_at = now(), claimed_by = NULL, claimed_at = NULL
WHERE id = %(id)s AND state = 'running' AND claimed_by = %(worker_id)s;

-- name: job_cancel_running
-- The runner stopped the handler of a job whose cancellation was requested.
UPDATE runner.jobs
SET state = 'cancelled', last_error = %(error)s,
    errors = runner.job_errors_append(errors, attempts, claimed_by, %(error)s),
    finished_at = now(), updated_at = now(), claimed_by = NULL, claimed_at = NULL
WHERE id = %(id)s AND state = 'running' AND claimed_by = %(worker_id)s;

-- name: job_release
-- Hand back to the queue, without counting their attempts, jobs whose handlers
-- were cut short by shutdown or never started: the jobs themselves did not fail.
-- `ids` NULL means every job the runner holds. A job whose cancellation was
-- requested is cancelled instead.
UPDATE runner.jobs
SET state = (CASE WHEN cancel_requested_at IS NULL
                  THEN 'queued' ELSE 'cancelled' END)::runner.job_state,
    finished_at = CASE WHEN cancel_requested_at IS NOT NULL THEN now() END,
    attempts = greatest(attempts - 1, 0), last_error = %(error)s,
    errors = runner.job_errors_append(errors, attempts, claimed_by, %(error)s),
    updated_at = now(), claimed_by = NULL, claimed_at = NULL
WHERE state = 'running' AND claimed_by = %(worker_id)s
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
RETURNING id, task, state::text, attempts;

-- name: job_requeue_lost
-- Put back the jobs this runner held when it lost its connection. The attempt was
-- spent, so it stays counted, and a job on its last attempt fails; a job whose
-- cancellation was requested is cancelled.
UPDATE runner.jobs
SET state = (CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                  WHEN attempts >= max_attempts THEN 'failed'
                  ELSE 'queued' END)::runner.job_state,
    finished_at = CASE WHEN cancel_requested_at IS NOT NULL
                         OR attempts >= max_attempts THEN now() END,
    last_error = %(error)s,
    errors = runner.job_errors_append(errors, attempts, claimed_by, %(error)s),
    updated_at = now(), claimed_by = NULL, claimed_at = NULL
WHERE state = 'running' AND claimed_by = %(worker_id)s
RETURNING id, task, state::text, attempts;

-- name: job_cancel
-- Withdraw a job that has not started; a running or finished job is left alone.
UPDATE runner.jobs
SET state = 'cancelled', cancel_requested_at = now(), finished_at = now(),
    updated_at = now()
WHERE id = %(id)s AND state = 'queued'
RETURNING id;

-- name: job_get
SELECT id, task, args, queue, priority, state::text, attempts, max_attempts, run_at,
       claimed_by, claimed_at, last_error, result, created_at, updated_at, finished_at,
       unique_key
FROM runner.jobs
WHERE id = %(id)s;

-- name: job_result_forget
-- Remove one field from a job's result: a sealed secret is wiped once it was read.
UPDATE runner.jobs
SET result = result - %(field)s::text, updated_at = now()
WHERE id = %(id)s AND result ? %(field)s::text;

-- name: job_rescue_stalled
-- Put back the running jobs whose runner has not shown it is alive within the
-- threshold. The lost attempt stays counted; a job on its last attempt fails, and
-- a job whose cancellation was requested is cancelled.
WITH stalled AS (
    SELECT j.id, j.claimed_by,
           format('runner died during execution (attempt %%s of %%s, runner %%s)',
                  j.attempts, j.max_attempts, j.claimed_by) AS error
    FROM runner.jobs AS j
    WHERE j.state = 'running'
      AND j.claimed_at < now() - make_interval(secs => %(threshold)s)
      AND NOT EXISTS (
          SELECT 1 FROM runner.workers AS w
          WHERE w.id = j.claimed_by
            AND w.last_seen_at >= now() - make_interval(secs => %(threshold)s)
      )
    ORDER BY j.id
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE runner.jobs AS j
SET state = (CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                  WHEN j.attempts >= j.max_attempts THEN 'failed'
                  ELSE 'queued' END)::runner.job_state,
    finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL
                         OR j.attempts >= j.max_attempts THEN now() END,
    last_error = stalled.error,
    errors = runner.job_errors_append(j.errors, j.attempts, j.claimed_by, stalled.error),
    updated_at = now(), claimed_by = NULL, claimed_at = NULL
FROM stalled
-- Conditional on the state and claim read: a job that finished or changed hands
-- meanwhile is left alone.
WHERE j.id = stalled.id AND j.state = 'running' AND j.claimed_by = stalled.claimed_by
RETURNING j.id, j.task, j.state::text, j.attempts;

-- name: job_prune
-- Delete one bounded batch of the jobs in one final state that finished before the
-- retention period: an index range of jobs_finished_state_idx.
DELETE FROM runner.jobs
WHERE id IN (
    SELECT id FROM runner.jobs
    WHERE state = %(state)s::runner.job_state
      AND finished_at < now() - make_interval(secs => %(retention)s)
    ORDER BY finished_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
);

-- name: worker_heartbeat
-- Register the runner, or record that it is still alive; in the same statement (no
-- extra transaction per beat), the jobs it holds whose cancellation was requested.
WITH beat AS (
    INSERT INTO runner.workers (id, hostname, pid)
    VALUES (%(worker_id)s, %(hostname)s, %(pid)s)
    ON CONFLICT (id) DO UPDATE SET last_seen_at = now()
)
SELECT id FROM runner.jobs
WHERE state = 'running' AND claimed_by = %(worker_id)s
  AND cancel_requested_at IS NOT NULL;

-- name: worker_delete
DELETE FROM runner.workers WHERE id = %(worker_id)s;

-- name: worker_forget_dead
-- Forget runners silent for longer than the threshold that hold no job.
DELETE FROM runner.workers AS w
WHERE w.last_seen_at < now() - make_interval(secs => %(threshold)s)
  AND NOT EXISTS (
      SELECT 1 FROM runner.jobs AS j
      WHERE j.state = 'running' AND j.claimed_by = w.id
  );

-- name: sweep_claim_slot
-- Start a sweep if no runner has started it within the interval and no pass is
-- running: the last one finished, or was this runner's own (its passes run one
-- after another), or its runner has gone silent (it died mid-pass), or it has run
-- past the lease. The row lock makes concurrent runners wait here, then see the
-- slot taken.
INSERT INTO runner.sweeps AS s (name, last_started_at, started_by)
VALUES (%(sweep)s, now(), %(worker_id)s)
ON CONFLICT (name) DO UPDATE
SET last_started_at = now(), started_by = %(worker_id)s
WHERE s.last_started_at <= now() - make_interval(secs => %(interval)s)
  AND (s.last_finished_at >= s.last_started_at
       OR s.started_by = %(worker_id)s
       OR s.last_started_at <= now() - make_interval(secs => %(lease)s)
       OR NOT EXISTS (
           SELECT 1 FROM runner.workers AS w
           WHERE w.id = s.started_by
             AND w.last_seen_at >= now() - make_interval(secs => %(threshold)s)
       ))
RETURNING name;

-- name: sweep_finished
UPDATE runner.sweeps
SET last_finished_at = now(),
    last_succeeded_at = CASE WHEN %(succeeded)s THEN now() ELSE last_succeeded_at END
WHERE name = %(sweep)s;

-- name: statement_timeout_set_local
-- Bounds the statements of this transaction only, so the setting holds behind a
-- pooler in transaction mode too, where a session setting would not stay with us.
SELECT set_config('statement_timeout', %(milliseconds)s, true);

-- name: api_key_expiry
-- Whether the key exists, and whether it has expired.
SELECT expires_at IS NOT NULL AND expires_at <= now() AS expired, expires_at
FROM control_plane.api_keys
WHERE id = %(key_id)s;

-- name: session_generic_plans
SET plan_cache_mode = force_generic_plan;

-- name: clock_now
SELECT now();

-- name: schema_present
SELECT to_regclass('runner.schema_version') IS NOT NULL;

-- name: schema_version
SELECT version FROM runner.schema_version;

-- name: schema_lock
-- Serialises concurrent migrations until the end of the transaction.
SELECT pg_advisory_xact_lock(%(key)s);

-- name: doctor_claim_index
SELECT indisvalid FROM pg_index
WHERE indexrelid = to_regclass('runner.jobs_claim_idx');

-- name: doctor_table
SELECT pg_total_relation_size('runner.jobs'), n_live_tup, n_dead_tup
FROM pg_stat_user_tables
WHERE relid = 'runner.jobs'::regclass;

-- name: doctor_oldest_queued
SELECT count(*), extract(epoch FROM now() - min(run_at))::float8
FROM runner.jobs
WHERE state = 'queued' AND run_at <= now();

-- name: doctor_workers
SELECT count(*) FILTER (WHERE last_seen_at > now() - interval '1 minute'), count(*)
FROM runner.workers;

-- name: backend_pid
SELECT pg_backend_pid();
