-- Queries on control_plane.api_keys, named entity first; loaded by runner.queries.

-- name: api_key_lock
SELECT project_id, key_prefix, key_type, scopes, rate_limit, expires_at,
       expires_at IS NOT NULL AND expires_at <= now() AS expired
FROM control_plane.api_keys
WHERE id = %(key_id)s
FOR UPDATE;

-- name: api_key_successor
SELECT id, key_prefix FROM control_plane.api_keys WHERE replaces_key_id = %(key_id)s;

-- name: api_key_expire_after
-- Never later than an expiry the key already has (least() skips a NULL).
UPDATE control_plane.api_keys
SET expires_at = least(expires_at, now() + make_interval(secs => %(grace)s)),
    updated_at = now()
WHERE id = %(key_id)s
RETURNING expires_at;

-- name: api_key_insert
INSERT INTO control_plane.api_keys
    (project_id, key_type, key_prefix, key_hash, scopes, rate_limit, replaces_key_id)
VALUES (%(project_id)s, %(key_type)s, %(key_prefix)s, %(key_hash)s, %(scopes)s,
        %(rate_limit)s, %(replaces_key_id)s)
RETURNING id;

-- name: api_key_rotation_insert
INSERT INTO control_plane.api_key_rotations
    (project_id, old_key_id, new_key_id, job_id, requested_by, grace_hours,
     old_key_expires_at)
VALUES (%(project_id)s, %(old_key_id)s, %(new_key_id)s, %(job_id)s, %(requested_by)s,
        %(grace_hours)s, %(old_key_expires_at)s)
RETURNING rotated_at;
