-- Login is capped at 5 per minute per client IP at the gateway (SERVICES §03): the seeded
-- /api/v1/auth route takes the "login" rate policy, which the data plane (front.c) applies to
-- {prefix}/login only. A route an admin has already given a policy keeps it.
UPDATE routes
   SET rate_policy = 'login', version = version + 1, updated_at = '2026-01-02T00:00:00.000Z'
 WHERE id = '019b76da-a800-7001-8001-000000000000' AND rate_policy = '';
