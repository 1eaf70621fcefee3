-- Queries on control_plane.webhooks, named entity first; loaded by runner.queries.

-- name: webhook_next_id
-- The id is taken first: the sealed secret is bound to it.
SELECT nextval(pg_get_serial_sequence('control_plane.webhooks', 'id'));

-- name: webhook_insert
INSERT INTO control_plane.webhooks
    (id, project_id, url, sealed_secret, secret_fingerprint)
VALUES (%(id)s, %(project_id)s, %(url)s, %(sealed_secret)s, %(secret_fingerprint)s)
ON CONFLICT (project_id, url) DO NOTHING
RETURNING created_at;

-- name: webhook_list
SELECT id, project_id, url, secret_fingerprint, created_at
FROM control_plane.webhooks
WHERE %(project_id)s::integer IS NULL OR project_id = %(project_id)s
ORDER BY id;

-- name: webhook_get
SELECT id, project_id, url, sealed_secret FROM control_plane.webhooks
WHERE id = %(id)s;

-- name: webhook_delete
DELETE FROM control_plane.webhooks WHERE id = %(id)s
RETURNING project_id, url;
