/*
 * cfgsvc.h - config-service (SERVICES §04): versioned configuration and encrypted secrets per
 * service and environment, with a merged view and long-poll watch.
 */
#ifndef CFGSVC_H
#define CFGSVC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "gr/arena.h"
#include "gr/http.h"
#include "gr/router.h"
#include "gr/seal.h"
#include "gr/service.h"

#define CFG_SERVICE_MAX 63           /* characters of a service name */
#define CFG_KEY_MAX     256          /* characters of a key */
#define CFG_VALUE_MAX   (64 * 1024)  /* bytes of a value's JSON text */
#define CFG_BODY_MAX    (128 * 1024) /* bytes of a PUT body */
#define CFG_WAIT_MAX_MS 60000        /* longest long-poll */
#define CFG_WAIT_DEF_MS 30000        /* long-poll when ?index= comes without ?wait= */
#define CFG_MASK        "******"
#define CFG_NROUTES     6

/*
 * The service state (req->app): the master key and the watch state. Long-polls do not hold an
 * HTTP thread: they park on `changed` (gr_req_wait), so their number is bounded only by
 * HTTP_MAX_WAITERS (default 4096; beyond it 429 too_many_watches).
 */
struct cfg_app {
    struct gr_seal_key key;   /* AES-256-GCM master key; never logged */
    struct gr_waitq *changed; /* notified when index moves */
    atomic_llong index;       /* highest config index known to this process */
    atomic_llong polled_ms;   /* when a long-poll last read the index from the database */
};

extern const struct gr_route cfg_routes[CFG_NROUTES];

/* Loads CONFIG_MASTER_KEY (64 hex chars) or DATA_DIR/config-master-key (made on first start). */
int cfg_key_load(struct cfg_app *app, const char *data_dir);
/* Seals @n bytes at @p (at most CFG_VALUE_MAX), bound to @aad, with gr_seal into @a. */
int cfg_seal(const struct cfg_app *app, struct gr_arena *a, const char *aad, const void *p,
             size_t n, const char **out);
/* Opens a sealed value (NUL-terminated plaintext in @a); GR_EINVAL when it does not verify. */
int cfg_open(const struct cfg_app *app, struct gr_arena *a, const char *aad, const char *sealed,
             const char **out);

/* Raises the known index to @idx and, when it moved, wakes the long-polls. */
void cfg_notify(struct cfg_app *app, long long idx);

int cfg_merged_get(struct gr_req *req, struct gr_resp *resp);
int cfg_entry_get(struct gr_req *req, struct gr_resp *resp);
int cfg_entry_put(struct gr_req *req, struct gr_resp *resp);
int cfg_entry_delete(struct gr_req *req, struct gr_resp *resp);
int cfg_history(struct gr_req *req, struct gr_resp *resp);
int cfg_rollback(struct gr_req *req, struct gr_resp *resp);

#endif
