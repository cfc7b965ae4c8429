-- product-service: indexes for GET /products. The list builds its WHERE from the filters
-- present, so each sort of the public list (status = 'active', also any status filter) reads
-- one range of an index led by status in the order of the sort and stops after limit + 1 rows;
-- a cursor's keyset condition narrows that range. The brand filter reads its own range in
-- the default order. Price keys are the sort expressions of products.c (no price sorts last).

DROP INDEX products_brand_idx;
CREATE INDEX products_brand_created_idx ON products (brand, created_at, id);
CREATE INDEX products_status_price_idx ON products (status, (COALESCE(min_price, 100000000)), id);
CREATE INDEX products_status_price_desc_idx ON products (status, (COALESCE(min_price, -1)), id);
CREATE INDEX products_status_title_idx ON products (status, title, id);
