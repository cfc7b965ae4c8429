/*
 * test_events.c - events.c's handlers on a migrated SQLite database, called as the consumer
 * calls them (inside a transaction): product.price_changed records the new price on open
 * carts' lines only, once, skips older variant versions and clears the mark when the price
 * returns to the snapshot; product.deleted flags lines found by product_id and, for lines
 * older than migration 0002, by the event's variant ids, with one new cart version per event;
 * inventory.out_of_stock / stock_changed set and clear the flag by sku; user.deleted removes
 * the user's carts and the anonymous carts merged into them, and nobody else's; events without
 * the fields a handler needs are acknowledged (0) and change nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "gr/db.h"
#include "gr/id.h"
#include "gr/service.h"

#include "../../cart.h"

#define U1  "01900000-0000-7000-8000-000000000001" /* a user */
#define U2  "01900000-0000-7000-8000-000000000002" /* another user */
#define CA  "01900000-0000-7000-8000-0000000000a1" /* U1's active cart */
#define CM  "01900000-0000-7000-8000-0000000000a2" /* anonymous, merged into CA */
#define CK  "01900000-0000-7000-8000-0000000000a3" /* U1's checked-out cart */
#define CB  "01900000-0000-7000-8000-0000000000a4" /* U2's active cart */
#define V1  "01900000-0000-7000-8000-0000000000b1"
#define V2  "01900000-0000-7000-8000-0000000000b2"
#define V3  "01900000-0000-7000-8000-0000000000b3"
#define V4  "01900000-0000-7000-8000-0000000000b4"
#define P1  "01900000-0000-7000-8000-0000000000c1"
#define NOW "2026-11-25T12:00:00.000Z"

static struct gr_db *db;
static struct gr_db_conn *conn;
static char dir[] = "/tmp/cart-events-XXXXXX";

static void must(int rc)
{
    assert_int_equal(rc, 0);
}

static void run_sql(const char *sql, const struct gr_db_val *p, size_t n)
{
    must(gr_db_exec(conn, sql, p, n, NULL));
}

static void cart(const char *id, const char *user, const char *token_hash, const char *status,
                 const char *order_id, const char *merged_into)
{
    run_sql("INSERT INTO carts (id, user_id, token_hash, currency, status, order_id, merged_into,"
            " created_at, updated_at, last_activity_at)"
            " VALUES ($1, $2, $3, 'usd', $4, $5, $6, $7, $7, $7)",
            (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(user), GR_DB_TEXT(token_hash),
                                  GR_DB_TEXT(status), GR_DB_TEXT(order_id), GR_DB_TEXT(merged_into),
                                  GR_DB_TEXT(NOW) },
            7);
}

/* A line; @product NULL and @sku NULL make a line written before migration 0002. */
static void line(const char *id, const char *cart_id, const char *variant, long long amount,
                 const char *product, const char *sku, long long price_version)
{
    run_sql("INSERT INTO cart_items (id, cart_id, variant_id, quantity, unit_price_amount,"
            " unit_price_currency, created_at, updated_at, product_id, sku, price_version)"
            " VALUES ($1, $2, $3, 1, $4, 'usd', $5, $5, $6, $7, $8)",
            (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(cart_id), GR_DB_TEXT(variant),
                                  GR_DB_INT(amount), GR_DB_TEXT(NOW), GR_DB_TEXT(product),
                                  GR_DB_TEXT(sku),
                                  price_version > 0 ? GR_DB_INT(price_version) : GR_DB_NULL },
            8);
}

/* The first column of the first row of @sql with the text parameter @p, as an integer. */
static long long q_int(const char *sql, const char *p)
{
    struct gr_arena a;
    struct gr_db_rows *rows = NULL;
    long long v;

    gr_arena_init(&a);
    must(gr_db_query(conn, &a, sql, (struct gr_db_val[]){ GR_DB_TEXT(p) }, 1, &rows));
    assert_true(gr_db_nrows(rows) == 1);
    v = gr_db_isnull(rows, 0, 0) ? -1 : gr_db_int(rows, 0, 0);
    gr_arena_release(&a);
    return v;
}

static long long version_of(const char *cart_id)
{
    return q_int("SELECT version FROM carts WHERE id = $1", cart_id);
}

static long long new_price_of(const char *item_id)
{
    return q_int("SELECT new_price_amount FROM cart_items WHERE id = $1", item_id);
}

static long long deleted_flag(const char *item_id)
{
    return q_int("SELECT COUNT(*) FROM cart_items WHERE id = $1"
                 " AND unavailable_reason = 'product_deleted'",
                 item_id);
}

static long long oos_of(const char *item_id)
{
    return q_int("SELECT out_of_stock FROM cart_items WHERE id = $1", item_id);
}

/* Delivers one event to the subscription of @type, in a transaction like the consumer. */
static int deliver(const char *type, const char *subject, const char *data)
{
    static int seq;
    struct gr_arena a;
    struct gr_event ev = { 0 };
    char id[GR_ID_LEN];
    int rc = GR_ENOTFOUND;

    gr_arena_init(&a);
    snprintf(id, sizeof(id), "01900000-0000-7000-9000-%012d", ++seq);
    ev.id = id;
    ev.source = "/gravity/test";
    ev.type = type;
    ev.subject = subject;
    ev.data = data;
    ev.data_len = strlen(data);
    ev.attempt = 1;
    must(gr_db_begin(conn));
    for (size_t i = 0; i < CART_NSUBS; i++)
        if (strcmp(cart_subs[i].type, type) == 0)
            rc = cart_subs[i].handler(conn, &a, &ev, NULL);
    if (rc == 0)
        must(gr_db_commit(conn));
    else
        (void)gr_db_rollback(conn);
    gr_arena_release(&a);
    return rc;
}

static int setup(void **state)
{
    char url[128], err[256];

    (void)state;
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(url, sizeof(url), "sqlite://%s/t.db", dir);
    if (gr_db_open(url, NULL, &db, err, sizeof(err)) < 0 ||
        gr_db_migrate(db, "cart-service", gr_svc_migrations) < 0 || gr_db_conn(db, &conn) < 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    static const char *const files[] = { "t.db", "t.db-wal", "t.db-shm" };
    char path[160];

    (void)state;
    gr_db_close(db);
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
    return 0;
}

/* Every test starts from the same carts and lines. */
static int fresh(void **state)
{
    (void)state;
    run_sql("DELETE FROM cart_items", NULL, 0);
    run_sql("UPDATE carts SET merged_into = NULL", NULL, 0);
    run_sql("DELETE FROM carts", NULL, 0);
    cart(CA, U1, NULL, "active", NULL, NULL);
    cart(CM, NULL, "h-m", "merged", NULL, CA);
    cart(CK, U1, NULL, "checked_out", "01900000-0000-7000-8000-0000000000d1", NULL);
    cart(CB, U2, NULL, "active", NULL, NULL);
    line("01900000-0000-7000-8000-000000000e01", CA, V1, 1000, P1, "SKU-1", 1);
    line("01900000-0000-7000-8000-000000000e02", CA, V2, 500, P1, "SKU-2", 1);
    line("01900000-0000-7000-8000-000000000e03", CA, V3, 700, NULL, NULL, 0); /* pre-0002 */
    line("01900000-0000-7000-8000-000000000e04", CM, V1, 1000, P1, "SKU-1", 1);
    line("01900000-0000-7000-8000-000000000e05", CK, V1, 1000, P1, "SKU-1", 1);
    line("01900000-0000-7000-8000-000000000e06", CB, V1, 1000, P1, "SKU-1", 1);
    line("01900000-0000-7000-8000-000000000e07", CB, V4, 900,
         "01900000-0000-7000-8000-0000000000c2", "SKU-4", 1);
    return 0;
}

#define E1 "01900000-0000-7000-8000-000000000e01"
#define E2 "01900000-0000-7000-8000-000000000e02"
#define E3 "01900000-0000-7000-8000-000000000e03"
#define E4 "01900000-0000-7000-8000-000000000e04"
#define E5 "01900000-0000-7000-8000-000000000e05"
#define E6 "01900000-0000-7000-8000-000000000e06"
#define E7 "01900000-0000-7000-8000-000000000e07"

static void test_price_changed(void **state)
{
    (void)state;
    assert_int_equal(deliver("product.price_changed", P1,
                             "{\"id\":\"" V1 "\",\"product_id\":\"" P1 "\",\"sku\":\"SKU-1\","
                             "\"price\":{\"amount\":1200,\"currency\":\"usd\"},\"version\":2,"
                             "\"old_price\":{\"amount\":1000,\"currency\":\"usd\"}}"),
                     0);
    assert_int_equal(new_price_of(E1), 1200);
    assert_int_equal(new_price_of(E6), 1200);
    assert_int_equal(new_price_of(E2), -1);
    assert_int_equal(new_price_of(E4), -1); /* merged: read-only */
    assert_int_equal(new_price_of(E5), -1); /* checked out */
    assert_int_equal(version_of(CA), 2);
    assert_int_equal(version_of(CB), 2);
    assert_int_equal(version_of(CM), 1);
    assert_int_equal(version_of(CK), 1);
    /* The same change under another id, then an older one: nothing. */
    assert_int_equal(deliver("product.price_changed", P1,
                             "{\"id\":\"" V1 "\",\"price\":{\"amount\":1200,\"currency\":\"usd\"},"
                             "\"version\":2}"),
                     0);
    assert_int_equal(deliver("product.price_changed", P1,
                             "{\"id\":\"" V1 "\",\"price\":{\"amount\":900,\"currency\":\"usd\"},"
                             "\"version\":1}"),
                     0);
    assert_int_equal(new_price_of(E1), 1200);
    assert_int_equal(version_of(CA), 2);
    /* Back at the snapshot: the mark goes, one more version. */
    assert_int_equal(deliver("product.price_changed", P1,
                             "{\"id\":\"" V1 "\",\"price\":{\"amount\":1000,\"currency\":\"usd\"},"
                             "\"version\":3}"),
                     0);
    assert_int_equal(new_price_of(E1), -1);
    assert_int_equal(version_of(CA), 3);
}

static void test_product_deleted(void **state)
{
    (void)state;
    /* E1, E2 by product_id; E3 (no product_id) by the variant list: one version for CA. */
    assert_int_equal(deliver("product.deleted", P1,
                             "{\"id\":\"" P1 "\",\"status\":\"draft\",\"variants\":"
                             "[{\"id\":\"" V1 "\"},{\"id\":\"" V3 "\"},{\"id\":7}]}"),
                     0);
    assert_int_equal(deleted_flag(E1), 1);
    assert_int_equal(deleted_flag(E2), 1);
    assert_int_equal(deleted_flag(E3), 1);
    assert_int_equal(deleted_flag(E6), 1);
    assert_int_equal(deleted_flag(E7), 0);
    assert_int_equal(deleted_flag(E4), 0);
    assert_int_equal(version_of(CA), 2);
    assert_int_equal(version_of(CB), 2);
    assert_int_equal(deliver("product.deleted", P1, "{\"id\":\"" P1 "\"}"), 0);
    assert_int_equal(version_of(CA), 2);
}

static void test_stock(void **state)
{
    (void)state;
    assert_int_equal(deliver("inventory.out_of_stock", "SKU-1",
                             "{\"sku\":\"SKU-1\",\"available\":0,\"threshold\":0}"),
                     0);
    assert_int_equal(oos_of(E1), 1);
    assert_int_equal(oos_of(E6), 1);
    assert_int_equal(oos_of(E2), 0);
    assert_int_equal(oos_of(E4), 0);
    assert_int_equal(version_of(CA), 2);
    assert_int_equal(deliver("inventory.out_of_stock", "SKU-1", "{\"available\":0}"), 0);
    assert_int_equal(deliver("inventory.stock_changed", "SKU-1",
                             "{\"sku\":\"SKU-1\",\"warehouse_id\":\"w\",\"available\":0}"),
                     0);
    assert_int_equal(oos_of(E1), 1);
    assert_int_equal(version_of(CA), 2);
    assert_int_equal(deliver("inventory.stock_changed", "SKU-1",
                             "{\"sku\":\"SKU-1\",\"warehouse_id\":\"w\",\"available\":2}"),
                     0);
    assert_int_equal(oos_of(E1), 0);
    assert_int_equal(oos_of(E6), 0);
    assert_int_equal(version_of(CA), 3);
}

static void test_user_deleted(void **state)
{
    (void)state;
    assert_int_equal(
        deliver("user.deleted", U1, "{\"id\":\"" U1 "\",\"user_id\":\"" U1 "\",\"version\":2}"), 0);
    assert_int_equal(q_int("SELECT COUNT(*) FROM carts WHERE user_id = $1 OR id = $1", U1), 0);
    assert_int_equal(q_int("SELECT COUNT(*) FROM carts WHERE id = $1", CM), 0);
    assert_int_equal(q_int("SELECT COUNT(*) FROM cart_items WHERE cart_id <> $1", CB), 0);
    assert_int_equal(q_int("SELECT COUNT(*) FROM cart_items WHERE cart_id = $1", CB), 2);
    assert_int_equal(version_of(CB), 1);
    /* Again, and by data.user_id without a subject: nothing left to do. */
    assert_int_equal(deliver("user.deleted", NULL, "{\"user_id\":\"" U1 "\"}"), 0);
    assert_int_equal(q_int("SELECT COUNT(*) FROM carts WHERE id = $1", CB), 1);
}

static void test_malformed(void **state)
{
    static const char *const bad[][3] = {
        { "product.price_changed", P1, "null" },
        { "product.price_changed", P1, "[1,2]" },
        { "product.price_changed", P1, "{\"id\":\"not-a-uuid\"}" },
        { "product.price_changed", P1,
          "{\"id\":\"" V1 "\",\"price\":{\"amount\":-5,\"currency\":\"usd\"},\"version\":9}" },
        { "product.price_changed", P1,
          "{\"id\":\"" V1 "\",\"price\":{\"amount\":5,\"currency\":\"USD\"},\"version\":9}" },
        { "product.price_changed", P1,
          "{\"id\":\"" V1 "\",\"price\":{\"amount\":5,\"currency\":\"usd\"}}" },
        { "product.deleted", NULL, "{\"variants\":[{\"id\":\"" V1 "\"}]}" },
        { "inventory.out_of_stock", NULL, "{\"available\":0}" },
        { "inventory.stock_changed", "SKU-1", "{\"available\":\"2\"}" },
        { "user.deleted", "nobody", "{}" },
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(deliver(bad[i][0], bad[i][1], bad[i][2]), 0);
    assert_int_equal(version_of(CA), 1);
    assert_int_equal(version_of(CB), 1);
    assert_int_equal(new_price_of(E1), -1);
    assert_int_equal(deleted_flag(E1), 0);
    assert_int_equal(oos_of(E1), 0);
    assert_int_equal(q_int("SELECT COUNT(*) FROM carts WHERE id <> $1", ""), 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_price_changed, fresh),
        cmocka_unit_test_setup(test_product_deleted, fresh),
        cmocka_unit_test_setup(test_stock, fresh),
        cmocka_unit_test_setup(test_user_deleted, fresh),
        cmocka_unit_test_setup(test_malformed, fresh),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
