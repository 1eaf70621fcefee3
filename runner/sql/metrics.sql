-- Queries of the metrics collector (runner.collector), run at scrape time on its
-- own connection. runner.queries loads them once. Every value is a bound parameter.

-- name: queue_depths
-- One row per queue and part: queued jobs (runnable now, or scheduled for later,
-- with the age of the oldest runnable one), then running jobs. Each part reads only
-- its partial index (jobs_claim_idx, jobs_running_idx), so the finished rows,
-- however many, cost nothing.
SELECT queue,
       count(*) FILTER (WHERE run_at <= now()) AS runnable,
       count(*) FILTER (WHERE run_at > now()) AS scheduled,
       0 AS running,
       extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8
           AS oldest_age
FROM runner.jobs
WHERE state = 'queued'
GROUP BY queue
UNION ALL
SELECT queue, 0, 0, count(*), NULL
FROM runner.jobs
WHERE state = 'running'
GROUP BY queue;
