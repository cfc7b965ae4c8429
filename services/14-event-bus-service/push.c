/*
 * push.c - the push thread: for every push subscription it claims due deliveries (the same
 * engine as pull, so ordering, ack_wait and max_deliver apply alike), POSTs each envelope to
 * the push_url as application/cloudevents+json with libcurl (5 s timeout, no redirects), acks
 * on a 2xx and records a failed attempt otherwise (retried after ack_wait, dead-lettered after
 * max_deliver). Between rounds it sleeps on the service's condition variable until a publish,
 * nak or replay wakes it or the earliest deadline of a push delivery comes.
 */
#include <curl/curl.h>
#include <string.h>

#include "eventbus.h"
#include "gr/arena.h"
#include "gr/log.h"
#include "gr/service.h"

#define IDLE_WAKE_MS 60000 /* longest sleep with nothing scheduled */

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

/* POSTs @envelope to @url; true on a 2xx answer. */
static bool post_event(const char *url, const char *envelope)
{
    struct curl_slist *h = NULL;
    long status = 0;
    CURL *c = curl_easy_init();
    CURLcode rc;

    if (c == NULL)
        return false;
    h = curl_slist_append(h, "Content-Type: application/cloudevents+json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, envelope);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(envelope));
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)EB_PUSH_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return rc == CURLE_OK && status >= 200 && status < 300;
}

/*
 * One round for subscription @id: claim, POST, settle. *@claimed counts what was sent and
 * *@wake_ms (library clock) is lowered to the subscription's next deadline.
 */
static int push_sub(struct eb_app *app, struct gr_db_conn *db, struct gr_arena *a, const char *id,
                    size_t *claimed, int64_t *wake_ms)
{
    struct gr_db_rows *rows = NULL;
    struct eb_sub sub;
    int64_t due;
    int rc;

    rc = eb_sub_load(db, a, id, &sub);
    if (rc < 0)
        return rc == GR_ENOTFOUND ? 0 : rc;
    rc = gr_db_begin(db);
    if (rc == 0)
        rc = eb_claim(db, a, &sub, EB_PUSH_BATCH, gr_time_now_ms(), &rows);
    if (rc == 0)
        rc = gr_db_commit(db);
    if (rc < 0) {
        (void)gr_db_rollback(db);
        return rc;
    }
    for (size_t i = 0; i < gr_db_nrows(rows) && !app->stop; i++) {
        long long seq = gr_db_int(rows, i, 0), changed = 0;

        (*claimed)++;
        if (post_event(sub.push_url, gr_db_text(rows, i, 2))) {
            rc = gr_db_exec(db,
                            "UPDATE deliveries SET state = 'acked' WHERE subscription_id = $1"
                            " AND seq = $2 AND state = 'inflight'",
                            (struct gr_db_val[]){ GR_DB_TEXT(sub.id), GR_DB_INT(seq) }, 2, NULL);
        } else {
            rc = gr_db_begin(db);
            if (rc == 0)
                rc = eb_fail(db, a, &sub, seq, sub.ack_wait_s * 1000, gr_time_now_ms(), &changed);
            if (rc == 0)
                rc = gr_db_commit(db);
            if (rc < 0)
                (void)gr_db_rollback(db);
            else
                eb_wake(app); /* a dead letter publishes an event that waiters may want */
        }
        if (rc < 0)
            return rc;
    }
    rc = eb_next_due(db, a, sub.id, &due);
    if (rc == 0 && due >= 0 && due < *wake_ms)
        *wake_ms = due;
    return rc;
}

static void *push_main(void *arg)
{
    struct eb_app *app = arg;

    while (!app->stop) {
        uint64_t gen = eb_gen(app);
        struct gr_arena a = GR_ARENA_INIT;
        struct gr_db_rows *subs = NULL;
        struct gr_db_conn *db = NULL;
        int64_t wake_ms = gr_time_now_ms() + IDLE_WAKE_MS;
        size_t claimed = 0;
        int rc;

        gr_arena_init(&a);
        rc = gr_db_conn(app->ctx->db, &db);
        if (rc == 0)
            rc = gr_db_query(db, &a, "SELECT id FROM subscriptions WHERE mode = 'push' ORDER BY id",
                             NULL, 0, &subs);
        for (size_t i = 0; rc == 0 && i < gr_db_nrows(subs) && !app->stop; i++)
            rc = push_sub(app, db, &a, gr_db_text(subs, i, 0), &claimed, &wake_ms);
        gr_arena_release(&a);
        if (rc < 0) {
            gr_log_warn("push round failed", "code", gr_err_name(rc));
            claimed = 0;
            wake_ms = gr_time_now_ms() + 1000; /* back off, then try again */
        }
        if (claimed == 0)
            eb_wait(app, gen, gr_time_mono_ms() + (wake_ms - gr_time_now_ms()) + 1);
    }
    return NULL;
}

int eb_push_start(struct eb_app *app)
{
    if (pthread_create(&app->push_thread, NULL, push_main, app) != 0)
        return GR_EINTERNAL;
    app->push_started = true;
    return 0;
}

void eb_push_stop(struct eb_app *app)
{
    pthread_mutex_lock(&app->mu);
    app->stop = true;
    pthread_cond_broadcast(&app->cond);
    pthread_mutex_unlock(&app->mu);
    if (app->push_started)
        pthread_join(app->push_thread, NULL);
    app->push_started = false;
}
