/*
 * test_confwatch.c - gr/confwatch.h against a real 04-config-service (the binary beside this
 * test's build directory, $BUILD/bin/04-config-service, started on a free port with SQLite in
 * a temporary directory): the first merged view applies the registered keys, a write wakes
 * the watcher (long-poll) and the callback sees the new value long before the 30 s wait ends,
 * LOG_LEVEL changes gr_log's level and its removal restores the start-up level, a deleted key falls
 * back to the lower layer, and another service's keys never fire a callback.
 */
#include <curl/curl.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "gr/arena.h"
#include "gr/auth.h"
#include "gr/buf.h"
#include "gr/confwatch.h"
#include "gr/log.h"
#include "gr/svctoken.h"
#include "gr/time.h"

extern char **environ;

static char bin[1024], tmpdir[256], base[128], token[GR_SVCTOKEN_MAX + 1];
static pid_t child = -1;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char seen[256];
static bool seen_null;
static int calls;

static void on_rate(const char *value, void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    calls++;
    seen_null = value == NULL;
    snprintf(seen, sizeof(seen), "%s", value ? value : "");
    pthread_mutex_unlock(&mu);
}

static int calls_now(void)
{
    int n;

    pthread_mutex_lock(&mu);
    n = calls;
    pthread_mutex_unlock(&mu);
    return n;
}

/* Waits up to @ms for the callback to have seen @want (NULL: unset); the elapsed ms or -1. */
static long long wait_seen(const char *want, long long ms)
{
    int64_t t0 = gr_time_mono_ms();

    while (gr_time_mono_ms() - t0 < ms) {
        bool ok;

        pthread_mutex_lock(&mu);
        ok = want ? (!seen_null && strcmp(seen, want) == 0) : seen_null;
        pthread_mutex_unlock(&mu);
        if (ok)
            return gr_time_mono_ms() - t0;
        usleep(2000);
    }
    return -1;
}

static bool wait_level(int lvl, long long ms)
{
    int64_t t0 = gr_time_mono_ms();

    while (gr_time_mono_ms() - t0 < ms) {
        if (gr_log_get_level() == lvl)
            return true;
        usleep(2000);
    }
    return false;
}

static size_t sink(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

/* One request to the config service; returns the HTTP status (0 when unreachable). */
static long call(const char *method, const char *path, const char *body)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hdr = NULL;
    char url[512], auth[GR_SVCTOKEN_MAX + 64];
    long status = 0;

    snprintf(url, sizeof(url), "%s%s", base, path);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
    hdr = curl_slist_append(hdr, auth);
    hdr = curl_slist_append(hdr, "Content-Type: application/json");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    if (body)
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 10000L);
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    return status;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Makes a key, its JWKS file and a token with every configs permission. */
static void make_token(const char *jwks_path)
{
    struct gr_jwt_key *k = NULL;
    json_t *jwk = NULL, *claims;
    char *tok = NULL, *text;
    long long now = gr_time_now_s();
    size_t need;

    assert_int_equal(gr_jwt_key_generate("ES256", "cw", &k), 0);
    assert_int_equal(gr_jwt_key_jwk(k, &jwk), 0);
    json_t *set = json_pack("{s:[o]}", "keys", jwk);
    need = json_dumpb(set, NULL, 0, JSON_COMPACT);
    text = gr_xmalloc(need + 1);
    (void)json_dumpb(set, text, need, JSON_COMPACT);
    text[need] = '\0';
    write_file(jwks_path, text);
    gr_free(text);
    json_decref(set);
    claims = json_pack("{s:s, s:s, s:s, s:I, s:I, s:[s], s:[s,s,s]}", "iss", "gravity", "aud",
                       "gravity", "sub", "0190aaaa-0000-7000-8000-000000000001", "iat", now, "exp",
                       now + 3600, "roles", "service", "permissions", "configs:read",
                       "configs:write", "configs:delete");
    assert_int_equal(gr_jwt_sign(k, "at+jwt", claims, &tok), 0);
    snprintf(token, sizeof(token), "%s", tok);
    gr_free(tok);
    json_decref(claims);
    gr_jwt_key_free(k);
}

static int setup(void **state)
{
    char path[1024], jwks[512], pf[512], envbuf[15][1100], *envp[16];
    posix_spawn_file_actions_t fa;
    char *argv[] = { bin, NULL };
    int64_t t0;
    int port = 0;

    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/gr-confwatch-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    snprintf(jwks, sizeof(jwks), "%s/jwks.json", tmpdir);
    snprintf(pf, sizeof(pf), "%s/port", tmpdir);
    make_token(jwks);
    snprintf(envbuf[0], sizeof(envbuf[0]), "PORT=0");
    snprintf(envbuf[1], sizeof(envbuf[1]), "HOST=127.0.0.1");
    snprintf(envbuf[2], sizeof(envbuf[2]), "GR_PORT_FILE=%s", pf);
    snprintf(envbuf[3], sizeof(envbuf[3]), "DATA_DIR=%s/data", tmpdir);
    snprintf(envbuf[4], sizeof(envbuf[4]), "DATABASE_URL=sqlite://%s/data/c.db", tmpdir);
    snprintf(envbuf[5], sizeof(envbuf[5]), "JWKS_URL=file://%s", jwks);
    snprintf(envbuf[6], sizeof(envbuf[6]), "CONFIG_MASTER_KEY=%064d", 7);
    snprintf(envbuf[7], sizeof(envbuf[7]), "LOG_LEVEL=warn");
    snprintf(envbuf[8], sizeof(envbuf[8]), "EVENT_BUS_URL=http://127.0.0.1:9");
    snprintf(envbuf[9], sizeof(envbuf[9]), "CURSOR_SECRET=t");
    snprintf(envbuf[10], sizeof(envbuf[10]), "PATH=/usr/bin:/bin");
    snprintf(envbuf[11], sizeof(envbuf[11]), "ASAN_OPTIONS=%s",
             getenv("ASAN_OPTIONS") ? getenv("ASAN_OPTIONS") : "");
    snprintf(envbuf[12], sizeof(envbuf[12]), "LSAN_OPTIONS=%s",
             getenv("LSAN_OPTIONS") ? getenv("LSAN_OPTIONS") : "");
    snprintf(envbuf[13], sizeof(envbuf[13]), "UBSAN_OPTIONS=%s",
             getenv("UBSAN_OPTIONS") ? getenv("UBSAN_OPTIONS") : "");
    snprintf(envbuf[14], sizeof(envbuf[14]), "TSAN_OPTIONS=%s",
             getenv("TSAN_OPTIONS") ? getenv("TSAN_OPTIONS") : "");
    for (int i = 0; i < 15; i++)
        envp[i] = envbuf[i];
    envp[15] = NULL;
    snprintf(path, sizeof(path), "%s/server.log", tmpdir);
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    assert_int_equal(posix_spawn(&child, bin, &fa, NULL, argv, envp), 0);
    posix_spawn_file_actions_destroy(&fa);
    t0 = gr_time_mono_ms();
    while (gr_time_mono_ms() - t0 < 15000) {
        FILE *f = fopen(pf, "r");

        if (f) {
            if (fscanf(f, "%d", &port) != 1)
                port = 0;
            fclose(f);
        }
        if (port > 0)
            break;
        usleep(20000);
    }
    assert_true(port > 0);
    snprintf(base, sizeof(base), "http://127.0.0.1:%d", port);
    t0 = gr_time_mono_ms();
    while (gr_time_mono_ms() - t0 < 15000 && call("GET", "/ready", NULL) != 200)
        usleep(20000);
    assert_int_equal(call("GET", "/ready", NULL), 200);
    return 0;
}

static int teardown(void **state)
{
    int st = 0;
    char cmd[400];

    (void)state;
    if (child > 0) {
        kill(child, SIGTERM);
        waitpid(child, &st, 0);
    }
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    return 0;
}

static void test_watch(void **state)
{
    struct gr_svctoken_opts o = { .token = token };
    struct gr_svctoken *t = NULL;
    char err[256] = "";
    long long ms;
    int before;

    (void)state;
    gr_log_set_level(GR_LOG_WARN);
    assert_int_equal(gr_svctoken_new(&o, &t, err, sizeof(err)), 0);
    gr_svctoken_set_default(t);
    assert_int_equal(call("PUT", "/api/v1/configs/global/default/RATE_LIMIT", "{\"value\":100}"),
                     201);

    /* Bad variables are start-up errors naming them. */
    setenv("CONFIG_URL", "ftp://x", 1);
    assert_int_equal(gr_confwatch_start("svc-a", err, sizeof(err)), GR_ECONFIG);
    assert_non_null(strstr(err, "CONFIG_URL"));
    setenv("CONFIG_URL", base, 1);
    setenv("GRAVITY_ENV", "prod2", 1);
    assert_int_equal(gr_confwatch_start("svc-a", err, sizeof(err)), GR_ECONFIG);
    assert_non_null(strstr(err, "GRAVITY_ENV"));
    setenv("GRAVITY_ENV", "prod", 1);
    assert_int_equal(gr_confwatch_on("bad key", on_rate, NULL), GR_EINVAL);
    assert_int_equal(gr_confwatch_on("RATE_LIMIT", on_rate, NULL), 0);
    assert_int_equal(gr_confwatch_start("svc-a", err, sizeof(err)), 0);

    /* The first view applies the global default. */
    assert_true(wait_seen("100", 15000) >= 0);
    assert_int_equal(calls_now(), 1);

    /* A service/env value wins and arrives through the long-poll. */
    assert_int_equal(
        call("PUT", "/api/v1/configs/svc-a/prod/RATE_LIMIT", "{\"value\":{\"rps\":5}}"), 201);
    /* Well under the 30 s long-poll: the write woke it (generous for sanitizer builds). */
    ms = wait_seen("{\"rps\":5}", 10000);
    assert_true(ms >= 0 && ms < 5000);

    /* LOG_LEVEL is built in. */
    assert_int_equal(call("PUT", "/api/v1/configs/svc-a/prod/LOG_LEVEL", "{\"value\":\"debug\"}"),
                     201);
    assert_true(wait_level(GR_LOG_DEBUG, 10000));

    /* Another service's keys never fire; the index still moves. */
    before = calls_now();
    assert_int_equal(call("PUT", "/api/v1/configs/svc-b/prod/RATE_LIMIT", "{\"value\":1}"), 201);
    {
        int64_t t0 = gr_time_mono_ms();

        while (gr_confwatch_index() < 4 && gr_time_mono_ms() - t0 < 10000)
            usleep(2000);
    }
    assert_int_equal(gr_confwatch_index(), 4);
    assert_int_equal(calls_now(), before);

    /* A deleted key falls back to the lower layer; LOG_LEVEL's removal restores warn. */
    assert_int_equal(call("DELETE", "/api/v1/configs/svc-a/prod/RATE_LIMIT", NULL), 204);
    assert_true(wait_seen("100", 10000) >= 0);
    assert_int_equal(call("DELETE", "/api/v1/configs/svc-a/prod/LOG_LEVEL", NULL), 204);
    assert_true(wait_level(GR_LOG_WARN, 10000));
    assert_int_equal(call("DELETE", "/api/v1/configs/global/default/RATE_LIMIT", NULL), 204);
    assert_true(wait_seen(NULL, 10000) >= 0);

    /* Stop aborts the long-poll in flight at once. */
    {
        int64_t t0 = gr_time_mono_ms();

        gr_confwatch_stop();
        assert_true(gr_time_mono_ms() - t0 < 3000);
    }
    gr_svctoken_set_default(NULL);
    gr_svctoken_free(t);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_watch, setup, teardown),
    };
    char *slash;

    (void)argc;
    /* $BUILD/tests/04-config-service/test_confwatch -> $BUILD/bin/04-config-service */
    snprintf(bin, sizeof(bin), "%s", argv[0]);
    slash = strrchr(bin, '/');
    if (!slash)
        return 1;
    *slash = '\0';
    snprintf(bin + strlen(bin), sizeof(bin) - strlen(bin), "/../../bin/04-config-service");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    gr_log_setup("test-confwatch", GR_LOG_WARN, true);
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
