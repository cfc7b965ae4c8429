/*
 * deliveries.c - the delivery engine and the handlers built on it: pull (with long polling),
 * ack, nak, replay and the dead-letter list of a subscription.
 *
 * A delivery row is pending (due when deliver_after <= now), in flight (until its ack
 * deadline deliver_after), acked or dead. State moves only inside the transactions of pull,
 * nak, replay, the dead-letter list and the push thread: eb_expire turns in-flight rows past
 * their deadline back into due ones, or into dead letters once attempts reached max_deliver,
 * publishing an eventbus.dead_lettered event for each. Ordered subscriptions hold a subject's
 * event while an earlier event of that subject is pending or in flight.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eventbus.h"
#include "gr/cursor.h"
#include "gr/service.h"

/* ---- waking ---------------------------------------------------------------------------------- */

void eb_wake(struct eb_app *app)
{
    pthread_mutex_lock(&app->mu);
    app->gen++;
    pthread_cond_broadcast(&app->cond);
    pthread_mutex_unlock(&app->mu);
    gr_waitq_notify(app->wq);
}

uint64_t eb_gen(struct eb_app *app)
{
    uint64_t g;

    pthread_mutex_lock(&app->mu);
    g = app->gen;
    pthread_mutex_unlock(&app->mu);
    return g;
}

void eb_wait(struct eb_app *app, uint64_t gen, int64_t until_mono_ms)
{
    struct timespec ts = { .tv_sec = until_mono_ms / 1000,
                           .tv_nsec = (long)(until_mono_ms % 1000) * 1000000L };

    pthread_mutex_lock(&app->mu);
    while (app->gen == gen && !app->stop && gr_time_mono_ms() < until_mono_ms)
        if (pthread_cond_timedwait(&app->cond, &app->mu, &ts) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&app->mu);
}

/* ---- engine ---------------------------------------------------------------------------------- */

int eb_sub_load(struct gr_db_conn *db, struct gr_arena *a, const char *id, struct eb_sub *out)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    rc = gr_db_query(db, a,
                     "SELECT id, name, mode, push_url, ordered, ack_wait_s, max_deliver"
                     " FROM subscriptions WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0)
        return GR_ENOTFOUND;
    *out = (struct eb_sub){ .id = gr_db_text(rows, 0, 0),
                            .name = gr_db_text(rows, 0, 1),
                            .mode = gr_db_text(rows, 0, 2),
                            .push_url = gr_db_text(rows, 0, 3),
                            .ordered = gr_db_int(rows, 0, 4) != 0,
                            .ack_wait_s = gr_db_int(rows, 0, 5),
                            .max_deliver = gr_db_int(rows, 0, 6) };
    return 0;
}

/* Makes delivery @seq of @sub a dead letter and publishes eventbus.dead_lettered. */
static int make_dead(struct gr_db_conn *db, struct gr_arena *a, const struct eb_sub *sub,
                     long long seq, long long attempts, const char *event_id, const char *type)
{
    char now[GR_TIME_STR_LEN];
    json_t *data;
    int rc;

    eb_now(now);
    rc = gr_db_exec(db,
                    "UPDATE deliveries SET state = 'dead', dead_at = $3"
                    " WHERE subscription_id = $1 AND seq = $2",
                    (struct gr_db_val[]){ GR_DB_TEXT(sub->id), GR_DB_INT(seq), GR_DB_TEXT(now) }, 3,
                    NULL);
    if (rc < 0)
        return rc;
    data = eb_own(a, json_pack("{s:s,s:s,s:I,s:s,s:s,s:I}", "subscription_id", sub->id,
                               "subscription", sub->name, "seq", (json_int_t)seq, "event_id",
                               event_id, "type", type, "attempts", (json_int_t)attempts));
    return eb_event_emit(db, a, "eventbus.dead_lettered", sub->id, data);
}

int eb_expire(struct gr_db_conn *db, struct gr_arena *a, const struct eb_sub *sub, int64_t now_ms)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    rc = gr_db_query(
        db, a,
        "SELECT d.seq, d.attempts, e.id, e.type FROM deliveries d"
        " JOIN events e ON e.seq = d.seq WHERE d.subscription_id = $1"
        " AND d.state = 'inflight' AND d.deliver_after <= $2 AND d.attempts >= $3"
        " ORDER BY d.seq",
        (struct gr_db_val[]){ GR_DB_TEXT(sub->id), GR_DB_INT(now_ms), GR_DB_INT(sub->max_deliver) },
        3, &rows);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < gr_db_nrows(rows); i++) {
        rc = make_dead(db, a, sub, gr_db_int(rows, i, 0), gr_db_int(rows, i, 1),
                       gr_db_text(rows, i, 2), gr_db_text(rows, i, 3));
        if (rc < 0)
            return rc;
    }
    return gr_db_exec(db,
                      "UPDATE deliveries SET state = 'pending' WHERE subscription_id = $1"
                      " AND state = 'inflight' AND deliver_after <= $2",
                      (struct gr_db_val[]){ GR_DB_TEXT(sub->id), GR_DB_INT(now_ms) }, 2, NULL);
}

#define CLAIM_HEAD                                                                                 \
    "SELECT d.seq, d.attempts, e.envelope FROM deliveries d JOIN events e ON e.seq = d.seq"        \
    " WHERE d.subscription_id = $1 AND d.state = 'pending' AND d.deliver_after <= $2"
#define CLAIM_ORDER " ORDER BY d.seq LIMIT $3"
#define CLAIM_HOLD                                                                                 \
    " AND (d.subject IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries o"                            \
    " WHERE o.subscription_id = d.subscription_id AND o.subject = d.subject AND o.seq < d.seq"     \
    " AND o.state IN ('pending', 'inflight')))"

int eb_claim(struct gr_db_conn *db, struct gr_arena *a, const struct eb_sub *sub, long long max,
             int64_t now_ms, struct gr_db_rows **rows)
{
    int rc;

    rc = eb_expire(db, a, sub, now_ms);
    if (rc < 0)
        return rc;
    rc = gr_db_query(
        db, a, sub->ordered ? CLAIM_HEAD CLAIM_HOLD CLAIM_ORDER : CLAIM_HEAD CLAIM_ORDER,
        (struct gr_db_val[]){ GR_DB_TEXT(sub->id), GR_DB_INT(now_ms), GR_DB_INT(max) }, 3, rows);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < gr_db_nrows(*rows); i++) {
        rc =
            gr_db_exec(db,
                       "UPDATE deliveries SET state = 'inflight', attempts = attempts + 1,"
                       " deliver_after = $3 WHERE subscription_id = $1 AND seq = $2",
                       (struct gr_db_val[]){ GR_DB_TEXT(sub->id), GR_DB_INT(gr_db_int(*rows, i, 0)),
                                             GR_DB_INT(now_ms + sub->ack_wait_s * 1000) },
                       3, NULL);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int eb_fail(struct gr_db_conn *db, struct gr_arena *a, const struct eb_sub *sub, long long seq,
            int64_t delay_ms, int64_t now_ms, long long *changed)
{
    struct gr_db_rows *rows = NULL;
    long long attempts;
    int rc;

    *changed = 0;
    rc = gr_db_query(db, a,
                     "SELECT d.attempts, e.id, e.type FROM deliveries d JOIN events e"
                     " ON e.seq = d.seq WHERE d.subscription_id = $1 AND d.seq = $2"
                     " AND d.state = 'inflight'",
                     (struct gr_db_val[]){ GR_DB_TEXT(sub->id), GR_DB_INT(seq) }, 2, &rows);
    if (rc < 0 || gr_db_nrows(rows) == 0)
        return rc;
    *changed = 1;
    attempts = gr_db_int(rows, 0, 0);
    if (attempts >= sub->max_deliver)
        return make_dead(db, a, sub, seq, attempts, gr_db_text(rows, 0, 1), gr_db_text(rows, 0, 2));
    return gr_db_exec(
        db,
        "UPDATE deliveries SET state = 'pending', deliver_after = $3"
        " WHERE subscription_id = $1 AND seq = $2",
        (struct gr_db_val[]){ GR_DB_TEXT(sub->id), GR_DB_INT(seq), GR_DB_INT(now_ms + delay_ms) },
        3, NULL);
}

int eb_next_due(struct gr_db_conn *db, struct gr_arena *a, const char *sub_id, int64_t *due)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    /*
     * In-flight rows wake a waiter at their deadline, pending rows at the time they become
     * due. A pending row already due that the claim did not return is held by ordering; it
     * moves when the in-flight row before it does.
     */
    rc = gr_db_query(db, a,
                     "SELECT min(deliver_after) FROM deliveries WHERE subscription_id = $1"
                     " AND (state = 'inflight' OR (state = 'pending' AND deliver_after > $2))",
                     (struct gr_db_val[]){ GR_DB_TEXT(sub_id), GR_DB_INT(gr_time_now_ms()) }, 2,
                     &rows);
    if (rc < 0)
        return rc;
    *due = gr_db_isnull(rows, 0, 0) ? -1 : gr_db_int(rows, 0, 0);
    return 0;
}

/* ---- handlers -------------------------------------------------------------------------------- */

static int load_sub(struct gr_req *req, struct gr_resp *resp, struct eb_sub *sub)
{
    int rc = eb_sub_load(req->db, req->arena, gr_req_param(req, "id"), sub);

    if (rc == GR_ENOTFOUND)
        return gr_resp_problem(req, resp, rc, NULL, "no such subscription");
    return rc;
}

int eb_subs_pull(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const allowed[] = { "max", "wait_ms", NULL };
    struct gr_json_rd r = eb_rd(req, resp);
    struct gr_db_rows *rows = NULL;
    long long max = 100, wait_ms = 0;
    struct eb_sub sub;
    int64_t deadline;
    json_t *data;
    int rc;

    (void)gr_json_only(&r, req->json, "", allowed);
    (void)gr_json_int(&r, req->json, "", "max", 0, 1, EB_PULL_MAX, &max, NULL);
    (void)gr_json_int(&r, req->json, "", "wait_ms", 0, 0, EB_WAIT_MAX_MS, &wait_ms, NULL);
    if (resp->errs.n > 0)
        return gr_resp_problem(req, resp, GR_EVALID, NULL, "the pull request is not valid");
    rc = load_sub(req, resp, &sub);
    if (rc < 0)
        return rc;
    if (strcmp(sub.mode, "pull") != 0)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "push_subscription",
                               "subscription '%s' is in push mode", sub.name);
    /* One claim per run: with nothing to deliver the request parks (gr_req_wait, no thread
     * held) until a publish or nak wakes it, the next delivery falls due, the wait ends or the
     * service drains; then this handler runs again. */
    deadline = req->wait.start_ms + wait_ms;
    {
        struct eb_app *app = req->app;
        uint64_t seq = gr_waitq_seq(app->wq); /* before the claim: a publish after it wakes */
        int64_t due, until, now;

        rc = gr_req_begin(req);
        if (rc == 0)
            rc = eb_claim(req->db, req->arena, &sub, max, gr_time_now_ms(), &rows);
        if (rc == 0)
            rc = gr_db_commit(req->db);
        if (rc < 0) {
            (void)gr_db_rollback(req->db);
            return rc;
        }
        now = gr_time_mono_ms();
        if (gr_db_nrows(rows) == 0 && now < deadline && req->wait.reason != GR_WAKE_DRAIN) {
            rc = eb_next_due(req->db, req->arena, sub.id, &due);
            if (rc < 0)
                return rc;
            until = deadline;
            if (due >= 0 && now + (due - gr_time_now_ms()) < until)
                until = now + (due - gr_time_now_ms()) + 1;
            return gr_req_wait(req, resp, app->wq, seq, until);
        }
    }
    data = json_array();
    for (size_t i = 0; i < gr_db_nrows(rows); i++) {
        json_t *item = eb_event_item(req->arena, gr_db_int(rows, i, 0), gr_db_text(rows, i, 2));
        json_t *out = json_pack("{s:O,s:I,s:O}", "seq", json_object_get(item, "seq"), "attempt",
                                (json_int_t)(gr_db_int(rows, i, 1) + 1), "event",
                                json_object_get(item, "event"));
        json_array_append_new(data, out);
    }
    gr_resp_json(resp, 200, json_pack("{s:o}", "data", data));
    return 0;
}

/* Reads {"seqs": [...]} plus the keys in @extra; errors into the response. */
static json_t *read_seqs(struct gr_req *req, struct gr_resp *resp, const char *const *allowed)
{
    struct gr_json_rd r = eb_rd(req, resp);
    json_t *seqs = NULL;

    (void)gr_json_only(&r, req->json, "", allowed);
    (void)gr_json_arr(&r, req->json, "", "seqs", GR_JSON_REQUIRED, EB_SEQS_MAX, &seqs, NULL);
    for (size_t i = 0; i < json_array_size(seqs); i++) {
        json_t *v = json_array_get(seqs, i);

        if (!json_is_integer(v) || json_integer_value(v) < 1)
            gr_resp_field_error(req, resp, gr_json_ptr_idx(req->arena, "/seqs", i),
                                "must be a positive integer");
    }
    return seqs;
}

int eb_subs_ack(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const allowed[] = { "seqs", NULL };
    json_t *seqs = read_seqs(req, resp, allowed), *v;
    long long acked = 0;
    struct eb_sub sub;
    size_t i;
    int rc;

    if (resp->errs.n > 0)
        return gr_resp_problem(req, resp, GR_EVALID, NULL, "the ack request is not valid");
    rc = load_sub(req, resp, &sub);
    if (rc < 0)
        return rc;
    for (i = 0; i < json_array_size(seqs); i++) {
        long long n = 0;

        v = json_array_get(seqs, i);
        rc = gr_db_exec(
            req->db,
            "UPDATE deliveries SET state = 'acked' WHERE subscription_id = $1"
            " AND seq = $2 AND state IN ('inflight', 'pending')",
            (struct gr_db_val[]){ GR_DB_TEXT(sub.id), GR_DB_INT(json_integer_value(v)) }, 2, &n);
        if (rc < 0)
            return rc;
        acked += n;
    }
    gr_resp_json(resp, 200, json_pack("{s:I}", "acked", (json_int_t)acked));
    return 0;
}

int eb_subs_nak(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const allowed[] = { "seqs", "delay_ms", NULL };
    json_t *seqs = read_seqs(req, resp, allowed), *v;
    struct gr_json_rd r = eb_rd(req, resp);
    long long naked = 0, delay = 0;
    int64_t now = gr_time_now_ms();
    struct eb_sub sub;
    size_t i;
    int rc;

    (void)gr_json_int(&r, req->json, "", "delay_ms", 0, 0, EB_NAK_DELAY_MAX, &delay, NULL);
    if (resp->errs.n > 0)
        return gr_resp_problem(req, resp, GR_EVALID, NULL, "the nak request is not valid");
    rc = load_sub(req, resp, &sub);
    if (rc < 0)
        return rc;
    rc = gr_req_begin(req);
    if (rc < 0)
        return rc;
    for (i = 0; i < json_array_size(seqs); i++) {
        long long n = 0;

        v = json_array_get(seqs, i);
        rc = eb_fail(req->db, req->arena, &sub, json_integer_value(v), delay, now, &n);
        if (rc < 0)
            return rc;
        naked += n;
    }
    rc = gr_db_commit(req->db);
    if (rc < 0)
        return rc;
    eb_wake(req->app);
    gr_resp_json(resp, 200, json_pack("{s:I}", "naked", (json_int_t)naked));
    return 0;
}

#define SQL_REPLAY_MISSING                                                                         \
    "INSERT INTO deliveries (subscription_id, seq, subject, attempts, state, deliver_after)"       \
    " SELECT $1, e.seq, e.subject, 0, 'pending', 0 FROM events e WHERE e.seq > $2"                 \
    " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.subscription_id = $1 AND d.seq = e.seq)"  \
    " AND EXISTS (SELECT 1 FROM subscription_filters f WHERE f.subscription_id = $1"               \
    " AND ((f.is_prefix = 0 AND f.pattern = e.type) OR (f.is_prefix = 1"                           \
    " AND substr(e.type, 1, length(f.pattern)) = f.pattern)))"

int eb_subs_replay(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const allowed[] = { "after_seq", NULL };
    struct gr_json_rd r = eb_rd(req, resp);
    long long after = 0, n1 = 0, n2 = 0;
    struct eb_sub sub;
    int rc;

    (void)gr_json_only(&r, req->json, "", allowed);
    (void)gr_json_int(&r, req->json, "", "after_seq", GR_JSON_REQUIRED, 0, GR_JSON_MAX_INT, &after,
                      NULL);
    if (resp->errs.n > 0)
        return gr_resp_problem(req, resp, GR_EVALID, NULL, "the replay request is not valid");
    rc = load_sub(req, resp, &sub);
    if (rc < 0)
        return rc;
    rc = gr_req_begin(req);
    if (rc < 0)
        return rc;
    rc = gr_db_exec(req->db,
                    "UPDATE deliveries SET state = 'pending', attempts = 0, deliver_after = 0,"
                    " dead_at = NULL WHERE subscription_id = $1 AND seq > $2",
                    (struct gr_db_val[]){ GR_DB_TEXT(sub.id), GR_DB_INT(after) }, 2, &n1);
    if (rc == 0)
        rc = gr_db_exec(req->db, SQL_REPLAY_MISSING,
                        (struct gr_db_val[]){ GR_DB_TEXT(sub.id), GR_DB_INT(after) }, 2, &n2);
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0)
        return rc;
    eb_wake(req->app);
    gr_resp_json(resp, 200, json_pack("{s:I}", "replayed", (json_int_t)(n1 + n2)));
    return 0;
}

int eb_subs_dead_letters(struct gr_req *req, struct gr_resp *resp)
{
    const char *cursor = gr_req_query(req, "cursor"), *scope;
    struct gr_db_rows *rows = NULL;
    long long after = 0;
    struct eb_sub sub;
    size_t nrows;
    bool has_more;
    json_t *data;
    int limit = 20, rc;

    if (gr_req_limit(req, resp, &limit) < 0)
        return gr_resp_problem(req, resp, GR_EVALID, NULL, "invalid query parameters");
    scope = gr_arena_printf(req->arena, "GET /api/v1/event-subscriptions/%s/dead-letters",
                            gr_req_param(req, "id"));
    if (cursor != NULL) {
        const char *payload = NULL;
        char *end = NULL;
        if (gr_cursor_decode(&req->ctx->cursor_key, req->arena, scope, cursor, &payload, NULL) < 0)
            return gr_resp_problem(req, resp, GR_EINVAL, "bad_cursor", "the cursor is invalid");
        after = strtoll(payload, &end, 10);
        if (end == payload || *end != '\0')
            return gr_resp_problem(req, resp, GR_EINVAL, "bad_cursor", "the cursor is invalid");
    }
    rc = load_sub(req, resp, &sub);
    if (rc < 0)
        return rc;
    rc = eb_expire(req->db, req->arena, &sub, gr_time_now_ms());
    if (rc < 0)
        return rc;
    rc = gr_db_query(
        req->db, req->arena,
        "SELECT d.seq, d.attempts, d.dead_at, e.envelope FROM deliveries d"
        " JOIN events e ON e.seq = d.seq WHERE d.subscription_id = $1"
        " AND d.state = 'dead' AND d.seq > $2 ORDER BY d.seq LIMIT $3",
        (struct gr_db_val[]){ GR_DB_TEXT(sub.id), GR_DB_INT(after), GR_DB_INT(limit + 1) }, 3,
        &rows);
    if (rc < 0)
        return rc;
    nrows = gr_db_nrows(rows);
    has_more = nrows > (size_t)limit;
    if (has_more)
        nrows = (size_t)limit;
    data = json_array();
    for (size_t i = 0; i < nrows; i++) {
        json_t *item = eb_event_item(req->arena, gr_db_int(rows, i, 0), gr_db_text(rows, i, 3));
        json_array_append_new(
            data, json_pack("{s:O,s:I,s:s,s:O}", "seq", json_object_get(item, "seq"), "attempts",
                            (json_int_t)gr_db_int(rows, i, 1), "dead_at", gr_db_text(rows, i, 2),
                            "event", json_object_get(item, "event")));
    }
    return gr_resp_list(req, resp, data, has_more, scope,
                        has_more ? gr_db_text(rows, nrows - 1, 0) : NULL);
}
