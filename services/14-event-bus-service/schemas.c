/*
 * schemas.c - the schema registry: PUT/GET /api/v1/event-schemas/{type}, and the validation
 * of published data against a registered schema.
 *
 * The schemas are a documented subset of JSON Schema: type (one name or a list of object,
 * array, string, integer, number, boolean, null), properties, required, additionalProperties
 * (a boolean), items (one schema), enum, const, minimum, maximum, minLength, maxLength,
 * minItems and maxItems, plus the annotations $schema, title and description. Any other
 * keyword is refused with 422 when the schema is registered, so nobody believes it enforced.
 */
#include <string.h>

#include "eventbus.h"

static const char *const type_names[] = { "object", "array",   "string", "integer",
                                          "number", "boolean", "null",   NULL };

static bool type_name_valid(const char *s)
{
    for (size_t i = 0; type_names[i]; i++)
        if (strcmp(type_names[i], s) == 0)
            return true;
    return false;
}

static bool is_count(json_t *v)
{
    return json_is_integer(v) && json_integer_value(v) >= 0;
}

/* Checks that @s (at @ptr) is a schema of the supported subset; errors into @r. */
static void check_schema(const struct gr_json_rd *r, json_t *s, const char *ptr)
{
    const char *key;
    json_t *v;

    if (!json_is_object(s)) {
        gr_errs_add(r->errs, r->a, ptr, "must be a schema object");
        return;
    }
    json_object_foreach(s, key, v)
    {
        const char *p = gr_json_ptr_key(r->a, ptr, key);

        if (strcmp(key, "type") == 0) {
            if (json_is_string(v)) {
                if (!type_name_valid(json_string_value(v)))
                    gr_errs_add(r->errs, r->a, p, "is not a JSON Schema type");
            } else if (json_is_array(v) && json_array_size(v) > 0) {
                size_t i;
                json_t *t;
                json_array_foreach(v, i, t)
                {
                    if (!json_is_string(t) || !type_name_valid(json_string_value(t)))
                        gr_errs_add(r->errs, r->a, gr_json_ptr_idx(r->a, p, i),
                                    "is not a JSON Schema type");
                }
            } else {
                gr_errs_add(r->errs, r->a, p, "must be a type name or a list of them");
            }
        } else if (strcmp(key, "properties") == 0) {
            const char *k;
            json_t *sub;
            if (!json_is_object(v)) {
                gr_errs_add(r->errs, r->a, p, "must be an object of schemas");
                continue;
            }
            json_object_foreach(v, k, sub)
            {
                check_schema(r, sub, gr_json_ptr_key(r->a, p, k));
            }
        } else if (strcmp(key, "required") == 0) {
            size_t i;
            json_t *t;
            if (!json_is_array(v)) {
                gr_errs_add(r->errs, r->a, p, "must be an array of strings");
                continue;
            }
            json_array_foreach(v, i, t)
            {
                if (!json_is_string(t))
                    gr_errs_add(r->errs, r->a, gr_json_ptr_idx(r->a, p, i), "must be a string");
            }
        } else if (strcmp(key, "additionalProperties") == 0) {
            if (!json_is_boolean(v))
                gr_errs_add(r->errs, r->a, p, "must be a boolean (schemas are not supported)");
        } else if (strcmp(key, "items") == 0) {
            check_schema(r, v, p);
        } else if (strcmp(key, "enum") == 0) {
            if (!json_is_array(v) || json_array_size(v) == 0)
                gr_errs_add(r->errs, r->a, p, "must be a non-empty array");
        } else if (strcmp(key, "const") == 0) {
            /* any value */
        } else if (strcmp(key, "minimum") == 0 || strcmp(key, "maximum") == 0) {
            if (!json_is_number(v))
                gr_errs_add(r->errs, r->a, p, "must be a number");
        } else if (strcmp(key, "minLength") == 0 || strcmp(key, "maxLength") == 0 ||
                   strcmp(key, "minItems") == 0 || strcmp(key, "maxItems") == 0) {
            if (!is_count(v))
                gr_errs_add(r->errs, r->a, p, "must be a non-negative integer");
        } else if (strcmp(key, "$schema") == 0 || strcmp(key, "title") == 0 ||
                   strcmp(key, "description") == 0) {
            if (!json_is_string(v))
                gr_errs_add(r->errs, r->a, p, "must be a string");
        } else {
            gr_errs_add(r->errs, r->a, p, "is not a supported keyword");
        }
    }
}

static bool type_matches(const char *t, json_t *v)
{
    if (strcmp(t, "object") == 0)
        return json_is_object(v);
    if (strcmp(t, "array") == 0)
        return json_is_array(v);
    if (strcmp(t, "string") == 0)
        return json_is_string(v);
    if (strcmp(t, "integer") == 0)
        return json_is_integer(v);
    if (strcmp(t, "number") == 0)
        return json_is_number(v);
    if (strcmp(t, "boolean") == 0)
        return json_is_boolean(v);
    return json_is_null(v);
}

/* Validates @v at @ptr against the (checked) schema @s; errors into @r. */
static void validate(const struct gr_json_rd *r, json_t *s, json_t *v, const char *ptr)
{
    json_t *k;

    k = json_object_get(s, "type");
    if (k != NULL) {
        bool ok = false;
        if (json_is_string(k)) {
            ok = type_matches(json_string_value(k), v);
        } else {
            size_t i;
            json_t *t;
            json_array_foreach(k, i, t)
            {
                ok = ok || type_matches(json_string_value(t), v);
            }
        }
        if (!ok) {
            gr_errs_add(r->errs, r->a, ptr, "has the wrong type for its schema");
            return;
        }
    }
    k = json_object_get(s, "const");
    if (k != NULL && !json_equal(k, v))
        gr_errs_add(r->errs, r->a, ptr, "must equal the schema's const");
    k = json_object_get(s, "enum");
    if (k != NULL) {
        bool found = false;
        size_t i;
        json_t *e;
        json_array_foreach(k, i, e)
        {
            found = found || json_equal(e, v);
        }
        if (!found)
            gr_errs_add(r->errs, r->a, ptr, "must be one of the schema's enum values");
    }
    if (json_is_number(v)) {
        double d = json_number_value(v);
        k = json_object_get(s, "minimum");
        if (k != NULL && d < json_number_value(k))
            gr_errs_add(r->errs, r->a, ptr, "must be at least %g", json_number_value(k));
        k = json_object_get(s, "maximum");
        if (k != NULL && d > json_number_value(k))
            gr_errs_add(r->errs, r->a, ptr, "must be at most %g", json_number_value(k));
    }
    if (json_is_string(v)) {
        long long n = (long long)eb_utf8_chars(json_string_value(v));
        k = json_object_get(s, "minLength");
        if (k != NULL && n < json_integer_value(k))
            gr_errs_add(r->errs, r->a, ptr, "must be at least %lld characters",
                        (long long)json_integer_value(k));
        k = json_object_get(s, "maxLength");
        if (k != NULL && n > json_integer_value(k))
            gr_errs_add(r->errs, r->a, ptr, "must be at most %lld characters",
                        (long long)json_integer_value(k));
    }
    if (json_is_array(v)) {
        long long n = (long long)json_array_size(v);
        json_t *items = json_object_get(s, "items");
        k = json_object_get(s, "minItems");
        if (k != NULL && n < json_integer_value(k))
            gr_errs_add(r->errs, r->a, ptr, "must have at least %lld items",
                        (long long)json_integer_value(k));
        k = json_object_get(s, "maxItems");
        if (k != NULL && n > json_integer_value(k))
            gr_errs_add(r->errs, r->a, ptr, "must have at most %lld items",
                        (long long)json_integer_value(k));
        if (items != NULL) {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e)
            {
                validate(r, items, e, gr_json_ptr_idx(r->a, ptr, i));
            }
        }
    }
    if (json_is_object(v)) {
        json_t *props = json_object_get(s, "properties");
        json_t *req = json_object_get(s, "required");
        json_t *addl = json_object_get(s, "additionalProperties");
        const char *key;
        json_t *e;
        size_t i;

        if (req != NULL)
            json_array_foreach(req, i, e)
            {
                if (json_object_get(v, json_string_value(e)) == NULL)
                    gr_errs_add(r->errs, r->a, gr_json_ptr_key(r->a, ptr, json_string_value(e)),
                                "is required");
            }
        json_object_foreach(v, key, e)
        {
            json_t *ps = props ? json_object_get(props, key) : NULL;
            if (ps != NULL)
                validate(r, ps, e, gr_json_ptr_key(r->a, ptr, key));
            else if (json_is_false(addl))
                gr_errs_add(r->errs, r->a, gr_json_ptr_key(r->a, ptr, key),
                            "is not allowed by the schema");
        }
    }
}

int eb_schema_check(struct gr_db_conn *db, struct gr_arena *a, struct gr_errs *errs,
                    const char *type, json_t *data, const char *ptr)
{
    struct gr_json_rd r = { a, errs };
    struct gr_db_rows *rows = NULL;
    size_t before = errs->n + errs->dropped;
    json_t *schema;
    int rc;

    rc = gr_db_query(db, a, "SELECT schema FROM event_schemas WHERE type = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(type) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0)
        return 0;
    schema = json_loads(gr_db_text(rows, 0, 0), 0, NULL);
    if (schema == NULL)
        return GR_EINTERNAL;
    eb_own(a, schema);
    validate(&r, schema, data, ptr);
    return errs->n + errs->dropped > before ? GR_EVALID : 0;
}

/* ---- handlers ------------------------------------------------------------------------------ */

static json_t *schema_json(struct gr_arena *a, const char *type, const char *schema,
                           long long version, const char *updated_at)
{
    json_t *s = json_loads(schema, 0, NULL);

    if (s == NULL)
        s = json_object();
    return json_pack("{s:s,s:I,s:o,s:s}", "type", type, "version", (json_int_t)version, "schema", s,
                     "updated_at", updated_at);
    (void)a;
}

int eb_schemas_put(struct gr_req *req, struct gr_resp *resp)
{
    const char *type = gr_req_param(req, "type");
    struct gr_json_rd r = eb_rd(req, resp);
    struct gr_db_rows *rows = NULL;
    char now[GR_TIME_STR_LEN];
    struct gr_str text;
    long long version = 1;
    int rc;

    if (!eb_type_valid(type))
        return gr_resp_problem(req, resp, GR_EVALID, NULL,
                               "the type in the path must match ^[a-z0-9]+(\\.[a-z0-9_]+)+$");
    check_schema(&r, req->json, "");
    if (resp->errs.n > 0)
        return gr_resp_problem(req, resp, GR_EVALID, "unsupported_schema",
                               "the schema uses something this registry does not enforce");
    if (gr_json_dump(req->arena, req->json, &text) < 0)
        return GR_EINTERNAL;
    eb_now(now);
    rc = gr_db_query(req->db, req->arena, "SELECT version FROM event_schemas WHERE type = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(type) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) > 0) {
        version = gr_db_int(rows, 0, 0) + 1;
        rc = gr_db_exec(req->db,
                        "UPDATE event_schemas SET schema = $2, version = $3, updated_at = $4"
                        " WHERE type = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(type), GR_DB_TEXT(text.ptr),
                                              GR_DB_INT(version), GR_DB_TEXT(now) },
                        4, NULL);
    } else {
        rc = gr_db_exec(req->db,
                        "INSERT INTO event_schemas (type, schema, version, updated_at)"
                        " VALUES ($1, $2, $3, $4)",
                        (struct gr_db_val[]){ GR_DB_TEXT(type), GR_DB_TEXT(text.ptr),
                                              GR_DB_INT(version), GR_DB_TEXT(now) },
                        4, NULL);
    }
    if (rc == GR_ECONFLICT)
        return GR_EBUSY; /* a concurrent first PUT won: retry as a replacement */
    if (rc < 0)
        return rc;
    gr_resp_json(resp, version == 1 ? 201 : 200,
                 schema_json(req->arena, type, text.ptr, version, now));
    return 0;
}

int eb_schemas_get(struct gr_req *req, struct gr_resp *resp)
{
    const char *type = gr_req_param(req, "type");
    struct gr_db_rows *rows = NULL;
    int rc;

    if (!eb_type_valid(type))
        return gr_resp_problem(req, resp, GR_EVALID, NULL,
                               "the type in the path must match ^[a-z0-9]+(\\.[a-z0-9_]+)+$");
    rc = gr_db_query(req->db, req->arena,
                     "SELECT schema, version, updated_at FROM event_schemas WHERE type = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(type) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no schema for this type");
    gr_resp_json(resp, 200,
                 schema_json(req->arena, type, gr_db_text(rows, 0, 0), gr_db_int(rows, 0, 1),
                             gr_db_text(rows, 0, 2)));
    return 0;
}
