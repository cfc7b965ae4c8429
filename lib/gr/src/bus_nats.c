/*
 * bus_nats.c - the `nats` backend of gr bus: NATS JetStream through libnats (bus_int.h).
 *
 * Events live in the file-backed stream GRAVITY (subjects gravity.>), one subject per event
 * type (gravity.<type>), with the event id as Nats-Msg-Id so the stream's duplicate window
 * (2 min) stores an event published twice once. The relay's batches are published
 * asynchronously and awaited together; the count returned is the run of leading events whose
 * publish acknowledgment arrived.
 *
 * Each service has one durable pull consumer named after it (explicit acks, AckWait, deliver
 * all). nats-server 2.9 allows one FilterSubject per consumer, so the filter is the narrowest
 * subject that covers all of the service's subscriptions (gravity.product.created, or
 * gravity.product.> for "product.*" or for product.created + product.updated, or gravity.>)
 * and deliveries outside the subscriptions are acknowledged here without being returned. The
 * consumer's filter stays put while the subscriptions do, and a changed filter is applied in
 * place or, if the server refuses, by recreating the consumer at its acknowledged position.
 *
 * Dead letters are this backend's job rather than the server's MaxDeliver: the server only
 * drops a message that exhausted MaxDeliver (and only reports an advisory), which would lose
 * the event when its last attempt timed out or the process died in the handler. So the
 * consumer redelivers without limit, and a delivery whose attempt reaches max_deliver and is
 * naked, or that arrives with an attempt beyond max_deliver, is first copied to the stream
 * GRAVITY_DEAD (gravity_dead.<durable>.<type>, headers Gravity-Stream-Seq, Gravity-Attempts,
 * Gravity-Reason) and then terminated. Until the copy is stored the message stays in GRAVITY.
 *
 * Threads: the relay thread publishes on its own JetStream context, the consumer thread
 * subscribes, pulls, acks and dead-letters on another; the connection is shared (libnats
 * connections are thread-safe). The connection reconnects forever (100 ms apart); while it is
 * not connected every call fails at once with GR_EUNAVAIL.
 */
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <nats/nats.h>

#include "bus_int.h"
#include "gr/arena.h"
#include "gr/log.h"
#include "gr/status.h"

#define STREAM          "GRAVITY"
#define STREAM_SUBJECTS "gravity.>"
#define DEAD_STREAM     "GRAVITY_DEAD"
#define DEAD_SUBJECTS   "gravity_dead.>"
#define DUP_WINDOW_NS   (2 * 60 * INT64_C(1000000000))
#define DURABLE_MAX     64
#define FILTER_MAX      (8 + GR_EVENT_TYPE_MAX + 2)
#define OP_TIMEOUT_MS   5000 /* stream and consumer management, dead-letter publishes */
#define MAX_PENDING     8192 /* asynchronous publishes in flight */
#define NS_PER_MS       INT64_C(1000000)

/* One relay batch in flight: the messages (owned by us once acknowledged) and their fate. */
struct pub_batch {
    natsMsg **msgs;
    unsigned char *state; /* PUB_* */
    size_t n, hint;       /* acknowledgments come back in order: start looking at @hint */
    size_t acked;         /* callbacks seen */
    natsStatus err;       /* first failure reported by the server or the library */
    int jerr;
};

enum { PUB_PENDING = 0, PUB_STORED, PUB_FAILED };

struct nats_be {
    struct gr_bus_backend base;
    natsConnection *nc;
    jsCtx *js_pub; /* relay thread */
    jsCtx *js_sub; /* consumer thread */

    pthread_mutex_t streams_mu;
    atomic_bool streams_ok;

    pthread_mutex_t pub_mu; /* guards batch against the acknowledgment callback */
    pthread_cond_t pub_cv;  /* signalled by each acknowledgment of the batch */
    struct pub_batch *batch;

    /* Consumer thread only. */
    natsSubscription *sub;
    bool have_sub_params;
    char durable[DURABLE_MAX + 1];
    char filter[FILTER_MAX];
    char **types; /* the subscriptions' types, for matching deliveries */
    size_t ntypes;
    int ack_wait_s, max_deliver;
};

static int map_status(natsStatus s)
{
    switch (s) {
    case NATS_OK:
        return 0;
    case NATS_MAX_PAYLOAD:
    case NATS_INVALID_SUBJECT:
    case NATS_INVALID_ARG:
        return GR_EINVAL;
    default:
        return GR_EUNAVAIL;
    }
}

static bool connected(const struct nats_be *be)
{
    return natsConnection_Status(be->nc) == NATS_CONN_STATUS_CONNECTED;
}

static void log_nats(const char *msg, natsStatus s, int jerr)
{
    char code[24];

    snprintf(code, sizeof(code), "%d", jerr);
    gr_log_warn(msg, "error", natsStatus_GetText(s), "js_error", jerr ? code : NULL);
}

/* ---- streams ----------------------------------------------------------------------------- */

static int add_stream(jsCtx *js, const char *name, const char *subject, int timeout_ms)
{
    const char *subjects[] = { subject };
    jsStreamConfig sc;
    jsStreamInfo *si = NULL;
    jsOptions jo;
    jsErrCode jerr = 0;
    natsStatus s;

    jsStreamConfig_Init(&sc);
    sc.Name = name;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    sc.Duplicates = DUP_WINDOW_NS;
    jsOptions_Init(&jo);
    jo.Wait = timeout_ms;
    s = js_AddStream(&si, js, &sc, &jo, &jerr);
    jsStreamInfo_Destroy(si);
    /* Another service created it first (or with other limits): use it as it is. */
    if (s != NATS_OK && jerr == JSStreamNameExistErr)
        return 0;
    if (s != NATS_OK) {
        log_nats("nats stream creation failed", s, jerr);
        return map_status(s) == GR_EINVAL ? GR_EUNAVAIL : map_status(s);
    }
    return 0;
}

/* Creates GRAVITY and GRAVITY_DEAD if missing; once per connection lifetime, or again after a
 * publish found no stream. Called from both threads. */
static int ensure_streams(struct nats_be *be, jsCtx *js, int timeout_ms)
{
    int rc = 0;

    if (atomic_load(&be->streams_ok))
        return 0;
    pthread_mutex_lock(&be->streams_mu);
    if (!atomic_load(&be->streams_ok)) {
        rc = add_stream(js, STREAM, STREAM_SUBJECTS, timeout_ms);
        if (rc == 0)
            rc = add_stream(js, DEAD_STREAM, DEAD_SUBJECTS, timeout_ms);
        if (rc == 0)
            atomic_store(&be->streams_ok, true);
    }
    pthread_mutex_unlock(&be->streams_mu);
    return rc;
}

/* ---- publish ----------------------------------------------------------------------------- */

/* A type that is safe as subject tokens: [a-z0-9_] words joined by single dots. */
static bool type_ok(const char *t)
{
    size_t n = t ? strlen(t) : 0, i;

    if (n == 0 || n > GR_EVENT_TYPE_MAX || t[0] == '.' || t[n - 1] == '.')
        return false;
    for (i = 0; i < n; i++) {
        char c = t[i];

        if (c == '.' ? t[i + 1] == '.'
                     : !((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return true;
}

/* Acknowledgment of one asynchronous publish (a libnats thread). The message stays alive in
 * the batch until the batch ends, so message pointers identify batch entries. */
static void on_puback(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    struct nats_be *be = closure;
    struct pub_batch *b;
    size_t i;

    (void)js;
    pthread_mutex_lock(&be->pub_mu);
    b = be->batch;
    if (b) {
        for (i = b->hint; i < b->n && b->msgs[i] != msg; i++)
            ;
        if (i == b->n)
            for (i = 0; i < b->hint && b->msgs[i] != msg; i++)
                ;
        if (i < b->n && b->msgs[i] == msg) {
            b->hint = i + 1;
            b->acked++;
            pthread_cond_signal(&be->pub_cv);
            b->state[i] = pa ? PUB_STORED : PUB_FAILED;
            if (!pa && b->err == NATS_OK) {
                b->err = pae ? pae->Err : NATS_ERR;
                b->jerr = pae ? (int)pae->ErrCode : 0;
                if (b->err == NATS_OK)
                    b->err = NATS_ERR;
            }
            msg = NULL; /* destroyed when the batch ends */
        }
    }
    pthread_mutex_unlock(&be->pub_mu);
    natsMsg_Destroy(msg);
}

static int nats_publish(struct gr_bus_backend *bb, const struct gr_bus_out *ev, size_t n,
                        int timeout_ms)
{
    struct nats_be *be = bb->impl;
    struct pub_batch b = { 0 };
    natsMsgList pending = { 0 };
    natsStatus s = NATS_OK, sc;
    jsPubOptions po;
    char subj[FILTER_MAX];
    size_t i, sent = 0, stored = 0, taken = 0;
    int rc = 0;

    if (n == 0)
        return 0;
    if (!connected(be))
        return GR_EUNAVAIL;
    rc = ensure_streams(be, be->js_pub, timeout_ms);
    if (rc < 0)
        return rc;

    b.msgs = gr_xcalloc(n, sizeof(*b.msgs));
    b.state = gr_xcalloc(n, 1);
    b.n = n;
    pthread_mutex_lock(&be->pub_mu);
    be->batch = &b;
    pthread_mutex_unlock(&be->pub_mu);

    for (i = 0; i < n; i++) {
        natsMsg *m = NULL;

        if (!type_ok(ev[i].type) || !ev[i].id || !*ev[i].id || ev[i].json_len > INT_MAX) {
            s = NATS_INVALID_ARG;
            break;
        }
        snprintf(subj, sizeof(subj), "gravity.%s", ev[i].type);
        s = natsMsg_Create(&m, subj, NULL, ev[i].json, (int)ev[i].json_len);
        if (s != NATS_OK)
            break;
        jsPubOptions_Init(&po);
        po.MsgId = ev[i].id;
        po.MaxWait = timeout_ms;
        pthread_mutex_lock(&be->pub_mu);
        b.msgs[i] = m; /* before the callback can look for it */
        pthread_mutex_unlock(&be->pub_mu);
        s = js_PublishMsgAsync(be->js_pub, &m, &po);
        if (s != NATS_OK) {
            pthread_mutex_lock(&be->pub_mu);
            b.msgs[i] = NULL;
            pthread_mutex_unlock(&be->pub_mu);
            natsMsg_Destroy(m);
            break;
        }
        sent++;
    }

    jsPubOptions_Init(&po);
    po.MaxWait = timeout_ms > 0 ? timeout_ms : 1;
    sc = sent ? js_PublishAsyncComplete(be->js_pub, &po) : NATS_OK;
    if (sc != NATS_OK) {
        /* Take back what is still unacknowledged: it counts as not stored (a later retry is
         * deduplicated if the server did store it). */
        if (js_PublishAsyncGetPendingList(&pending, be->js_pub) == NATS_OK) {
            pthread_mutex_lock(&be->pub_mu);
            for (i = 0; i < (size_t)pending.Count; i++) {
                size_t j;

                for (j = 0; j < sent; j++)
                    if (b.msgs[j] == pending.Msgs[i] && b.state[j] == PUB_PENDING) {
                        b.msgs[j] = NULL; /* natsMsgList_Destroy frees it */
                        taken++;
                    }
            }
            pthread_mutex_unlock(&be->pub_mu);
            natsMsgList_Destroy(&pending);
        }
    }

    /* js_PublishAsyncComplete returns once nothing is pending, which can be before the last
     * acknowledgment callbacks ran: wait for them (they are on their way). */
    pthread_mutex_lock(&be->pub_mu);
    if (b.acked < sent - taken) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1 + timeout_ms / 1000;
        while (b.acked < sent - taken)
            if (pthread_cond_timedwait(&be->pub_cv, &be->pub_mu, &ts) != 0)
                break;
    }
    be->batch = NULL;
    pthread_mutex_unlock(&be->pub_mu);
    /* Acknowledged messages were left to us; a late callback now destroys its own. */
    for (i = 0; i < sent; i++)
        if (b.state[i] != PUB_PENDING)
            natsMsg_Destroy(b.msgs[i]);
    while (stored < sent && b.state[stored] == PUB_STORED)
        stored++;

    if (stored < n) {
        natsStatus why = b.err != NATS_OK ? b.err : s != NATS_OK ? s : sc;

        log_nats("nats publish failed", why, b.jerr);
        if (why == NATS_NO_RESPONDERS)
            atomic_store(&be->streams_ok, false); /* the stream went away: create it again */
        if (stored == 0)
            rc = why == NATS_OK ? GR_EUNAVAIL : map_status(why);
    }
    gr_free(b.msgs);
    gr_free(b.state);
    return stored > 0 ? (int)stored : rc;
}

/* ---- subscribe --------------------------------------------------------------------------- */

static void clear_sub_params(struct nats_be *be)
{
    size_t i;

    for (i = 0; i < be->ntypes; i++)
        gr_free(be->types[i]);
    gr_free(be->types);
    be->types = NULL;
    be->ntypes = 0;
    be->have_sub_params = false;
}

/* The fixed part of a subscription type, in whole tokens: all of "a.b", "a.b" of "a.b.*",
 * "a" of "a.bc*", nothing of "a*". Returns its length; @exact is false for a prefix. */
static size_t fixed_part(const char *type, bool *exact)
{
    size_t n = strlen(type);

    *exact = n == 0 || type[n - 1] != '*';
    if (*exact)
        return n;
    while (n > 0 && type[n - 1] != '.')
        n--;
    return n > 0 ? n - 1 : 0;
}

/* Length of the longest common prefix of @a and @b that ends on a token boundary of both. */
static size_t common_tokens(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t k = 0, best = 0;

    while (k < alen && k < blen && a[k] == b[k]) {
        k++;
        if ((k == alen || a[k] == '.') && (k == blen || b[k] == '.'))
            best = k;
    }
    return best;
}

/* The narrowest subject that covers every subscription (see the file comment). */
static void compute_filter(const struct nats_be *be, char *out, size_t outlen)
{
    const char *first = be->types[0];
    bool exact, all_same = true;
    size_t common = fixed_part(first, &exact), i;

    for (i = 0; i < be->ntypes; i++) {
        size_t len = fixed_part(be->types[i], &exact);

        common = common_tokens(first, common, be->types[i], len);
        if (!exact || strcmp(be->types[i], first) != 0)
            all_same = false;
    }
    /* prefix.> does not match prefix itself: an exact type equal to the prefix needs the
     * prefix one token shorter. */
    for (i = 0; i < be->ntypes; i++) {
        if (fixed_part(be->types[i], &exact) == common && exact) {
            while (common > 0 && first[common - 1] != '.')
                common--;
            common = common > 0 ? common - 1 : 0;
            break;
        }
    }
    if (all_same)
        snprintf(out, outlen, "gravity.%s", first);
    else if (common == 0)
        snprintf(out, outlen, "gravity.>");
    else
        snprintf(out, outlen, "gravity.%.*s.>", (int)common, first);
}

static bool type_subscribed(const struct nats_be *be, const char *type)
{
    size_t i;

    for (i = 0; i < be->ntypes; i++) {
        const char *t = be->types[i];
        size_t n = strlen(t);

        if (n > 0 && t[n - 1] == '*' ? strncmp(type, t, n - 1) == 0 : strcmp(type, t) == 0)
            return true;
    }
    return false;
}

static void consumer_config(const struct nats_be *be, jsConsumerConfig *cc)
{
    jsConsumerConfig_Init(cc);
    cc->Durable = be->durable;
    cc->AckPolicy = js_AckExplicit;
    cc->AckWait = (int64_t)be->ack_wait_s * 1000 * NS_PER_MS;
    cc->MaxDeliver = -1; /* dead letters are ours (file comment) */
    cc->FilterSubject = be->filter;
    cc->DeliverPolicy = js_DeliverAll;
}

static bool is_not_found(natsStatus s, jsErrCode jerr)
{
    return s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr;
}

/* Makes the durable consumer exist with our configuration. */
static int ensure_consumer(struct nats_be *be, int timeout_ms)
{
    jsConsumerConfig cc;
    jsConsumerInfo *ci = NULL;
    jsOptions jo;
    jsErrCode jerr = 0;
    natsStatus s;
    int tries;

    jsOptions_Init(&jo);
    jo.Wait = timeout_ms;
    consumer_config(be, &cc);
    for (tries = 0; tries < 2; tries++) {
        s = js_GetConsumerInfo(&ci, be->js_sub, STREAM, be->durable, &jo, &jerr);
        if (s == NATS_OK)
            break;
        if (!is_not_found(s, jerr))
            goto fail;
        jerr = 0;
        s = js_AddConsumer(&ci, be->js_sub, STREAM, &cc, &jo, &jerr);
        jsConsumerInfo_Destroy(ci);
        ci = NULL;
        if (s == NATS_OK)
            return 0;
        if (jerr != JSConsumerNameExistErr) /* else another instance was faster: bind */
            goto fail;
    }
    if (s != NATS_OK)
        goto fail;

    if (ci->Config->AckWait != cc.AckWait || ci->Config->MaxDeliver != cc.MaxDeliver ||
        !ci->Config->FilterSubject || strcmp(ci->Config->FilterSubject, be->filter) != 0 ||
        ci->Config->AckPolicy != js_AckExplicit) {
        jsConsumerInfo *ui = NULL;
        uint64_t floor = ci->AckFloor.Stream;

        jerr = 0;
        s = js_UpdateConsumer(&ui, be->js_sub, STREAM, &cc, &jo, &jerr);
        jsConsumerInfo_Destroy(ui);
        if (s != NATS_OK) {
            /* The server does not change this in place (a filter on 2.9): recreate the
             * consumer where it was; unacknowledged events come again and the inbox skips
             * those already applied. */
            gr_log_warn("nats consumer recreated with its new configuration", "consumer",
                        be->durable);
            jerr = 0;
            s = js_DeleteConsumer(be->js_sub, STREAM, be->durable, &jo, &jerr);
            if (s != NATS_OK && !is_not_found(s, jerr))
                goto fail;
            if (floor > 0) {
                cc.DeliverPolicy = js_DeliverByStartSequence;
                cc.OptStartSeq = floor + 1;
            }
            ui = NULL;
            jerr = 0;
            s = js_AddConsumer(&ui, be->js_sub, STREAM, &cc, &jo, &jerr);
            jsConsumerInfo_Destroy(ui);
            if (s != NATS_OK)
                goto fail;
        }
    }
    jsConsumerInfo_Destroy(ci);
    return 0;
fail:
    jsConsumerInfo_Destroy(ci);
    log_nats("nats consumer setup failed", s, jerr);
    return map_status(s) == GR_EINVAL ? GR_EUNAVAIL : map_status(s);
}

static int bind_sub(struct nats_be *be, int timeout_ms)
{
    jsSubOptions so;
    jsOptions jo;
    jsErrCode jerr = 0;
    natsStatus s;
    int rc;

    if (be->sub) {
        natsSubscription_Destroy(be->sub);
        be->sub = NULL;
    }
    if (!connected(be))
        return GR_EUNAVAIL;
    rc = ensure_streams(be, be->js_sub, timeout_ms);
    if (rc == 0)
        rc = ensure_consumer(be, timeout_ms);
    if (rc < 0)
        return rc;
    jsOptions_Init(&jo);
    jo.Wait = timeout_ms;
    jsSubOptions_Init(&so);
    so.Stream = STREAM;
    so.Consumer = be->durable; /* bind only: the consumer is ours to manage */
    s = js_PullSubscribe(&be->sub, be->js_sub, be->filter, be->durable, &jo, &so, &jerr);
    if (s != NATS_OK) {
        be->sub = NULL;
        log_nats("nats pull subscription failed", s, jerr);
        return map_status(s) == GR_EINVAL ? GR_EUNAVAIL : map_status(s);
    }
    return 0;
}

/*
 * Replay: the durable consumer is recreated to start after @after_seq (JetStream has no
 * rewind of a consumer), with the same configuration, and bound again.
 */
static int nats_replay(struct gr_bus_backend *bb, uint64_t after_seq, int timeout_ms)
{
    struct nats_be *be = bb->impl;
    jsConsumerConfig cc;
    jsConsumerInfo *ci = NULL;
    jsOptions jo;
    jsErrCode jerr = 0;
    natsStatus s;

    if (!be->durable[0])
        return GR_EINTERNAL;
    if (!connected(be))
        return GR_EUNAVAIL;
    if (be->sub) {
        natsSubscription_Destroy(be->sub);
        be->sub = NULL;
    }
    jsOptions_Init(&jo);
    jo.Wait = timeout_ms;
    s = js_DeleteConsumer(be->js_sub, STREAM, be->durable, &jo, &jerr);
    if (s != NATS_OK && !is_not_found(s, jerr)) {
        log_nats("nats replay: cannot remove the consumer", s, jerr);
        return GR_EUNAVAIL;
    }
    consumer_config(be, &cc);
    if (after_seq > 0) {
        cc.DeliverPolicy = js_DeliverByStartSequence;
        cc.OptStartSeq = after_seq + 1;
    }
    jerr = 0;
    s = js_AddConsumer(&ci, be->js_sub, STREAM, &cc, &jo, &jerr);
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) {
        log_nats("nats replay: cannot recreate the consumer", s, jerr);
        return GR_EUNAVAIL;
    }
    return bind_sub(be, timeout_ms);
}

static int nats_subscribe(struct gr_bus_backend *bb, const char *durable, const struct gr_sub *subs,
                          size_t nsubs, const struct gr_sub_opts *opts, int timeout_ms)
{
    struct nats_be *be = bb->impl;
    size_t i, n;

    if (!durable || !*durable || nsubs == 0)
        return GR_EINVAL;
    clear_sub_params(be);
    n = strlen(durable);
    if (n > DURABLE_MAX)
        n = DURABLE_MAX;
    for (i = 0; i < n; i++) {
        char c = durable[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_';

        be->durable[i] = ok ? c : '_';
    }
    be->durable[n] = '\0';
    be->types = gr_xcalloc(nsubs, sizeof(*be->types));
    for (i = 0; i < nsubs; i++) {
        const char *t = subs[i].type;
        size_t tl = t ? strlen(t) : 0;
        bool ok;

        /* "a.b", or a prefix "a.b.*" / "a.b*" whose fixed part is a type or its start. */
        if (tl > 0 && t[tl - 1] == '*') {
            char fixed[GR_EVENT_TYPE_MAX + 1];

            ok = tl - 1 <= GR_EVENT_TYPE_MAX;
            if (ok && tl > 1) {
                memcpy(fixed, t, tl - 1);
                fixed[tl - 1] = '\0';
                if (fixed[tl - 2] == '.')
                    fixed[tl - 2] = '\0';
                ok = fixed[0] == '\0' || type_ok(fixed);
            }
        } else {
            ok = type_ok(t);
        }
        if (!ok) {
            gr_log_warn("nats subscription type invalid", "type", t ? t : "");
            be->ntypes = i;
            clear_sub_params(be);
            return GR_EINVAL;
        }
        be->types[i] = gr_xstrdup(t);
    }
    be->ntypes = nsubs;
    compute_filter(be, be->filter, sizeof(be->filter));
    be->ack_wait_s = opts && opts->ack_wait_s > 0 ? opts->ack_wait_s : 30;
    be->max_deliver = opts && opts->max_deliver > 0 ? opts->max_deliver : 5;
    be->have_sub_params = true;
    /* Without the broker now, pull binds later. */
    return bind_sub(be, timeout_ms);
}

/* ---- pull, ack, nak, dead letters -------------------------------------------------------- */

/* Copies @m to GRAVITY_DEAD, then terminates it in GRAVITY. On failure @m stays unacked. */
static int dead_letter(struct nats_be *be, natsMsg *m, uint64_t seq, uint64_t attempts,
                       const char *reason)
{
    const char *osubj = natsMsg_GetSubject(m);
    const char *type = strncmp(osubj, "gravity.", 8) == 0 ? osubj + 8 : osubj;
    char subj[16 + DURABLE_MAX + GR_EVENT_SUBJECT_MAX], num[24], id[DURABLE_MAX + 24];
    natsMsg *d = NULL;
    jsPubOptions po;
    jsErrCode jerr = 0;
    natsStatus s;
    int tries;

    snprintf(subj, sizeof(subj), "gravity_dead.%s.%s", be->durable, type);
    s = natsMsg_Create(&d, subj, NULL, natsMsg_GetData(m), natsMsg_GetDataLength(m));
    if (s == NATS_OK) {
        snprintf(num, sizeof(num), "%" PRIu64, seq);
        s = natsMsgHeader_Set(d, "Gravity-Stream-Seq", num);
    }
    if (s == NATS_OK) {
        snprintf(num, sizeof(num), "%" PRIu64, attempts);
        s = natsMsgHeader_Set(d, "Gravity-Attempts", num);
    }
    if (s == NATS_OK)
        s = natsMsgHeader_Set(d, "Gravity-Reason", reason);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(d, "Gravity-Consumer", be->durable);
    for (tries = 0; s == NATS_OK && tries < 2; tries++) {
        jsPubOptions_Init(&po);
        snprintf(id, sizeof(id), "%s.%" PRIu64, be->durable, seq); /* one copy per event */
        po.MsgId = id;
        po.MaxWait = OP_TIMEOUT_MS;
        jerr = 0;
        s = js_PublishMsg(NULL, be->js_sub, d, &po, &jerr);
        if (s != NATS_NO_RESPONDERS || tries > 0)
            break;
        /* GRAVITY_DEAD was deleted behind our back: create it and try once more. */
        atomic_store(&be->streams_ok, false);
        s = ensure_streams(be, be->js_sub, OP_TIMEOUT_MS) == 0 ? NATS_OK : NATS_NO_RESPONDERS;
    }
    natsMsg_Destroy(d);
    if (s != NATS_OK) {
        log_nats("nats dead letter failed", s, jerr);
        return GR_EUNAVAIL;
    }
    snprintf(num, sizeof(num), "%" PRIu64, seq);
    gr_log_warn("event dead-lettered", "consumer", be->durable, "seq", num, "reason", reason);
    s = natsMsg_Term(m, NULL);
    return map_status(s);
}

static int nats_pull(struct gr_bus_backend *bb, struct gr_arena *a, size_t max, int wait_ms,
                     struct gr_bus_in **out)
{
    struct nats_be *be = bb->impl;
    natsMsgList list = { 0 };
    struct gr_bus_in *in;
    jsErrCode jerr = 0;
    natsStatus s;
    int i, n = 0, rc;

    *out = NULL;
    if (!be->have_sub_params)
        return GR_EINVAL;
    if (max == 0)
        return 0;
    if (max > 10000)
        max = 10000;
    if (!connected(be))
        return GR_EUNAVAIL;
    if (!be->sub) {
        rc = bind_sub(be, wait_ms > 0 ? wait_ms : OP_TIMEOUT_MS);
        if (rc < 0)
            return rc;
    }
    s = natsSubscription_Fetch(&list, be->sub, (int)max, wait_ms > 0 ? wait_ms : 1, &jerr);
    if (s == NATS_TIMEOUT)
        return 0;
    if (s != NATS_OK) {
        log_nats("nats fetch failed", s, jerr);
        /* The consumer may be gone (deleted, server state lost): bind again next time. */
        natsSubscription_Destroy(be->sub);
        be->sub = NULL;
        return GR_EUNAVAIL;
    }

    in = gr_arena_calloc(a, (size_t)list.Count * sizeof(*in));
    for (i = 0; i < list.Count; i++) {
        natsMsg *m = list.Msgs[i];
        const char *subj = natsMsg_GetSubject(m);
        const char *type = strncmp(subj, "gravity.", 8) == 0 ? subj + 8 : subj;
        jsMsgMetaData *meta = NULL;
        uint64_t seq, attempt;

        if (natsMsg_GetMetaData(&meta, m) != NATS_OK)
            continue; /* not a JetStream delivery; destroyed with the list */
        seq = meta->Sequence.Stream;
        attempt = meta->NumDelivered;
        jsMsgMetaData_Destroy(meta);

        if (!type_subscribed(be, type)) {
            /* Outside the subscriptions but inside the consumer's filter (file comment). */
            (void)natsMsg_Ack(m, NULL);
            continue;
        }
        if (attempt > (uint64_t)be->max_deliver) {
            /* The last attempt timed out or its dead letter failed: park it now. */
            if (dead_letter(be, m, seq, attempt, "max_deliver") < 0)
                (void)natsMsg_NakWithDelay(m, 1000, NULL);
            continue;
        }
        if (gr_bus_parse_event(a, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &in[n].ev) <
            0) {
            char num[24];

            snprintf(num, sizeof(num), "%" PRIu64, seq);
            gr_log_warn("nats delivery is not a cloudevent", "seq", num, "subject", subj);
            if (dead_letter(be, m, seq, attempt, "invalid") < 0)
                (void)natsMsg_Term(m, NULL);
            continue;
        }
        in[n].ev.seq = seq;
        in[n].ev.attempt = attempt > UINT_MAX ? UINT_MAX : (unsigned)attempt;
        in[n].token = m;
        list.Msgs[i] = NULL; /* ours until release */
        n++;
    }
    natsMsgList_Destroy(&list);
    *out = n > 0 ? in : NULL;
    return n;
}

static int nats_ack(struct gr_bus_backend *bb, struct gr_bus_in *in)
{
    natsStatus s;

    (void)bb;
    if (!in->token)
        return GR_EINVAL;
    s = natsMsg_Ack(in->token, NULL);
    if (s != NATS_OK)
        log_nats("nats ack failed", s, 0);
    return map_status(s);
}

static int nats_nak(struct gr_bus_backend *bb, struct gr_bus_in *in, int delay_ms)
{
    struct nats_be *be = bb->impl;
    natsStatus s;

    if (!in->token)
        return GR_EINVAL;
    if (in->ev.attempt >= (unsigned)be->max_deliver &&
        dead_letter(be, in->token, in->ev.seq, in->ev.attempt, "max_deliver") == 0)
        return 0;
    /* Also after a failed dead letter: the next delivery, beyond max_deliver, retries it. */
    s = natsMsg_NakWithDelay(in->token, delay_ms > 0 ? delay_ms : 0, NULL);
    if (s != NATS_OK)
        log_nats("nats nak failed", s, 0);
    return map_status(s);
}

static void nats_release(struct gr_bus_backend *bb, struct gr_bus_in *in)
{
    (void)bb;
    natsMsg_Destroy(in->token);
    in->token = NULL;
}

static int nats_ping(struct gr_bus_backend *bb, int timeout_ms)
{
    struct nats_be *be = bb->impl;

    if (!connected(be))
        return GR_EUNAVAIL;
    if (natsConnection_FlushTimeout(be->nc, timeout_ms > 0 ? timeout_ms : 1) != NATS_OK)
        return GR_EUNAVAIL;
    return 0;
}

static void nats_close(struct gr_bus_backend *bb)
{
    struct nats_be *be;

    if (!bb)
        return;
    be = bb->impl;
    if (be->js_pub) {
        /* Acknowledgments of a timed-out batch may still be on their way to on_puback, which
         * uses @be: wait a little for them, then take back the rest so none is delivered. */
        natsMsgList pending = { 0 };
        jsPubOptions po;

        jsPubOptions_Init(&po);
        po.MaxWait = 200;
        if (js_PublishAsyncComplete(be->js_pub, &po) != NATS_OK &&
            js_PublishAsyncGetPendingList(&pending, be->js_pub) == NATS_OK)
            natsMsgList_Destroy(&pending);
    }
    if (be->sub)
        natsSubscription_Destroy(be->sub);
    clear_sub_params(be);
    if (be->nc)
        natsConnection_Close(be->nc);
    jsCtx_Destroy(be->js_pub);
    jsCtx_Destroy(be->js_sub);
    natsConnection_Destroy(be->nc);
    pthread_cond_destroy(&be->pub_cv);
    pthread_mutex_destroy(&be->pub_mu);
    pthread_mutex_destroy(&be->streams_mu);
    gr_free(be);
}

static const struct gr_bus_backend_ops nats_ops = {
    .name = "nats",
    .publish = nats_publish,
    .subscribe = nats_subscribe,
    .pull = nats_pull,
    .ack = nats_ack,
    .nak = nats_nak,
    .replay = nats_replay,
    .release = nats_release,
    .ping = nats_ping,
    .close = nats_close,
};

/* ---- connection -------------------------------------------------------------------------- */

/* Connection callbacks run on a libnats thread, possibly after close: no closure, and the
 * connection object (kept alive by libnats for the callback) tells a close from a loss. */
static void on_disconnected(natsConnection *nc, void *closure)
{
    (void)closure;
    if (!natsConnection_IsClosed(nc))
        gr_log_warn("nats connection lost, reconnecting");
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    (void)closure;
    gr_log_info("nats connection restored");
}

int gr_bus_nats_open(const char *url, struct gr_bus_backend **out, char *err, size_t errlen)
{
    struct nats_be *be;
    natsOptions *o = NULL;
    jsOptions jo;
    natsStatus s;

    *out = NULL;
    if (!url || strncmp(url, "nats://", 7) != 0 || !url[7]) {
        snprintf(err, errlen, "NATS_URL must be nats://host:port");
        return GR_ECONFIG;
    }
    be = gr_xcalloc(1, sizeof(*be));
    be->base.ops = &nats_ops;
    be->base.impl = be;
    pthread_mutex_init(&be->pub_mu, NULL);
    pthread_cond_init(&be->pub_cv, NULL);
    pthread_mutex_init(&be->streams_mu, NULL);

    s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetURL(o, url);
    if (s == NATS_OK)
        s = natsOptions_SetName(o, "gravity");
    if (s == NATS_OK)
        s = natsOptions_SetAllowReconnect(o, true);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(o, 100);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(o, 5000);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(o, 2);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(o, on_disconnected, NULL);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(o, on_reconnected, NULL);
    /* A broker that is down at start-up is retried in the background like a lost one. */
    if (s == NATS_OK)
        s = natsOptions_SetRetryOnFailedConnect(o, true, on_reconnected, NULL);
    if (s != NATS_OK) {
        snprintf(err, errlen, "NATS options: %s", natsStatus_GetText(s));
        goto fail;
    }
    s = natsConnection_Connect(&be->nc, o);
    if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED) {
        snprintf(err, errlen, "NATS connect: %s", natsStatus_GetText(s));
        goto fail;
    }
    jsOptions_Init(&jo);
    jo.Wait = OP_TIMEOUT_MS;
    s = natsConnection_JetStream(&be->js_sub, be->nc, &jo);
    if (s == NATS_OK) {
        jo.PublishAsync.MaxPending = MAX_PENDING;
        jo.PublishAsync.AckHandler = on_puback;
        jo.PublishAsync.AckHandlerClosure = be;
        jo.PublishAsync.StallWait = OP_TIMEOUT_MS;
        s = natsConnection_JetStream(&be->js_pub, be->nc, &jo);
    }
    if (s != NATS_OK) {
        snprintf(err, errlen, "NATS JetStream: %s", natsStatus_GetText(s));
        goto fail;
    }
    natsOptions_Destroy(o);
    *out = &be->base;
    return 0;
fail:
    natsOptions_Destroy(o);
    nats_close(&be->base);
    return s == NATS_ADDRESS_MISSING || s == NATS_INVALID_ARG ? GR_ECONFIG : GR_EUNAVAIL;
}
