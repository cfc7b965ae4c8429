-- product-service: each product stored as the JSON document GET returns, so reads send it
-- as it is. doc_full is the object for callers with products:read (all variants, archived
-- ones flagged), doc_public the object for everyone else (non-archived variants only). Every
-- write re-renders both in its transaction (product_doc_refresh); rows written before this
-- migration have NULL documents until the start-up back-fill renders them, and reads render a
-- NULL document on the fly meanwhile.

ALTER TABLE products ADD COLUMN doc_public TEXT;
ALTER TABLE products ADD COLUMN doc_full TEXT;
