-- Queries on control_plane.api_keys, named entity first; loaded by runner.queries.

-- name: api_key_lock
-- Lock a key, and read what its rotation needs: its successor, if any, and the
-- webhooks of its project.
SELECT k.project_id, k.key_prefix, k.expires_at,
       k.expires_at IS NOT NULL AND k.expires_at <= now() AS expired,
       s.id, s.key_prefix,
       ARRAY(
           SELECT w.id FROM control_plane.webhooks AS w
           WHERE w.project_id = k.project_id ORDER BY w.id
       ) AS webhook_ids
FROM control_plane.api_keys AS k
LEFT JOIN control_plane.api_keys AS s ON s.replaces_key_id = k.id
WHERE k.id = %(key_id)s
FOR UPDATE OF k;

-- name: api_key_successor
SELECT id, key_prefix FROM control_plane.api_keys WHERE replaces_key_id = %(key_id)s;

-- name: api_key_rotate
-- Rotate a locked key in one statement: expire it after the grace period (never
-- later than an expiry it already has; least() skips a NULL), issue its successor
-- with the same project, type, scopes and rate limit, and record the rotation.
-- The statement's own snapshot sees a successor that a rotation racing with the
-- lock committed: then it changes nothing and returns no row.
WITH old AS (
    UPDATE control_plane.api_keys
    SET expires_at = least(expires_at, now() + make_interval(secs => %(grace)s)),
        updated_at = now()
    WHERE id = %(key_id)s
      AND NOT EXISTS (
          SELECT FROM control_plane.api_keys WHERE replaces_key_id = %(key_id)s
      )
    RETURNING project_id, key_type, scopes, rate_limit, expires_at
), new AS (
    INSERT INTO control_plane.api_keys
        (project_id, key_type, key_prefix, key_hash, scopes, rate_limit,
         replaces_key_id)
    SELECT project_id, key_type, %(key_prefix)s, %(key_hash)s, scopes, rate_limit,
           %(key_id)s
    FROM old
    RETURNING id
), audit AS (
    INSERT INTO control_plane.api_key_rotations
        (project_id, old_key_id, new_key_id, job_id, requested_by, grace_hours,
         old_key_expires_at)
    SELECT old.project_id, %(key_id)s, new.id, %(job_id)s, %(requested_by)s,
           %(grace_hours)s, old.expires_at
    FROM old, new
    RETURNING rotated_at
)
SELECT new.id, old.expires_at, audit.rotated_at FROM old, new, audit;

-- name: api_key_insert
INSERT INTO control_plane.api_keys
    (project_id, key_type, key_prefix, key_hash, scopes, rate_limit, replaces_key_id)
VALUES (%(project_id)s, %(key_type)s, %(key_prefix)s, %(key_hash)s, %(scopes)s,
        %(rate_limit)s, %(replaces_key_id)s)
RETURNING id;
