-- transactions is append-only: the database refuses to change or remove a row.
CREATE FUNCTION transactions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'transactions is append-only' USING ERRCODE = 'check_violation';
END;
$$;
CREATE TRIGGER transactions_no_change BEFORE UPDATE OR DELETE ON transactions
    FOR EACH ROW EXECUTE FUNCTION transactions_append_only();
