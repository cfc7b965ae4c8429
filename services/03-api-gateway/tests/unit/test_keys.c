/*
 * test_keys.c - keys.c's data-plane side: the SHA-256 of a key (a known vector), the snapshot
 * reloaded from the api_keys table (a key is found with its owner, an unknown, empty or
 * oversized one is not, a deleted one stops matching after the reload), and lookups racing
 * reloads (for TSan).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "gr/db.h"

#include "../../gateway.h"

static struct gr_db *db;
static char dir[] = "/tmp/gw-keys-XXXXXX";

static void must(int rc)
{
    assert_int_equal(rc, 0);
}

static void add_key(struct gr_db_conn *c, const char *id, const char *key, const char *owner)
{
    char hash[GW_KEY_HASH_LEN + 1];

    gw_key_hash(key, strlen(key), hash);
    must(gr_db_exec(c,
                    "INSERT INTO api_keys (id, key_hash, owner_id, scopes, created_at)"
                    " VALUES ($1, $2, $3, '[]', '2026-01-01T00:00:00.000Z')",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(hash), GR_DB_TEXT(owner) }, 3,
                    NULL));
}

static int setup(void **state)
{
    char url[128], err[256];
    struct gr_db_conn *c;

    (void)state;
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(url, sizeof(url), "sqlite://%s/t.db", dir);
    if (gr_db_open(url, NULL, &db, err, sizeof(err)) < 0 || gr_db_conn(db, &c) < 0)
        return -1;
    return gr_db_exec(c,
                      "CREATE TABLE api_keys (id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE,"
                      " owner_id TEXT NOT NULL, scopes TEXT NOT NULL, created_at TEXT NOT NULL)",
                      NULL, 0, NULL);
}

static int teardown(void **state)
{
    char path[160];

    (void)state;
    gw_apikeys_clear();
    gr_db_close(db);
    snprintf(path, sizeof(path), "%s/t.db", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/t.db-wal", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/t.db-shm", dir);
    unlink(path);
    rmdir(dir);
    return 0;
}

static void test_hash_vector(void **state)
{
    char h[GW_KEY_HASH_LEN + 1];

    (void)state;
    gw_key_hash("abc", 3, h);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void test_lookup_reload(void **state)
{
    struct gr_db_conn *c;
    char owner[GW_NAME_MAX] = "x", big[GW_KEY_MAX + 2];

    (void)state;
    must(gr_db_conn(db, &c));
    assert_false(gw_apikey_lookup("gwk_a", 5, owner, sizeof(owner)));
    assert_string_equal(owner, "");
    add_key(c, "01", "gwk_a", "owner-a");
    add_key(c, "02", "gwk_b", "owner-b");
    assert_false(gw_apikey_lookup("gwk_a", 5, owner, sizeof(owner))); /* not reloaded yet */
    must(gw_apikeys_reload(c));
    assert_int_equal(gw_apikeys_count(), 2);
    assert_true(gw_apikey_lookup("gwk_a", 5, owner, sizeof(owner)));
    assert_string_equal(owner, "owner-a");
    /* the length given counts, not a NUL: "gwk_bXYZ" with 5 bytes is "gwk_b" */
    assert_true(gw_apikey_lookup("gwk_bXYZ", 5, owner, sizeof(owner)));
    assert_string_equal(owner, "owner-b");
    assert_false(gw_apikey_lookup("gwk_c", 5, owner, sizeof(owner)));
    assert_false(gw_apikey_lookup("gwk_a", 0, owner, sizeof(owner)));
    assert_false(gw_apikey_lookup(NULL, 5, owner, sizeof(owner)));
    memset(big, 'k', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    add_key(c, "03", big, "owner-big");
    must(gw_apikeys_reload(c));
    assert_false(gw_apikey_lookup(big, strlen(big), owner, sizeof(owner))); /* > GW_KEY_MAX */
    must(gr_db_exec(c, "DELETE FROM api_keys WHERE id = '01'", NULL, 0, NULL));
    assert_true(gw_apikey_lookup("gwk_a", 5, NULL, 0)); /* until the reload */
    must(gw_apikeys_reload(c));
    assert_false(gw_apikey_lookup("gwk_a", 5, owner, sizeof(owner)));
    assert_true(gw_apikey_lookup("gwk_b", 5, owner, sizeof(owner)));
}

static atomic_bool stop;

/* Counts lookups of a key that every snapshot holds which failed (must stay 0). */
static void *reader(void *arg)
{
    long misses = 0;
    char owner[GW_NAME_MAX];

    (void)arg;
    while (!atomic_load(&stop))
        misses +=
            !(gw_apikey_lookup("gwk_b", 5, owner, sizeof(owner)) && strcmp(owner, "owner-b") == 0);
    return (void *)misses;
}

static void test_concurrent(void **state)
{
    struct gr_db_conn *c;
    pthread_t th[4];

    (void)state;
    must(gr_db_conn(db, &c));
    atomic_store(&stop, false);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader, NULL), 0);
    for (int i = 0; i < 200; i++)
        must(gw_apikeys_reload(c));
    atomic_store(&stop, true);
    for (int i = 0; i < 4; i++) {
        void *misses = NULL;
        pthread_join(th[i], &misses);
        assert_int_equal((long)misses, 0); /* the key never vanished during a reload */
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_vector),
        cmocka_unit_test(test_lookup_reload),
        cmocka_unit_test(test_concurrent),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
