-- order-service: order numbers come from a sequence on PostgreSQL (no hot row, no
-- serialization failures between concurrent checkouts; a rolled-back order leaves a gap).
CREATE SEQUENCE order_number_seq START 1;
CREATE INDEX orders_payment_idx ON orders (payment_id);
