/*
 * events.c - the events user-service consumes (SERVICES §06): user.created creates the
 * profile (or completes the one made on the user's first GET /users/me), file.deleted clears
 * the avatar that pointed at the file. Each handler runs in the consumer's transaction, which
 * also records the event in the inbox, so a redelivered event changes nothing (gr/bus.h); a
 * second user.created with another event id but the same user finds the profile and, unless
 * it carries a newer version, changes nothing either.
 */
#include <jansson.h>
#include <string.h>

#include "gr/log.h"
#include "user.h"

/* The data object of @ev (arena-owned), or NULL when it is not an object. */
static json_t *data_of(struct gr_arena *a, const struct gr_event *ev)
{
    json_t *d = NULL;

    if (ev->data == NULL || gr_json_parse(a, ev->data, ev->data_len, &d, NULL) < 0 ||
        !json_is_object(d))
        return NULL;
    return d;
}

/* A string member of @d of 1..@max bytes, else NULL (borrowed from @d). */
static const char *str_member(json_t *d, const char *key, size_t max)
{
    json_t *v = json_object_get(d, key);

    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > max)
        return NULL;
    return json_string_value(v);
}

/* The user id: data.id, else data.user_id, else the subject; NULL unless a UUID. */
static const char *user_id_of(json_t *d, const struct gr_event *ev)
{
    const char *keys[] = { "id", "user_id" };

    for (size_t i = 0; i < 2; i++) {
        const char *s = str_member(d, keys[i], 36);
        if (s != NULL && gr_id_valid(s, strlen(s)))
            return s;
    }
    if (ev->subject != NULL && gr_id_valid(ev->subject, strlen(ev->subject)))
        return ev->subject;
    return NULL;
}

/*
 * user.created: insert the profile with the email and username of 05, or fill them into the
 * profile the user's first request created (source_version 0). An erased profile stays
 * erased; a profile that already holds this or a newer version of 05's data is left alone.
 */
static int on_user_created(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                           void *app)
{
    json_t *d = data_of(a, ev);
    const char *uid = user_id_of(d, ev);
    const char *email = str_member(d, "email", USER_EMAIL_MAX);
    const char *username = str_member(d, "username", USER_USERNAME_MAX);
    json_t *jv = json_object_get(d, "version");
    long long version =
        json_is_integer(jv) && json_integer_value(jv) > 0 ? (long long)json_integer_value(jv) : 1;
    char now[GR_TIME_STR_LEN];
    const char *norm = NULL;

    (void)app;
    if (uid == NULL) {
        gr_log_warn("user.created without a user id, ignored", "event_id", ev->id);
        return 0;
    }
    if (email != NULL && (strlen(email) < 3 || strchr(email, '@') == NULL))
        email = NULL;
    if (email != NULL)
        norm = user_ascii_lower(gr_arena_strdup(a, email));
    user_now(now);
    return gr_db_exec(db,
                      "INSERT INTO profiles (user_id, email, email_norm, username, source_version,"
                      " version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6, $6)"
                      " ON CONFLICT (user_id) DO UPDATE SET email = excluded.email,"
                      " email_norm = excluded.email_norm, username = excluded.username,"
                      " source_version = excluded.source_version,"
                      " version = profiles.version + 1, updated_at = excluded.updated_at"
                      " WHERE profiles.deleted_at IS NULL"
                      " AND profiles.source_version < excluded.source_version",
                      (struct gr_db_val[]){ GR_DB_TEXT(uid), GR_DB_TEXT(email), GR_DB_TEXT(norm),
                                            GR_DB_TEXT(username), GR_DB_INT(version),
                                            GR_DB_TEXT(now) },
                      6, NULL);
}

/* The id of the deleted file: the event's subject, else data.id. */
static const char *file_id_of(json_t *d, const struct gr_event *ev)
{
    const char *id;

    if (ev->subject != NULL && gr_id_valid(ev->subject, strlen(ev->subject)))
        return ev->subject;
    id = str_member(d, "id", 36);
    return id != NULL && gr_id_valid(id, strlen(id)) ? id : NULL;
}

/* file.deleted: every profile showing the file as its avatar loses it and publishes user.updated.
 */
static int on_file_deleted(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                           void *app)
{
    const char *fid = file_id_of(data_of(a, ev), ev);
    struct gr_db_rows *rows = NULL;
    char now[GR_TIME_STR_LEN];
    int rc;

    (void)app;
    if (fid == NULL) {
        gr_log_warn("file.deleted without a file id, ignored", "event_id", ev->id);
        return 0;
    }
    rc = gr_db_query(db, a, "SELECT user_id FROM profiles WHERE avatar_file_id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(fid) }, 1, &rows);
    if (rc < 0)
        return rc;
    user_now(now);
    for (size_t i = 0; i < gr_db_nrows(rows) && rc == 0; i++) {
        const char *uid = gr_db_text(rows, i, 0);

        rc = gr_db_exec(db,
                        "UPDATE profiles SET avatar_file_id = NULL, version = version + 1,"
                        " updated_at = $2 WHERE user_id = $1 AND avatar_file_id = $3",
                        (struct gr_db_val[]){ GR_DB_TEXT(uid), GR_DB_TEXT(now), GR_DB_TEXT(fid) },
                        3, NULL);
        if (rc == 0)
            rc = user_publish_updated(db, a, uid, ev->traceparent);
    }
    return rc;
}

const struct gr_sub user_subs[USER_NSUBS] = {
    { "user.created", on_user_created },
    { "file.deleted", on_file_deleted },
};
