/*
 * json.c - strict JSON parsing, typed field readers, JSON Pointers, RFC 7396 merge patch and
 * arena dumps, all on jansson. Every request body goes through gr_json_parse(), which adds the
 * checks jansson leaves out (depth limit by a pre-scan, the 2^53 integer range) and turns
 * jansson's errors into GR_EINVAL with a position. The readers implement the per-field rules of
 * SERVICES.md section 0 (unknown field, wrong type, 1.0 in an integer field -> 422) and record
 * RFC 6901 pointers in the request's struct gr_errs.
 */
#include <string.h>

#include "gr/json.h"

/* One step of the path from the root to the value being checked. */
struct seg {
    const char *key; /* NULL for an array index */
    size_t idx;
};

static void add_err(struct gr_errs *errs, struct gr_arena *a, const char *field, const char *msg)
{
    if (errs)
        gr_errs_add(errs, a, field, "%s", msg);
}

static void decref_cb(void *v)
{
    json_decref(v);
}

/*
 * Finds the first byte where container nesting exceeds @max, or returns false. Strings are
 * skipped (with their escapes) so brackets inside them do not count. For valid JSON this is
 * exact; for invalid JSON any answer is fine because jansson rejects it anyway.
 */
static bool too_deep(const char *buf, size_t len, size_t max, size_t *at)
{
    size_t depth = 0;
    bool in_str = false;

    for (size_t i = 0; i < len; i++) {
        char c = buf[i];

        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            depth++;
            if (depth > max) {
                *at = i;
                return true;
            }
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    return false;
}

static const char *parse_reason(const json_error_t *jerr)
{
    switch (json_error_code(jerr)) {
    case json_error_invalid_utf8:
        return "invalid UTF-8";
    case json_error_duplicate_key:
        return "duplicate object key";
    case json_error_end_of_input_expected:
        return "unexpected data after the JSON value";
    case json_error_premature_end_of_input:
        return "unexpected end of input";
    case json_error_null_character:
    case json_error_null_byte_in_key:
        return "\\u0000 is not allowed in strings";
    case json_error_numeric_overflow:
        return "number out of range";
    case json_error_stack_overflow:
        return "nesting too deep";
    default:
        return "invalid JSON syntax";
    }
}

static const char *path_ptr(struct gr_arena *a, const struct seg *path, size_t n)
{
    const char *p = "";

    for (size_t i = 0; i < n; i++)
        p = path[i].key ? gr_json_ptr_key(a, p, path[i].key) : gr_json_ptr_idx(a, p, path[i].idx);
    return p;
}

/*
 * Reports every integer outside +-2^53 under @v. Recursion is bounded by the depth pre-scan;
 * the path is kept as segments so pointers are only built for the (rare) offenders.
 */
static int check_ints(struct gr_arena *a, struct gr_errs *errs, json_t *v, struct seg *path,
                      size_t depth)
{
    int rc = 0;

    if (json_is_integer(v)) {
        json_int_t n = json_integer_value(v);

        if (n < -GR_JSON_MAX_INT || n > GR_JSON_MAX_INT) {
            if (errs)
                gr_errs_add(errs, a, path_ptr(a, path, depth), "must be between %lld and %lld",
                            -GR_JSON_MAX_INT, GR_JSON_MAX_INT);
            rc = GR_EVALID;
        }
    } else if (json_is_object(v)) {
        const char *k;
        json_t *m;

        GR_ASSERT(depth < GR_JSON_MAX_DEPTH);
        json_object_foreach(v, k, m)
        {
            path[depth].key = k;
            if (check_ints(a, errs, m, path, depth + 1) < 0)
                rc = GR_EVALID;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *m;

        GR_ASSERT(depth < GR_JSON_MAX_DEPTH);
        json_array_foreach(v, i, m)
        {
            path[depth].key = NULL;
            path[depth].idx = i;
            if (check_ints(a, errs, m, path, depth + 1) < 0)
                rc = GR_EVALID;
        }
    }
    return rc;
}

int gr_json_parse(struct gr_arena *a, const char *buf, size_t len, json_t **out,
                  struct gr_errs *errs)
{
    struct seg path[GR_JSON_MAX_DEPTH];
    json_error_t jerr;
    json_t *doc = NULL;
    size_t at;
    int rc = 0;

    *out = NULL;
    if (too_deep(buf, len, GR_JSON_MAX_DEPTH, &at)) {
        if (errs)
            gr_errs_add(errs, a, "", "nesting deeper than %d at byte %zu", GR_JSON_MAX_DEPTH, at);
        rc = GR_EINVAL;
        goto out;
    }
    doc = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!doc) {
        if (errs)
            gr_errs_add(errs, a, "", "%s at line %d, column %d (byte %d)", parse_reason(&jerr),
                        jerr.line, jerr.column, jerr.position);
        rc = GR_EINVAL;
        goto out;
    }
    rc = check_ints(a, errs, doc, path, 0);
    if (rc < 0)
        goto out;
    gr_arena_defer(a, decref_cb, doc);
    *out = doc;
    doc = NULL;
out:
    json_decref(doc);
    return rc;
}

/* ---- readers ----------------------------------------------------------------------------- */

/*
 * Looks up @key. Sets *v to the member when the caller has something to check or zero out
 * (a value, or an accepted null), to NULL when it should just return (absent). Adds the
 * presence errors ("is required", "must not be null").
 */
static int member(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                  unsigned flags, json_t **v, bool *present)
{
    json_t *m = json_is_object(obj) ? json_object_get(obj, key) : NULL;

    *v = NULL;
    if (present)
        *present = m != NULL;
    if (!m) {
        if (!(flags & GR_JSON_REQUIRED))
            return 0;
        gr_errs_addk(r->errs, r->a, ptr, key, "is required");
        return GR_EVALID;
    }
    if (json_is_null(m) && !(flags & GR_JSON_NULLABLE)) {
        gr_errs_addk(r->errs, r->a, ptr, key, "must not be null");
        return GR_EVALID;
    }
    *v = m;
    return 0;
}

int gr_json_only(const struct gr_json_rd *r, json_t *obj, const char *ptr,
                 const char *const *allowed)
{
    const char *k;
    json_t *m;
    int rc = 0;

    if (!json_is_object(obj)) {
        add_err(r->errs, r->a, ptr, "must be an object");
        return GR_EVALID;
    }
    json_object_foreach(obj, k, m)
    {
        bool ok = false;

        for (size_t i = 0; allowed && allowed[i] && !ok; i++)
            ok = strcmp(allowed[i], k) == 0;
        if (!ok) {
            gr_errs_addk(r->errs, r->a, ptr, k, "unknown field");
            rc = GR_EVALID;
        }
    }
    return rc;
}

/* Code points in valid UTF-8: every byte that is not a continuation byte starts one. */
static size_t utf8_chars(const char *s, size_t len)
{
    size_t n = 0;

    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

int gr_json_str(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                unsigned flags, size_t min_chars, size_t max_chars, const char **out, bool *present)
{
    json_t *v;
    size_t n;
    int rc;

    rc = member(r, obj, ptr, key, flags, &v, present);
    if (rc < 0 || !v)
        return rc;
    if (json_is_null(v)) {
        *out = NULL;
        return 0;
    }
    if (!json_is_string(v)) {
        gr_errs_addk(r->errs, r->a, ptr, key, "must be a string");
        return GR_EVALID;
    }
    n = utf8_chars(json_string_value(v), json_string_length(v));
    if (n < min_chars) {
        if (min_chars == 1)
            gr_errs_addk(r->errs, r->a, ptr, key, "must not be empty");
        else
            gr_errs_addk(r->errs, r->a, ptr, key, "must be at least %zu characters", min_chars);
        return GR_EVALID;
    }
    if (n > max_chars) {
        gr_errs_addk(r->errs, r->a, ptr, key, "must be at most %zu characters", max_chars);
        return GR_EVALID;
    }
    *out = json_string_value(v);
    return 0;
}

int gr_json_int(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                unsigned flags, long long min, long long max, long long *out, bool *present)
{
    json_int_t n;
    json_t *v;
    int rc;

    rc = member(r, obj, ptr, key, flags, &v, present);
    if (rc < 0 || !v)
        return rc;
    if (json_is_null(v)) {
        *out = 0;
        return 0;
    }
    if (!json_is_integer(v)) {
        gr_errs_addk(r->errs, r->a, ptr, key, "must be an integer");
        return GR_EVALID;
    }
    n = json_integer_value(v);
    if (n < min || n > max) {
        gr_errs_addk(r->errs, r->a, ptr, key, "must be between %lld and %lld", min, max);
        return GR_EVALID;
    }
    *out = n;
    return 0;
}

int gr_json_bool(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                 unsigned flags, bool *out, bool *present)
{
    json_t *v;
    int rc;

    rc = member(r, obj, ptr, key, flags, &v, present);
    if (rc < 0 || !v)
        return rc;
    if (json_is_null(v)) {
        *out = false;
        return 0;
    }
    if (!json_is_boolean(v)) {
        gr_errs_addk(r->errs, r->a, ptr, key, "must be a boolean");
        return GR_EVALID;
    }
    *out = json_is_true(v);
    return 0;
}

int gr_json_obj(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                unsigned flags, json_t **out, bool *present)
{
    json_t *v;
    int rc;

    rc = member(r, obj, ptr, key, flags, &v, present);
    if (rc < 0 || !v)
        return rc;
    if (json_is_null(v)) {
        *out = NULL;
        return 0;
    }
    if (!json_is_object(v)) {
        gr_errs_addk(r->errs, r->a, ptr, key, "must be an object");
        return GR_EVALID;
    }
    *out = v;
    return 0;
}

int gr_json_arr(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                unsigned flags, size_t max_items, json_t **out, bool *present)
{
    json_t *v;
    int rc;

    rc = member(r, obj, ptr, key, flags, &v, present);
    if (rc < 0 || !v)
        return rc;
    if (json_is_null(v)) {
        *out = NULL;
        return 0;
    }
    if (!json_is_array(v)) {
        gr_errs_addk(r->errs, r->a, ptr, key, "must be an array");
        return GR_EVALID;
    }
    if (json_array_size(v) > max_items) {
        gr_errs_addk(r->errs, r->a, ptr, key, "must have at most %zu items", max_items);
        return GR_EVALID;
    }
    *out = v;
    return 0;
}

/* ---- pointers ---------------------------------------------------------------------------- */

const char *gr_json_ptr_key(struct gr_arena *a, const char *ptr, const char *key)
{
    size_t plen = ptr ? strlen(ptr) : 0, klen = strlen(key), j;
    char *p = gr_arena_alloc(a, plen + 1 + 2 * klen + 1);

    if (plen)
        memcpy(p, ptr, plen);
    j = plen;
    p[j++] = '/';
    for (size_t i = 0; i < klen; i++) {
        if (key[i] == '~' || key[i] == '/') {
            p[j++] = '~';
            p[j++] = key[i] == '~' ? '0' : '1';
        } else {
            p[j++] = key[i];
        }
    }
    p[j] = '\0';
    return p;
}

const char *gr_json_ptr_idx(struct gr_arena *a, const char *ptr, size_t idx)
{
    return gr_arena_printf(a, "%s/%zu", ptr ? ptr : "", idx);
}

/* ---- merge patch ------------------------------------------------------------------------- */

/* RFC 7396 for two distinct objects: @target is modified, @patch only read. */
static int merge_objects(json_t *target, json_t *patch)
{
    const char *k;
    json_t *pv;

    json_object_foreach(patch, k, pv)
    {
        json_t *tv = json_object_get(target, k), *nv;

        if (json_is_null(pv)) {
            json_object_del(target, k);
            continue;
        }
        if (json_is_object(pv) && json_is_object(tv)) {
            if (merge_objects(tv, pv) < 0)
                return GR_EINTERNAL;
            continue;
        }
        /* A non-object target member is replaced by MergePatch({}, pv), which drops nulls. */
        nv = gr_json_merge_patch_value(NULL, pv);
        if (!nv || json_object_set_new(target, k, nv) < 0)
            return GR_EINTERNAL;
    }
    return 0;
}

int gr_json_merge_patch(json_t *target, json_t *patch)
{
    json_t *copy;
    int rc;

    if (!json_is_object(target) || !json_is_object(patch))
        return GR_EVALID;
    /*
     * Patch from a private copy: @patch may be @target or live inside it, and iterating an
     * object while deleting from it (or freeing it) is undefined.
     */
    copy = json_deep_copy(patch);
    if (!copy)
        return GR_EINTERNAL;
    rc = merge_objects(target, copy);
    json_decref(copy);
    return rc;
}

json_t *gr_json_merge_patch_value(json_t *target, json_t *patch)
{
    json_t *res;

    if (!json_is_object(patch))
        return json_deep_copy(patch);
    res = json_is_object(target) ? json_deep_copy(target) : json_object();
    if (res && merge_objects(res, patch) < 0) {
        json_decref(res);
        res = NULL;
    }
    return res;
}

/* ---- dump -------------------------------------------------------------------------------- */

int gr_json_dump(struct gr_arena *a, const json_t *v, struct gr_str *out)
{
    out->ptr = NULL;
    out->len = 0;
    if (!v)
        return GR_EINTERNAL;
    out->ptr = gr_json_dumpb(a, v, JSON_COMPACT | JSON_ENCODE_ANY, &out->len);
    return out->ptr ? 0 : GR_EINTERNAL;
}

char *gr_json_dumpb(struct gr_arena *a, const json_t *v, size_t flags, size_t *len)
{
    /* One pass for the common small document: measuring first costs a second serialisation. */
    size_t cap = GR_JSON_DUMP_GUESS, n;
    char *p = gr_arena_alloc(a, cap);

    n = json_dumpb(v, p, cap - 1, flags);
    if (n == 0)
        return NULL;
    if (n > cap - 1) {
        p = gr_arena_alloc(a, n + 1);
        if (json_dumpb(v, p, n, flags) != n)
            return NULL;
    }
    p[n] = '\0';
    *len = n;
    return p;
}
