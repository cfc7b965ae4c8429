-- api-gateway: routes the commerce services need open at the edge (each service still checks
-- for itself): anonymous carts (SERVICES §19: a cart token, merge at login), public tax-rate
-- reads (§21), and the payment provider's webhooks (§15: signed, no JWT). A token that is sent
-- is still verified at the edge on public routes.
UPDATE routes SET auth = 'public', version = version + 1, updated_at = '2026-01-05T00:00:00.000Z'
 WHERE id IN ('019b76da-a800-7017-8017-000000000000', '019b76da-a800-701b-801b-000000000000')
   AND auth = 'jwt';
INSERT INTO routes (id, prefix, service, auth, timeout_ms, retries, max_body, rate_policy,
                    version, created_at, updated_at)
VALUES ('019b76da-a800-7044-8044-000000000000', '/api/v1/payments/webhooks', 'payment-service',
        'public', 5000, 2, 1048576, '', 1, '2026-01-05T00:00:00.000Z',
        '2026-01-05T00:00:00.000Z');
