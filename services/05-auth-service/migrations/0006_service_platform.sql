-- auth-service: the service role gets what the platform services check when every service
-- registers with discovery (02: registry:write) and reads its configuration, secrets included,
-- from the config service (04: configs:read, configs:secrets:read). The gateway's admin API
-- (03) is guarded by gateway:admin, which super_admin holds through "*".
INSERT INTO permissions (role_name, permission) VALUES
    ('service', 'registry:write'), ('service', 'configs:read'),
    ('service', 'configs:secrets:read');
