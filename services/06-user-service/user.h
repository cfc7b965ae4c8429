/*
 * user.h - the user service's own declarations: the route table, the handlers of profiles.c,
 * addresses.c, preferences.c and exports.c, the consumers of events.c, the helpers they share
 * (user_db.c: the caller's own profile, JSON of rows, versions, cursors, events) and the
 * validators of user_valid.c (time zones, locales, countries).
 *
 * Every json_t these helpers hand out is owned by the request arena (its json_decref is
 * deferred on req->arena), so callers never release one and pass json_incref(v) to
 * gr_resp_json(). Strings are arena memory or borrowed from a JSON document.
 */
#ifndef USER_H
#define USER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "gr/bus.h"
#include "gr/db.h"
#include "gr/http.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/router.h"
#include "gr/time.h"

#define USER_SOURCE "/gravity/user-service"

#define USER_NAME_MAX         50  /* characters of first_name and last_name (seed: 1..50) */
#define USER_DISPLAY_MAX      100 /* characters of display_name */
#define USER_EMAIL_MAX        254
#define USER_USERNAME_MAX     64
#define USER_LOCALE_MAX       35  /* characters of a BCP 47 tag we accept */
#define USER_TZ_MAX           64  /* characters of an IANA time zone name */
#define USER_Q_MAX            100 /* characters of the list's q */
#define USER_ADDR_MAX         50  /* addresses of one user */
#define USER_ADDR_LINE_MAX    200
#define USER_ADDR_FIELD_MAX   100
#define USER_ADDR_LABEL_MAX   50
#define USER_POSTAL_MAX       20
#define USER_PHONE_MAX        32
#define USER_PREFS_MAX        16384 /* bytes of the stored preferences document */
#define USER_PREFS_CUSTOM     50    /* keys of preferences.custom */
#define USER_PREFS_KEY_MAX    64    /* characters of one such key */
#define USER_PREFS_VAL_MAX    1000  /* characters of one string value */
#define USER_EXPORTS_KEEP     5     /* export archives kept per user; older ones expire */
#define USER_ZONEINFO_DEFAULT "/usr/share/zoneinfo"

/* The service state reached through req->app (service.c): read-only after start-up. */
struct user_app {
    char *zoneinfo_dir; /* USER_ZONEINFO_DIR, gr_xstrdup */
};

/* Column list of the profile SELECTs (table alias p) and the column numbers used outside. */
#define PROFILE_COLS                                                                               \
    "p.user_id, p.email, p.username, p.first_name, p.last_name, p.display_name,"                   \
    " p.avatar_file_id, p.locale, p.timezone, p.version, p.created_at, p.updated_at,"              \
    " p.deleted_at"
enum {
    PCOL_ID = 0,
    PCOL_FIRST = 3,
    PCOL_AVATAR = 6,
    PCOL_VERSION = 9,
    PCOL_CREATED = 10,
    PCOL_DELETED = 12,
};

/* Column list of the address SELECTs (table alias a). */
#define ADDRESS_COLS                                                                               \
    "a.id, a.label, a.recipient, a.line1, a.line2, a.city, a.region, a.postal_code, a.country,"    \
    " a.phone, a.is_default, a.version, a.created_at, a.updated_at"
enum { ACOL_ID = 0, ACOL_DEFAULT = 10, ACOL_VERSION = 11, ACOL_CREATED = 12 };

/* The route table (routes.c). */
#define USER_NROUTES 14
extern const struct gr_route user_routes[USER_NROUTES];

/* ---- handlers ---------------------------------------------------------------------------- */

int profiles_me_get(struct gr_req *req, struct gr_resp *resp);
int profiles_me_patch(struct gr_req *req, struct gr_resp *resp);
int profiles_get(struct gr_req *req, struct gr_resp *resp);
int profiles_list(struct gr_req *req, struct gr_resp *resp);
int profiles_delete(struct gr_req *req, struct gr_resp *resp);

int addresses_list(struct gr_req *req, struct gr_resp *resp);
int addresses_create(struct gr_req *req, struct gr_resp *resp);
int addresses_patch(struct gr_req *req, struct gr_resp *resp);
int addresses_delete(struct gr_req *req, struct gr_resp *resp);
int addresses_set_default(struct gr_req *req, struct gr_resp *resp);

int preferences_get(struct gr_req *req, struct gr_resp *resp);
int preferences_put(struct gr_req *req, struct gr_resp *resp);

int exports_create(struct gr_req *req, struct gr_resp *resp);
int exports_get(struct gr_req *req, struct gr_resp *resp);

/* ---- consumed events (events.c) ----------------------------------------------------------- */

#define USER_NSUBS 2
extern const struct gr_sub user_subs[USER_NSUBS];

/* ---- helpers (user_db.c) ----------------------------------------------------------------- */

/** Makes @v owned by @a (json_decref deferred) and returns it. NULL aborts. */
json_t *user_own(struct gr_arena *a, json_t *v);

/** The current library time as RFC 3339 with milliseconds, in @out. */
void user_now(char out[GR_TIME_STR_LEN]);

/** A reader context that accumulates field errors into the response's problem. */
struct gr_json_rd user_rd(struct gr_req *req, struct gr_resp *resp);

/**
 * The caller's user id: the token's sub when it is a canonical UUID (a user), else NULL
 * (service tokens, whose sub is a client id, have no profile).
 */
const char *user_self(const struct gr_req *req);

/**
 * Loads the profile of @user_id (PROFILE_COLS, one row) into *@rows, creating it first when it
 * does not exist yet and @create is set (the caller is that user and user.created has not
 * arrived: SERVICES §06). The insert runs in the open transaction on req->db, or in one of its
 * own when none is open (GET routes). An erased profile is GR_ENOTFOUND, like a missing one
 * without @create. Errors: gr_db's (GR_EBUSY makes the core run the handler again).
 */
GR_MUST_CHECK int user_profile_load(struct gr_req *req, const char *user_id, bool create,
                                    struct gr_db_rows **rows);

/** user_profile_load of the caller's own profile (created on first use); 404 for services. */
GR_MUST_CHECK int user_me(struct gr_req *req, struct gr_db_rows **rows);

/**
 * The caller's own profile for reads that must not create it (a read that ends in a 4xx
 * leaves no trace): 0 with *@rows holding one row, or no row when the profile does not exist
 * yet (the caller then has no addresses, preferences or exports either); GR_ENOTFOUND for an
 * erased profile or a caller that is not a user.
 */
GR_MUST_CHECK int user_me_peek(struct gr_req *req, struct gr_db_rows **rows);

/** Profile row @i of @rows (PROFILE_COLS) as the JSON the API shows (arena). */
json_t *user_profile_json(struct gr_arena *a, const struct gr_db_rows *rows, size_t i);
/** Address row @i of @rows (ADDRESS_COLS) as JSON (arena). */
json_t *user_address_json(struct gr_arena *a, const struct gr_db_rows *rows, size_t i);

/** Returns a 409 "version_conflict" problem when @want (if @present) differs from @have. */
GR_MUST_CHECK int user_check_version(struct gr_req *req, struct gr_resp *resp, bool present,
                                     long long want, long long have);

/**
 * Publishes user.updated for the profile @user_id with its current row as data, on @db's open
 * transaction (a request's or a consumer's) with arena @a. Errors: gr_db's and gr_bus_emit's.
 */
GR_MUST_CHECK int user_publish_updated(struct gr_db_conn *db, struct gr_arena *a,
                                       const char *user_id, const char *traceparent);

/**
 * A keyset list cursor "created_at|id" bound to @scope: user_cursor_read checks and splits it
 * into the two parameters. GR_EINVAL (400) for an edited cursor or one of another list.
 */
GR_MUST_CHECK int user_cursor_read(struct gr_req *req, const char *scope, const char *cursor,
                                   struct gr_db_val *created, struct gr_db_val *id);
/** The last key of a page, for gr_resp_list (arena). */
const char *user_cursor_key(struct gr_req *req, const char *created, const char *id);

/** Reads an optional, nullable UUID member: "must be a UUID" otherwise. */
void user_read_uuid(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                    const char **out, bool *present);

/**
 * Adds a 422 "read_only_field" problem for each member of @obj named in @ro (NULL-terminated),
 * with @why as the message. Returns GR_EVALID when there was one, else 0.
 */
GR_MUST_CHECK int user_read_only(struct gr_req *req, struct gr_resp *resp, json_t *obj,
                                 const char *const *ro, const char *why);

/**
 * Action routes (POST …/default, POST …/exports) take no body. One that is sent must be the
 * empty JSON object: 415 for another Content-Type, 400 for malformed JSON, 422 for any member
 * (SERVICES §0: unknown field). Returns 0 when there is nothing to refuse.
 */
GR_MUST_CHECK int user_no_body(struct gr_req *req, struct gr_resp *resp);

/** Lower-cases ASCII letters of @s in place and returns it. */
char *user_ascii_lower(char *s);

/* ---- validators (user_valid.c) ------------------------------------------------------------ */

/**
 * True when @name is an IANA time zone: a relative path of [A-Za-z0-9_+-] segments (no "."
 * or ".." segment, no leading '/', at most USER_TZ_MAX characters) naming a TZif file under
 * @dir. "posix/…" and "right/…" copies are refused. Never opens anything outside @dir.
 */
bool user_tz_valid(const char *dir, const char *name);

/**
 * Checks a BCP 47 language tag of the common shape language[-Script][-REGION][-variant]*
 * (language 2..3 letters, script 4 letters, region 2 letters or 3 digits, variants 5..8
 * alphanumerics or a digit and 3 alphanumerics). On success writes the canonical casing
 * ("en-Latn-US") into @out (arena) and returns true.
 */
bool user_locale_canon(struct gr_arena *a, const char *tag, const char **out);

/** True for an assigned ISO 3166-1 alpha-2 code in upper case ("US"; "USA" and "XX" are not). */
bool user_country_valid(const char *code);

#endif
