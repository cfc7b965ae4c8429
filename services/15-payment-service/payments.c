/*
 * payments.c - /api/v1/payments: create-and-confirm, read, history, capture, cancel,
 * confirm (after 3-D Secure) and refund (SERVICES §15).
 *
 * The writes that reach the provider run without the core's transaction (no GR_R_TX): a
 * short transaction records the intent, the provider is called with no transaction open,
 * and a second short transaction applies its answer (pay_apply). POST /payments and
 * POST …/refund require an Idempotency-Key [IK!]: the core answers concurrent duplicates
 * (409 in flight, then the stored response); the key is also kept on the payment or refund
 * row, so a request retried after a crash or a provider outage resumes the same payment,
 * and the provider's own idempotency key (our id) makes the repeated call one charge.
 * While a payment is parked in `processing`, pending_op/pending_from/pending_reason/
 * pending_amount name the call in flight: after a crash the reconciler (reconcile.c) uses them
 * to finish it the way this file would have.
 */
#include <stdio.h>
#include <string.h>

#include "gr/auth.h"
#include "gr/cursor.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/money.h"
#include "gr/service.h"
#include "pay.h"

#define HOUR_MS (3600LL * 1000)

static struct pay_app *app_of(struct gr_req *req)
{
    return req->app;
}

static const char *caller_of(struct gr_req *req)
{
    return req->principal ? req->principal->sub : "anonymous";
}

static bool livemode(struct gr_req *req)
{
    return app_of(req)->provider.livemode;
}

static int reply_payment(struct gr_req *req, struct gr_resp *resp, int status, const char *id)
{
    struct pay_row p;
    int rc = pay_load(req->db, req->arena, id, &p);

    if (rc < 0)
        return rc;
    gr_resp_json(resp, status, pay_json(&p, livemode(req)));
    return 0;
}

static int card_data(struct gr_req *req, struct gr_resp *resp)
{
    gr_resp_field_error(req, resp, "/card_number", "card numbers are never accepted: use a token");
    return gr_resp_problem(req, resp, GR_EVALID, "card_data_forbidden",
                           "raw card data must not be sent; tokenize the card at the provider");
}

/* The payment visible to the caller (owner, or payments:read): GR_ENOTFOUND otherwise. */
static int load_visible(struct gr_req *req, const char *id, struct pay_row *p)
{
    int rc = pay_load(req->db, req->arena, id, p);

    if (rc < 0)
        return rc;
    if (!gr_req_can(req, "payments:read") &&
        strcmp(gr_db_text(p->rows, 0, PC_USER), caller_of(req)) != 0)
        return GR_ENOTFOUND;
    return 0;
}

/* ---- POST /api/v1/payments ------------------------------------------------------------ */

struct create {
    long long amount;
    const char *currency, *order_id, *pm_id, *capture_method, *user_id;
    const char *method_ref, *fingerprint, *last4;
    char id[GR_ID_LEN];
    const char *caller, *key;
};

static int create_tx(struct gr_req *req, void *arg)
{
    struct create *c = arg;
    char now[GR_TIME_STR_LEN];
    struct gr_str txt;
    struct pay_row p;
    json_t *o;
    int rc;

    pay_now(now);
    /* RETURNING: the event below renders the row as stored, without reading it again. */
    rc = gr_db_query(
        req->db, req->arena,
        "INSERT INTO payments (id, order_id, user_id, amount, currency, status,"
        " capture_method, payment_method_id, method_ref, fingerprint, last4, provider,"
        " idem_caller, idem_key, created_at, updated_at, pending_op)"
        " VALUES ($1, $2, $3, $4, $5, 'processing', $6, $7, $8, $9, $10, $11, $12,"
        " $13, $14, $14, 'create') RETURNING " PAYMENT_COLS,
        (struct gr_db_val[]){ GR_DB_TEXT(c->id), GR_DB_TEXT(c->order_id), GR_DB_TEXT(c->user_id),
                              GR_DB_INT(c->amount), GR_DB_TEXT(c->currency),
                              GR_DB_TEXT(c->capture_method), GR_DB_TEXT(c->pm_id),
                              GR_DB_TEXT(c->method_ref), GR_DB_TEXT(c->fingerprint),
                              GR_DB_TEXT(c->last4), GR_DB_TEXT(app_of(req)->provider.name),
                              GR_DB_TEXT(c->caller), GR_DB_TEXT(c->key), GR_DB_TEXT(now) },
        14, &p.rows);
    p.i = 0;
    if (rc == 0 && gr_db_nrows(p.rows) != 1)
        rc = GR_EINTERNAL;
    if (rc == 0)
        rc = pay_log(req->db, c->id, NULL, "initiated", NULL, "processing", c->amount, c->currency,
                     c->fingerprint, "api", NULL);
    if (rc < 0)
        return rc;
    o = pay_json(&p, false);
    json_object_del(o, "livemode");
    json_object_del(o, "next_action");
    rc = gr_json_dump(req->arena, o, &txt);
    json_decref(o);
    if (rc < 0)
        return rc;
    return gr_req_emit(req, "payment.initiated", c->id, txt.ptr);
}

struct apply {
    const char *id, *status, *ref, *failure;
    long long captured;
    struct gr_resp *resp; /* the reply, made and stored as the key's answer in the transaction */
    int reply_status;
};

/*
 * Runs at READ COMMITTED (as create_tx, which only inserts, its unique key deciding a racing
 * retry): pay_apply moves the payment by a conditional write (`… WHERE status = $from`) and
 * runs again when the row moved under it.
 */
static int apply_tx(struct gr_req *req, void *arg)
{
    struct apply *ap = arg;
    struct pay_row p;
    bool changed;
    int rc;

    rc = pay_apply_row(req->db, req->arena, ap->id, ap->status, ap->captured, ap->ref, ap->failure,
                       "api", NULL, gr_req_header(req, "traceparent"), &changed, &p);
    if (rc == 0 && !changed)
        rc = pay_load(req->db, req->arena, ap->id, &p);
    if (rc < 0)
        return rc;
    if (ap->resp->json != NULL) /* an earlier attempt's */
        json_decref(ap->resp->json);
    gr_resp_json(ap->resp, ap->reply_status, pay_json(&p, livemode(req)));
    return gr_req_idem_store(req, ap->resp); /* the answer commits with the payment's state */
}

/* Calls the provider for payment @c->id (recorded as processing) and applies its answer. */
static int drive_create(struct gr_req *req, struct gr_resp *resp, struct create *c)
{
    struct pay_app *app = app_of(req);
    struct pay_create in = { .payment_id = c->id,
                             .amount = c->amount,
                             .currency = c->currency,
                             .method = c->method_ref,
                             .manual_capture = strcmp(c->capture_method, "manual") == 0 };
    struct pay_intent pi;
    struct apply ap = { .id = c->id };
    int rc;

    pay_test_kill(app, "create_unsent");
    rc = app->provider.create(&app->provider, &in, &pi);
    pay_test_kill(app, "create");
    if (rc == GR_EUNAVAIL)
        return gr_resp_problem(req, resp, GR_EUNAVAIL, "provider_unavailable",
                               "the payment provider cannot be reached; retry with the same"
                               " Idempotency-Key");
    if (rc < 0) {
        ap.status = "failed";
        ap.failure = "invalid_request";
    } else {
        ap.status = pay_status_of(&pi);
        ap.ref = pi.id;
        ap.failure = pi.failure_code[0] ? pi.failure_code : NULL;
        ap.captured = pi.amount_received;
    }
    ap.resp = resp;
    ap.reply_status = 201;
    return gr_req_tx_read_committed(req, apply_tx, &ap);
}

static int resolve_method(struct gr_req *req, struct gr_resp *resp, struct create *c)
{
    struct pay_app *app = app_of(req);
    struct gr_db_rows *r;
    struct pay_card card;
    int rc;

    if (gr_id_valid(c->pm_id, strlen(c->pm_id))) {
        rc = gr_db_query(req->db, req->arena,
                         "SELECT provider_token, fingerprint, last4, user_id FROM payment_methods"
                         " WHERE id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(c->pm_id) }, 1, &r);
        if (rc < 0)
            return rc;
        if (gr_db_nrows(r) != 1 ||
            (strcmp(gr_db_text(r, 0, 3), c->user_id) != 0 && !gr_req_can(req, "payments:write"))) {
            gr_resp_field_error(req, resp, "/payment_method_id", "no such payment method");
            return GR_EVALID;
        }
        c->method_ref = gr_db_text(r, 0, 0);
        c->fingerprint = gr_db_text(r, 0, 1);
        c->last4 = gr_db_text(r, 0, 2);
        return 0;
    }
    if (strncmp(c->pm_id, "tok_", 4) != 0 && strncmp(c->pm_id, "pm_", 3) != 0) {
        gr_resp_field_error(req, resp, "/payment_method_id",
                            "must be a payment method id or a provider token (tok_…, pm_…)");
        return GR_EVALID;
    }
    rc = app->provider.tokenize(&app->provider, c->pm_id, &card);
    if (rc == GR_EUNAVAIL)
        return gr_resp_problem(req, resp, GR_EUNAVAIL, "provider_unavailable",
                               "the payment provider cannot be reached");
    if (rc < 0) {
        gr_resp_field_error(req, resp, "/payment_method_id", "the provider does not know it");
        return GR_EVALID;
    }
    c->method_ref = gr_arena_strdup(req->arena, card.ref);
    c->fingerprint = gr_arena_strdup(req->arena, card.fingerprint);
    c->last4 = gr_arena_strdup(req->arena, card.last4);
    c->pm_id = NULL; /* a raw token is not one of our payment methods */
    return 0;
}

int payments_create(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const fields[] = {
        "amount", "currency", "order_id", "payment_method_id", "capture_method", "user_id", NULL
    };
    struct gr_json_rd rd = { req->arena, &resp->errs };
    struct create c;
    struct gr_db_rows *r;
    char since[GR_TIME_STR_LEN];
    int rc;

    memset(&c, 0, sizeof(c));
    if (pay_has_card_number(req->json))
        return card_data(req, resp);
    (void)gr_json_only(&rd, req->json, "", fields);
    (void)gr_json_int(&rd, req->json, "", "amount", GR_JSON_REQUIRED, 1, GR_MONEY_MAX_AMOUNT,
                      &c.amount, NULL);
    (void)gr_json_str(&rd, req->json, "", "currency", GR_JSON_REQUIRED, 3, 3, &c.currency, NULL);
    (void)gr_json_str(&rd, req->json, "", "order_id", GR_JSON_OPTIONAL, 1, 64, &c.order_id, NULL);
    (void)gr_json_str(&rd, req->json, "", "payment_method_id", GR_JSON_REQUIRED, 1, 255, &c.pm_id,
                      NULL);
    (void)gr_json_str(&rd, req->json, "", "capture_method", GR_JSON_OPTIONAL, 1, 20,
                      &c.capture_method, NULL);
    (void)gr_json_str(&rd, req->json, "", "user_id", GR_JSON_OPTIONAL, 1, 255, &c.user_id, NULL);
    if (c.currency && !gr_money_currency_valid(c.currency))
        gr_resp_field_error(req, resp, "/currency", "must be a lowercase ISO 4217 currency code");
    if (c.order_id && !gr_id_valid(c.order_id, strlen(c.order_id)))
        gr_resp_field_error(req, resp, "/order_id", "must be a UUID");
    if (!c.capture_method)
        c.capture_method = "automatic";
    else if (strcmp(c.capture_method, "automatic") != 0 && strcmp(c.capture_method, "manual") != 0)
        gr_resp_field_error(req, resp, "/capture_method", "must be automatic or manual");
    if (c.user_id && !gr_req_can(req, "payments:write"))
        gr_resp_field_error(req, resp, "/user_id", "needs the payments:write permission");
    if (resp->errs.n > 0)
        return GR_EVALID;
    c.caller = caller_of(req);
    if (!c.user_id)
        c.user_id = c.caller;
    c.key = gr_req_header(req, "Idempotency-Key");
    if (!c.key)
        return GR_EINVAL; /* the core requires it on this route */

    /* A request already recorded under this key (a retry after a crash or an outage). */
    rc = gr_db_query(req->db, req->arena,
                     "SELECT id, status, provider_ref, amount, currency, method_ref, fingerprint,"
                     " capture_method FROM payments WHERE idem_caller = $1 AND idem_key = $2",
                     (struct gr_db_val[]){ GR_DB_TEXT(c.caller), GR_DB_TEXT(c.key) }, 2, &r);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(r) == 1) {
        snprintf(c.id, sizeof(c.id), "%s", gr_db_text(r, 0, 0));
        if (strcmp(gr_db_text(r, 0, 1), "processing") == 0 && gr_db_isnull(r, 0, 2)) {
            c.amount = gr_db_int(r, 0, 3);
            c.currency = gr_db_text(r, 0, 4);
            c.method_ref = gr_db_text(r, 0, 5);
            c.fingerprint = gr_db_text(r, 0, 6);
            c.capture_method = gr_db_text(r, 0, 7);
            return drive_create(req, resp, &c);
        }
        return reply_payment(req, resp, 201, c.id);
    }

    rc = resolve_method(req, resp, &c);
    if (rc < 0)
        return rc;
    /* More than PAY_FRAUD_MAX failures of this card within the hour: no provider call. */
    gr_time_format(gr_time_now_ms() - HOUR_MS, since);
    rc = gr_db_query(req->db, req->arena,
                     "SELECT COUNT(*) FROM transactions WHERE fingerprint = $1 AND kind = 'failed'"
                     " AND created_at >= $2",
                     (struct gr_db_val[]){ GR_DB_TEXT(c.fingerprint), GR_DB_TEXT(since) }, 2, &r);
    if (rc < 0)
        return rc;
    if (gr_db_int(r, 0, 0) > PAY_FRAUD_MAX)
        return gr_resp_problem(req, resp, GR_EVALID, "fraud_suspected",
                               "this card failed more than %d times within the hour",
                               PAY_FRAUD_MAX);

    gr_id_new(c.id);
    rc = gr_req_tx_read_committed(req, create_tx, &c);
    if (rc < 0)
        return rc;
    return drive_create(req, resp, &c);
}

/* ---- reads ---------------------------------------------------------------------------- */

int payments_get(struct gr_req *req, struct gr_resp *resp)
{
    struct pay_row p;
    int rc = load_visible(req, gr_req_param(req, "id"), &p);

    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, pay_json(&p, livemode(req)));
    return 0;
}

static const char *time_param(struct gr_req *req, struct gr_resp *resp, const char *name)
{
    const char *v = gr_req_query(req, name);
    int64_t ms;
    char *out;

    if (!v)
        return NULL;
    if (gr_time_parse(v, &ms) < 0) {
        gr_resp_field_error(req, resp, gr_arena_printf(req->arena, "query.%s", name),
                            "must be an RFC 3339 date-time");
        return NULL;
    }
    out = gr_arena_alloc(req->arena, GR_TIME_STR_LEN);
    gr_time_format(ms, out);
    return out;
}

static bool status_valid(const char *s)
{
    static const char *const all[] = { "requires_payment_method",
                                       "requires_action",
                                       "requires_capture",
                                       "processing",
                                       "succeeded",
                                       "cancelled",
                                       "failed" };

    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (strcmp(all[i], s) == 0)
            return true;
    }
    return false;
}

int payments_history(struct gr_req *req, struct gr_resp *resp)
{
    const char *user = gr_req_query(req, "user_id"), *status = gr_req_query(req, "status");
    const char *from, *to, *cursor = gr_req_query(req, "cursor"), *scope, *payload;
    const char *ck = NULL, *cid = NULL;
    struct gr_db_rows *rows;
    struct pay_row p;
    json_t *data;
    int limit = 20, rc;
    size_t n;
    bool more;

    if (gr_req_limit(req, resp, &limit) < 0)
        limit = 20;
    from = time_param(req, resp, "from");
    to = time_param(req, resp, "to");
    if (status && !status_valid(status))
        gr_resp_field_error(req, resp, "query.status", "unknown status");
    if (resp->errs.n > 0)
        return GR_EVALID;
    if (user && strcmp(user, caller_of(req)) != 0 && !gr_req_can(req, "payments:read"))
        return gr_resp_problem(req, resp, GR_EFORBIDDEN, NULL,
                               "user_id= needs the payments:read permission");
    if (!user)
        user = caller_of(req);
    scope = gr_arena_printf(req->arena, "GET /api/v1/payments/history\n%s\n%s\n%s\n%s", user,
                            status ? status : "", from ? from : "", to ? to : "");
    if (cursor) {
        const char *sp;

        if (gr_cursor_decode(&req->ctx->cursor_key, req->arena, scope, cursor, &payload, NULL) <
                0 ||
            !(sp = strchr(payload, ' ')))
            return gr_resp_problem(req, resp, GR_EINVAL, "invalid_cursor",
                                   "the cursor is invalid for this list");
        ck = gr_arena_strndup(req->arena, payload, (size_t)(sp - payload));
        cid = sp + 1;
    }
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " PAYMENT_COLS " FROM payments WHERE user_id = $1"
                     " AND (CAST($2 AS TEXT) IS NULL OR status = CAST($2 AS TEXT))"
                     " AND (CAST($3 AS TEXT) IS NULL OR created_at >= CAST($3 AS TEXT))"
                     " AND (CAST($4 AS TEXT) IS NULL OR created_at < CAST($4 AS TEXT))"
                     " AND (CAST($5 AS TEXT) IS NULL"
                     " OR (created_at, id) < (CAST($5 AS TEXT), CAST($6 AS TEXT)))"
                     " ORDER BY created_at DESC, id DESC LIMIT CAST($7 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_TEXT(user), GR_DB_TEXT(status), GR_DB_TEXT(from),
                                           GR_DB_TEXT(to), GR_DB_TEXT(ck), GR_DB_TEXT(cid),
                                           GR_DB_INT(limit + 1) },
                     7, &rows);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(rows);
    more = n > (size_t)limit;
    if (more)
        n = (size_t)limit;
    data = json_array();
    p.rows = rows;
    for (size_t i = 0; i < n; i++) {
        p.i = i;
        json_array_append_new(data, pay_json(&p, livemode(req)));
    }
    return gr_resp_list(req, resp, data, more, scope,
                        more ? gr_arena_printf(req->arena, "%s %s",
                                               gr_db_text(rows, n - 1, PC_CREATED),
                                               gr_db_text(rows, n - 1, PC_ID))
                             : "");
}

/* ---- capture, cancel, confirm ----------------------------------------------------------- */

/*
 * The optional JSON body of capture, cancel and confirm: absent, or application/json with
 * only the members in @allowed. *@out is NULL without a body.
 */
static int optional_body(struct gr_req *req, struct gr_resp *resp, const char *const *allowed,
                         json_t **out)
{
    struct gr_json_rd rd = { req->arena, &resp->errs };
    const char *ct = gr_req_header(req, "Content-Type");
    int rc;

    *out = NULL;
    if (req->body.len == 0)
        return 0;
    if (!ct || strncmp(ct, "application/json", 16) != 0)
        return gr_resp_problem(req, resp, GR_EMEDIA, NULL, "use application/json");
    rc = gr_json_parse(req->arena, req->body.ptr, req->body.len, out, &resp->errs);
    if (rc < 0)
        return gr_resp_problem(req, resp, rc, NULL,
                               rc == GR_EINVAL ? "the body is not valid JSON"
                                               : "the body has invalid values");
    if (pay_has_card_number(*out))
        return card_data(req, resp);
    if (gr_json_only(&rd, *out, "", allowed) < 0)
        return GR_EVALID;
    return 0;
}

/* A step that parks the payment in processing while the provider is called. */
struct step {
    const char *id;
    const char *const *from; /* statuses the step starts from, NULL-terminated */
    const char *verb;        /* "capture", "cancel", "confirm" */
    const char *reason;      /* a cancel's cancellation_reason (kept while in flight) */
    long long amount;        /* a capture's amount (kept while in flight) */
    const char *prev;        /* the status it started from (out) */
    bool own_ok;             /* the owner may do it without payments:write */
    bool invalid;            /* out: not allowed from the current status */
    const char *cur;         /* out: that status */
};

static int step_begin_tx(struct gr_req *req, void *arg)
{
    struct step *s = arg;
    struct pay_row p;
    char now[GR_TIME_STR_LEN];
    long long n = 0;
    const char *cur;
    int rc = pay_load(req->db, req->arena, s->id, &p);

    if (rc < 0)
        return rc;
    if (!gr_req_can(req, "payments:write")) {
        bool own = strcmp(gr_db_text(p.rows, 0, PC_USER), caller_of(req)) == 0;

        if (!own)
            return GR_ENOTFOUND;
        if (!s->own_ok)
            return GR_EFORBIDDEN;
    }
    cur = gr_db_text(p.rows, 0, PC_STATUS);
    s->invalid = true;
    for (size_t i = 0; s->from[i]; i++) {
        if (strcmp(s->from[i], cur) == 0)
            s->invalid = false;
    }
    s->cur = cur;
    if (s->invalid)
        return 0;
    s->prev = cur;
    pay_now(now);
    rc = gr_db_exec(req->db,
                    "UPDATE payments SET status = 'processing', version = version + 1,"
                    " updated_at = $3, pending_op = $4, pending_from = $2, pending_reason = $5,"
                    " pending_amount = $6 WHERE id = $1 AND status = $2",
                    (struct gr_db_val[]){ GR_DB_TEXT(s->id), GR_DB_TEXT(cur), GR_DB_TEXT(now),
                                          GR_DB_TEXT(s->verb), GR_DB_TEXT(s->reason),
                                          s->amount > 0 ? GR_DB_INT(s->amount) : GR_DB_NULL },
                    6, &n);
    if (rc < 0)
        return rc;
    if (n != 1)
        return GR_EBUSY;
    return pay_log(req->db, s->id, NULL, gr_arena_printf(req->arena, "%s_requested", s->verb), cur,
                   "processing", gr_db_int(p.rows, 0, PC_AMOUNT),
                   gr_db_text(p.rows, 0, PC_CURRENCY), NULL, "api", NULL);
}

/* The provider refused or could not be reached: back to where the step started. */
static int step_revert_tx(struct gr_req *req, void *arg)
{
    struct step *s = arg;
    char now[GR_TIME_STR_LEN];
    long long n = 0;
    struct pay_row p;
    int rc;

    pay_now(now);
    rc = gr_db_exec(req->db,
                    "UPDATE payments SET status = $2, version = version + 1, updated_at = $3"
                    " WHERE id = $1 AND status = 'processing'",
                    (struct gr_db_val[]){ GR_DB_TEXT(s->id), GR_DB_TEXT(s->prev), GR_DB_TEXT(now) },
                    3, &n);
    if (rc < 0 || n == 0)
        return rc;
    rc = pay_load(req->db, req->arena, s->id, &p);
    if (rc < 0)
        return rc;
    return pay_log(req->db, s->id, NULL, gr_arena_printf(req->arena, "%s_failed", s->verb),
                   "processing", s->prev, 0, gr_db_text(p.rows, 0, PC_CURRENCY), NULL, "api", NULL);
}

static int step_begin(struct gr_req *req, struct gr_resp *resp, struct step *s)
{
    int rc = gr_req_tx(req, step_begin_tx, s);

    if (rc < 0)
        return rc;
    if (s->invalid)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "invalid_transition",
                               "cannot %s a payment that is %s", s->verb, s->cur);
    return 0;
}

/* Applies the provider's answer @rc/@pi to the step, and answers with the payment. */
static int step_end(struct gr_req *req, struct gr_resp *resp, struct step *s, int rc,
                    const struct pay_intent *pi, const char *reason)
{
    struct apply ap = { .id = s->id };

    if (rc < 0) {
        int rc2 = gr_req_tx(req, step_revert_tx, s);

        if (rc2 < 0)
            return rc2;
        if (rc == GR_ECONFLICT)
            return gr_resp_problem(req, resp, GR_ECONFLICT, "invalid_transition",
                                   "the provider refused to %s this payment", s->verb);
        return gr_resp_problem(req, resp, GR_EUNAVAIL, "provider_unavailable",
                               "the payment provider cannot be reached");
    }
    ap.status = pay_status_of(pi);
    ap.ref = pi->id[0] ? pi->id : NULL;
    ap.failure = strcmp(ap.status, "cancelled") == 0 ? reason
                 : pi->failure_code[0]               ? pi->failure_code
                                                     : NULL;
    ap.captured = pi->amount_received;
    ap.resp = resp;
    ap.reply_status = 200;
    return gr_req_tx_read_committed(req, apply_tx, &ap);
}

static const char *ref_of(struct gr_req *req, const char *id)
{
    struct pay_row p;

    if (pay_load(req->db, req->arena, id, &p) < 0)
        return NULL;
    return gr_db_text(p.rows, 0, PC_REF);
}

int payments_capture(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const fields[] = { "amount_to_capture", NULL };
    static const char *const from[] = { "requires_capture", NULL };
    struct gr_json_rd rd = { req->arena, &resp->errs };
    struct step s = { .id = gr_req_param(req, "id"), .from = from, .verb = "capture" };
    struct pay_app *app = app_of(req);
    struct pay_intent pi;
    struct pay_row p;
    long long amount = 0;
    json_t *body;
    int rc = optional_body(req, resp, fields, &body);

    if (rc < 0)
        return rc;
    (void)gr_json_int(&rd, body, "", "amount_to_capture", GR_JSON_OPTIONAL, 1, GR_MONEY_MAX_AMOUNT,
                      &amount, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = pay_load(req->db, req->arena, s.id, &p);
    if (rc < 0)
        return rc;
    if (amount > gr_db_int(p.rows, 0, PC_AMOUNT)) {
        gr_resp_field_error(req, resp, "/amount_to_capture", "exceeds the authorised amount");
        return GR_EVALID;
    }
    if (amount == 0)
        amount = gr_db_int(p.rows, 0, PC_AMOUNT);
    s.amount = amount;
    rc = step_begin(req, resp, &s);
    if (rc < 0)
        return rc;
    pay_test_kill(app, "capture_unsent");
    rc = app->provider.capture(&app->provider, ref_of(req, s.id), amount,
                               gr_arena_printf(req->arena, "capture-%s", s.id), &pi);
    pay_test_kill(app, "capture");
    return step_end(req, resp, &s, rc, &pi, NULL);
}

int payments_cancel(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const fields[] = { "cancellation_reason", NULL };
    static const char *const from[] = { "requires_payment_method", "requires_action",
                                        "requires_capture", NULL };
    struct gr_json_rd rd = { req->arena, &resp->errs };
    struct step s = {
        .id = gr_req_param(req, "id"), .from = from, .verb = "cancel", .own_ok = true
    };
    struct pay_app *app = app_of(req);
    const char *reason = NULL, *ref;
    struct pay_intent pi;
    json_t *body;
    int rc = optional_body(req, resp, fields, &body);

    if (rc < 0)
        return rc;
    (void)gr_json_str(&rd, body, "", "cancellation_reason", GR_JSON_OPTIONAL, 1, PAY_REASON_MAX,
                      &reason, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    s.reason = reason ? reason : "requested_by_customer";
    rc = step_begin(req, resp, &s);
    if (rc < 0)
        return rc;
    ref = ref_of(req, s.id);
    if (ref) {
        rc = app->provider.cancel(&app->provider, ref,
                                  gr_arena_printf(req->arena, "cancel-%s", s.id), &pi);
        pay_test_kill(app, "cancel");
    } else {
        memset(&pi, 0, sizeof(pi));
        snprintf(pi.status, sizeof(pi.status), "canceled");
        rc = 0;
    }
    return step_end(req, resp, &s, rc, &pi, s.reason);
}

int payments_confirm(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const from[] = { "requires_action", NULL };
    struct step s = {
        .id = gr_req_param(req, "id"), .from = from, .verb = "confirm", .own_ok = true
    };
    struct pay_app *app = app_of(req);
    struct pay_intent pi;
    struct pay_row p;
    json_t *body;
    int rc = optional_body(req, resp, NULL, &body);

    if (rc < 0)
        return rc;
    rc = step_begin(req, resp, &s);
    if (rc < 0)
        return rc;
    rc = pay_load(req->db, req->arena, s.id, &p);
    if (rc < 0)
        return rc;
    rc = app->provider.confirm(&app->provider, gr_db_text(p.rows, 0, PC_REF),
                               gr_arena_printf(req->arena, "confirm-%s", s.id),
                               strcmp(gr_db_text(p.rows, 0, PC_CAPMETHOD), "manual") == 0,
                               gr_db_int(p.rows, 0, PC_AMOUNT), &pi);
    pay_test_kill(app, "confirm");
    return step_end(req, resp, &s, rc, &pi, NULL);
}

/* ---- refunds ------------------------------------------------------------------------------ */

struct refund {
    const char *pid, *reason, *caller, *key, *currency;
    long long want;   /* asked for; 0 = the remainder */
    long long amount; /* out: reserved */
    char id[GR_ID_LEN];
    const char *problem; /* out: "invalid_transition", "amount_exceeds_refundable" */
    const char *cur;
    long long remaining;
};

static int refund_tx(struct gr_req *req, void *arg)
{
    struct refund *f = arg;
    struct pay_row p;
    char now[GR_TIME_STR_LEN];
    long long n = 0, amount;
    int rc = pay_load(req->db, req->arena, f->pid, &p);

    f->problem = NULL;
    if (rc < 0)
        return rc;
    f->cur = gr_db_text(p.rows, 0, PC_STATUS);
    if (strcmp(f->cur, "succeeded") != 0) {
        f->problem = "invalid_transition";
        return 0;
    }
    f->remaining = gr_db_int(p.rows, 0, PC_CAPTURED) - gr_db_int(p.rows, 0, PC_REFUNDED);
    amount = f->want ? f->want : f->remaining;
    if (amount <= 0 || amount > f->remaining) {
        f->problem = "amount_exceeds_refundable";
        return 0;
    }
    f->currency = gr_db_text(p.rows, 0, PC_CURRENCY);
    pay_now(now);
    rc = gr_db_exec(req->db,
                    "UPDATE payments SET amount_refunded = amount_refunded + $2,"
                    " version = version + 1, updated_at = $3 WHERE id = $1"
                    " AND status = 'succeeded' AND amount_refunded + $2 <= amount_captured",
                    (struct gr_db_val[]){ GR_DB_TEXT(f->pid), GR_DB_INT(amount), GR_DB_TEXT(now) },
                    3, &n);
    if (rc < 0)
        return rc;
    if (n != 1)
        return GR_EBUSY;
    f->amount = amount;
    rc = gr_db_exec(req->db,
                    "INSERT INTO refunds (id, payment_id, amount, currency, reason, status, origin,"
                    " idem_caller, idem_key, created_at, updated_at)"
                    " VALUES ($1, $2, $3, $4, $5, 'pending', 'api', $6, $7, $8, $8)",
                    (struct gr_db_val[]){ GR_DB_TEXT(f->id), GR_DB_TEXT(f->pid), GR_DB_INT(amount),
                                          GR_DB_TEXT(f->currency), GR_DB_TEXT(f->reason),
                                          GR_DB_TEXT(f->caller), GR_DB_TEXT(f->key),
                                          GR_DB_TEXT(now) },
                    8, NULL);
    if (rc < 0)
        return rc;
    return pay_log(req->db, f->pid, f->id, "refund_requested", NULL, NULL, amount, f->currency,
                   NULL, "api", NULL);
}

struct finish {
    const char *rid, *ref, *failure;
    bool ok;
};

static int finish_tx(struct gr_req *req, void *arg)
{
    struct finish *fi = arg;

    return pay_refund_finish(req->db, req->arena, fi->rid, fi->ok, fi->ref, fi->failure, "api",
                             gr_req_header(req, "traceparent"));
}

static int reply_refund(struct gr_req *req, struct gr_resp *resp, const char *rid)
{
    struct gr_db_rows *r;
    int rc = gr_db_query(req->db, req->arena, "SELECT " REFUND_COLS " FROM refunds WHERE id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(rid) }, 1, &r);

    if (rc < 0)
        return rc;
    if (gr_db_nrows(r) != 1)
        return GR_ENOTFOUND;
    gr_resp_json(resp, 201, pay_refund_json(r, 0));
    return 0;
}

/* Calls the provider for the pending refund @rid of payment @pid and applies the answer. */
static int drive_refund(struct gr_req *req, struct gr_resp *resp, const char *pid, const char *rid,
                        long long amount)
{
    struct pay_app *app = app_of(req);
    struct pay_refund_res res;
    struct finish fi = { .rid = rid };
    int rc;

    pay_test_kill(app, "refund_unsent");
    rc = app->provider.refund(&app->provider, ref_of(req, pid), amount, rid, &res);
    pay_test_kill(app, "refund");
    if (rc == GR_EUNAVAIL)
        return gr_resp_problem(req, resp, GR_EUNAVAIL, "provider_unavailable",
                               "the payment provider cannot be reached; retry with the same"
                               " Idempotency-Key");
    fi.ok = rc == 0 && strcmp(res.status, "failed") != 0;
    fi.ref = rc == 0 ? res.id : NULL;
    fi.failure = rc == 0 && res.failure_code[0] ? res.failure_code : "provider_refused";
    rc = gr_req_tx(req, finish_tx, &fi);
    if (rc < 0)
        return rc;
    return reply_refund(req, resp, rid);
}

int payments_refund(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const fields[] = { "amount", "reason", NULL };
    struct gr_json_rd rd = { req->arena, &resp->errs };
    struct refund f;
    struct pay_row p;
    struct gr_db_rows *r;
    int rc;

    memset(&f, 0, sizeof(f));
    if (pay_has_card_number(req->json))
        return card_data(req, resp);
    (void)gr_json_only(&rd, req->json, "", fields);
    (void)gr_json_int(&rd, req->json, "", "amount", GR_JSON_OPTIONAL, 1, GR_MONEY_MAX_AMOUNT,
                      &f.want, NULL);
    (void)gr_json_str(&rd, req->json, "", "reason", GR_JSON_REQUIRED, 1, PAY_REASON_MAX, &f.reason,
                      NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    f.pid = gr_req_param(req, "id");
    rc = pay_load(req->db, req->arena, f.pid, &p);
    if (rc < 0)
        return rc;
    f.caller = caller_of(req);
    f.key = gr_req_header(req, "Idempotency-Key");
    if (!f.key)
        return GR_EINVAL;
    rc = gr_db_query(
        req->db, req->arena,
        "SELECT id, status, amount FROM refunds WHERE idem_caller = $1"
        " AND idem_key = $2 AND payment_id = $3",
        (struct gr_db_val[]){ GR_DB_TEXT(f.caller), GR_DB_TEXT(f.key), GR_DB_TEXT(f.pid) }, 3, &r);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(r) == 1) {
        if (strcmp(gr_db_text(r, 0, 1), "pending") == 0)
            return drive_refund(req, resp, f.pid, gr_db_text(r, 0, 0), gr_db_int(r, 0, 2));
        return reply_refund(req, resp, gr_db_text(r, 0, 0));
    }
    gr_id_new(f.id);
    rc = gr_req_tx(req, refund_tx, &f);
    if (rc == GR_ECONFLICT)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "idempotency_in_flight",
                               "this Idempotency-Key is already used for another payment");
    if (rc < 0)
        return rc;
    if (f.problem && strcmp(f.problem, "invalid_transition") == 0)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "invalid_transition",
                               "only a succeeded payment can be refunded; this one is %s", f.cur);
    if (f.problem) {
        gr_resp_field_error(req, resp, "/amount", "at most %lld can be refunded", f.remaining);
        return gr_resp_problem(req, resp, GR_EVALID, "amount_exceeds_refundable",
                               "the refund exceeds what is left to refund (%lld)", f.remaining);
    }
    return drive_refund(req, resp, f.pid, f.id, f.amount);
}

int refunds_get(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");
    struct gr_db_rows *r;
    struct pay_row p;
    int rc;

    if (!gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    rc = gr_db_query(req->db, req->arena, "SELECT " REFUND_COLS " FROM refunds WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &r);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(r) != 1)
        return GR_ENOTFOUND;
    rc = load_visible(req, gr_db_text(r, 0, 1), &p);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, pay_refund_json(r, 0));
    return 0;
}
