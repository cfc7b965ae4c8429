-- Reconciliation of payments left in `processing` by a crash (reconcile.c). While a payment is
-- parked in `processing` around a provider call, these say which call is in flight, so that
-- a restarted instance can ask the provider and apply the answer the way the API would have.
ALTER TABLE payments ADD COLUMN pending_op TEXT;        -- create | capture | cancel | confirm
ALTER TABLE payments ADD COLUMN pending_from TEXT;      -- the status the step started from
ALTER TABLE payments ADD COLUMN pending_reason TEXT;    -- a cancel's cancellation_reason
ALTER TABLE payments ADD COLUMN pending_amount BIGINT;  -- a capture's amount_to_capture
CREATE INDEX payments_processing_idx ON payments (status, updated_at);
CREATE INDEX refunds_pending_idx ON refunds (status, updated_at);
