-- Deterministic rows: set migsafe.seed_users first (SET migsafe.seed_users = 100000).
-- users: N; user_application_access: 3 per user (one per application); user_invitations: N/2.
INSERT INTO users (id, email, full_name, role, created_at)
SELECT g, 'user' || g || '@example.com', 'User ' || g,
       CASE WHEN g = 1 THEN 'super_admin' WHEN g % 50 = 0 THEN 'admin' WHEN g % 7 = 0 THEN 'analyst' ELSE 'viewer' END,
       timestamptz '2025-01-01' + g * interval '1 minute'
FROM generate_series(1, current_setting('migsafe.seed_users')::int) AS g;
-- the named admin of the smoke check ("admin keeps access"): user 1
UPDATE users SET email = 'admin@example.com', full_name = 'Platform Admin' WHERE id = 1;

INSERT INTO user_application_access (user_id, application, has_access, granted_by, granted_at)
SELECT u, app, (u = 1 OR (u + i) % 3 <> 0), CASE WHEN u > 1 THEN 1 END, timestamptz '2025-02-01' + u * interval '1 second'
FROM generate_series(1, current_setting('migsafe.seed_users')::int) AS u,
     unnest(enum_range(NULL::applicationtype)) WITH ORDINALITY AS a(app, i);

INSERT INTO user_invitations (email, invited_by, application, status, created_at, expires_at)
SELECT 'invitee' || g || '@example.org', 1 + (g % 97),
       (enum_range(NULL::applicationtype))[1 + g % 3],
       (enum_range(NULL::invitationstatus))[1 + g % 4],
       timestamptz '2025-03-01' + g * interval '30 seconds',
       timestamptz '2025-03-08' + g * interval '30 seconds'
FROM generate_series(1, current_setting('migsafe.seed_users')::int / 2) AS g;

SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users));
ANALYZE users, user_application_access, user_invitations;
