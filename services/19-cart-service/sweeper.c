/*
 * sweeper.c - marks carts abandoned (SERVICES §19: 24 h idle with items → abandoned, once).
 *
 * A background thread wakes every CART_SWEEP_INTERVAL_MS and, in one transaction, moves the
 * active carts with lines whose last activity is older than CART_ABANDON_AFTER_S (default
 * 24 h, on the library clock) to `abandoned` and writes one cart.abandoned event each to the
 * outbox. The UPDATE only moves carts that are still active, so each idle period gives one
 * event, also with several instances on one PostgreSQL (the loser of a race fails its
 * serializable transaction and finds nothing left next time). Any write to the cart makes it
 * active again (cart_touch), and a later idle period may abandon it again.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cart.h"
#include "gr/bus.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/time.h"

#define SWEEP_BATCH 100 /* carts per transaction */

int cart_sweep_once(struct cart_app *app, struct gr_arena *a)
{
    struct gr_db_conn *c = NULL;
    struct gr_db_rows *rows = NULL;
    char cutoff[GR_TIME_STR_LEN], now[GR_TIME_STR_LEN];
    int64_t t = gr_time_now_ms();
    int rc, marked = 0;

    gr_time_format(t, now);
    gr_time_format(t - app->abandon_after_s * 1000, cutoff);
    rc = gr_db_conn(app->db, &c);
    if (rc < 0)
        return rc;
    rc = gr_db_begin(c);
    if (rc < 0)
        return rc;
    rc = gr_db_query(c, a,
                     "SELECT id, user_id, currency, version, last_activity_at,"
                     " (SELECT SUM(quantity) FROM cart_items WHERE cart_items.cart_id = carts.id)"
                     " FROM carts WHERE status = 'active' AND last_activity_at < $1"
                     " AND EXISTS (SELECT 1 FROM cart_items WHERE cart_items.cart_id = carts.id)"
                     " ORDER BY last_activity_at LIMIT CAST($2 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_TEXT(cutoff), GR_DB_INT(SWEEP_BATCH) }, 2, &rows);
    for (size_t i = 0; rc == 0 && i < gr_db_nrows(rows); i++) {
        const char *id = gr_db_text(rows, i, 0), *user = gr_db_text(rows, i, 1);
        long long changes = 0;
        struct gr_str data;
        json_t *ev;

        rc = gr_db_exec(c,
                        "UPDATE carts SET status = 'abandoned', abandoned_at = $2,"
                        " version = version + 1 WHERE id = $1 AND status = 'active'",
                        (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(now) }, 2, &changes);
        if (rc < 0 || changes == 0)
            continue;
        ev = json_pack("{s:s,s:o,s:s,s:o,s:I,s:I,s:s,s:s}", "cart_id", id, "user_id",
                       user ? json_string(user) : json_null(), "status", "abandoned", "currency",
                       gr_db_text(rows, i, 2) ? json_string(gr_db_text(rows, i, 2)) : json_null(),
                       "item_count", (json_int_t)gr_db_int(rows, i, 5), "version",
                       (json_int_t)(gr_db_int(rows, i, 3) + 1), "last_activity_at",
                       gr_db_text(rows, i, 4), "abandoned_at", now);
        rc = ev != NULL ? gr_json_dump(a, ev, &data) : GR_EINTERNAL;
        json_decref(ev);
        if (rc < 0)
            continue;
        rc = gr_bus_emit(c, CART_SOURCE, "cart.abandoned", id, data.ptr, NULL, NULL);
        marked++;
    }
    if (rc < 0) {
        (void)gr_db_rollback(c);
        return rc;
    }
    rc = gr_db_commit(c);
    return rc < 0 ? rc : marked;
}

static void *run(void *p)
{
    struct cart_app *app = p;
    struct gr_arena a;

    gr_arena_init(&a);
    pthread_mutex_lock(&app->mu);
    while (!app->stop) {
        struct timespec ts;
        int n;

        pthread_mutex_unlock(&app->mu);
        n = cart_sweep_once(app, &a);
        gr_arena_release(&a);
        if (n > 0) {
            char buf[24];
            snprintf(buf, sizeof(buf), "%d", n);
            gr_log_info("carts abandoned", "count", buf);
        } else if (n < 0 && n != GR_EBUSY) {
            gr_log_warn("abandoned-cart sweep failed", "code", gr_err_name(n));
        }
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += (time_t)(app->sweep_interval_ms / 1000);
        ts.tv_nsec += (long)(app->sweep_interval_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&app->mu);
        while (!app->stop && pthread_cond_timedwait(&app->cv, &app->mu, &ts) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&app->mu);
    return NULL;
}

int cart_sweeper_start(struct cart_app *app)
{
    if (app->db == NULL)
        return 0;
    if (pthread_create(&app->sweeper, NULL, run, app) != 0)
        return GR_EINTERNAL;
    app->sweeper_running = true;
    return 0;
}

void cart_sweeper_stop(struct cart_app *app)
{
    if (!app->sweeper_running)
        return;
    pthread_mutex_lock(&app->mu);
    app->stop = true;
    pthread_cond_signal(&app->cv);
    pthread_mutex_unlock(&app->mu);
    pthread_join(app->sweeper, NULL);
    app->sweeper_running = false;
}
