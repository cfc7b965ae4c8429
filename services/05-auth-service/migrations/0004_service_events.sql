-- auth-service: the service role gets the permissions the event bus (14) checks: publishing
-- (events:write), reading (events:read) and its own durable subscription's pull/ack
-- (events:admin, which 14 asks for on every subscription route today). The names of 0001
-- (events:publish, events:subscribe) matched no route and are dropped.
DELETE FROM permissions WHERE role_name = 'service'
    AND permission IN ('events:publish', 'events:subscribe');
INSERT INTO permissions (role_name, permission) VALUES
    ('service', 'events:write'), ('service', 'events:read'), ('service', 'events:admin');
