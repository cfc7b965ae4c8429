-- cart-service: what the subscribed events record on a line (SERVICES §19 Events). Portable
-- SQL (SQLite and PostgreSQL). Lines written before this migration have no product_id / sku
-- until they are added again: product.deleted still finds them by the event's variant ids,
-- inventory.out_of_stock (by sku) does not.

-- 17's answer when the line was added or last grown: the variant's product, sku and version.
ALTER TABLE cart_items ADD COLUMN product_id TEXT;
ALTER TABLE cart_items ADD COLUMN sku TEXT;
ALTER TABLE cart_items ADD COLUMN price_version BIGINT;
-- product.price_changed: the variant's new unit price, when it differs from the snapshot
-- (unit_price_amount stays the old price the line was added at).
ALTER TABLE cart_items ADD COLUMN new_price_amount BIGINT
    CHECK (new_price_amount IS NULL OR new_price_amount BETWEEN 0 AND 99999999);
ALTER TABLE cart_items ADD COLUMN new_price_currency TEXT
    CHECK (new_price_currency IS NULL OR length(new_price_currency) = 3);
-- product.deleted: the line can no longer be bought.
ALTER TABLE cart_items ADD COLUMN unavailable_reason TEXT
    CHECK (unavailable_reason IS NULL OR unavailable_reason IN ('product_deleted'));
-- inventory.out_of_stock sets it, inventory.stock_changed with stock available clears it.
ALTER TABLE cart_items ADD COLUMN out_of_stock INTEGER NOT NULL DEFAULT 0
    CHECK (out_of_stock IN (0, 1));

CREATE INDEX cart_items_variant_idx ON cart_items (variant_id);
CREATE INDEX cart_items_product_idx ON cart_items (product_id);
CREATE INDEX cart_items_sku_idx ON cart_items (sku);
-- user.deleted: every cart of a user, and the anonymous carts merged into them.
CREATE INDEX carts_user_idx ON carts (user_id);
CREATE INDEX carts_merged_into_idx ON carts (merged_into);
