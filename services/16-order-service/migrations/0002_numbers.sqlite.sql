-- order-service: on SQLite writers are serialised, so the next order number is
-- MAX(number_seq) + 1 read inside the creating transaction (PostgreSQL uses a sequence, see
-- 0002_numbers.pg.sql). Both variants add the lookup index on the order's payment.
CREATE INDEX orders_payment_idx ON orders (payment_id);
