/*
 * categories.c - the category tree. Each category stores its materialised path
 * "/<root id>/…/<own id>/", so a subtree is one prefix match (the product list's category
 * filter uses it too). Moving a category rewrites the paths of its whole subtree in the
 * route's transaction; moving it under itself is a 422 category_cycle, and deleting one that
 * still has products or children is a 409 category_not_empty.
 */
#include <string.h>

#include "gr/id.h"
#include "gr/time.h"
#include "product.h"

#define CAT_PATH_STEP (GR_ID_LEN) /* one "<36-char id>/" segment */

int categories_list(struct gr_req *req, struct gr_resp *resp)
{
    const char *parent = gr_req_query(req, "parent_id");
    const char *cursor = gr_req_query(req, "cursor");
    struct gr_db_val key = GR_DB_NULL, kid = GR_DB_NULL;
    struct gr_db_rows *rows = NULL;
    const char *scope, *next = NULL;
    size_t n;
    bool has_more;
    int limit = 20;
    json_t *data, *body;
    int rc;

    if (gr_req_limit(req, resp, &limit) < 0)
        limit = 20;
    if (parent != NULL && strcmp(parent, "root") != 0 && !gr_id_valid(parent, strlen(parent)))
        gr_resp_field_error(req, resp, "query.parent_id", "must be a category id or 'root'");
    if (resp->errs.n > 0)
        return GR_EVALID;
    scope = gr_arena_printf(req->arena, "GET /api/v1/categories\nparent_id=%s",
                            parent != NULL ? parent : "");
    if (cursor != NULL && product_cursor_read(req, scope, cursor, false, &key, &kid) < 0)
        return gr_resp_problem(req, resp, GR_EINVAL, "invalid_cursor",
                               "the cursor is invalid for this list");
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " CATEGORY_COLS " FROM categories c"
                     " WHERE (CAST($1 AS TEXT) IS NULL"
                     " OR (CAST($1 AS TEXT) = 'root' AND c.parent_id IS NULL)"
                     " OR c.parent_id = CAST($1 AS TEXT))"
                     " AND (CAST($2 AS TEXT) IS NULL"
                     " OR (c.created_at, c.id) < (CAST($2 AS TEXT), CAST($3 AS TEXT)))"
                     " ORDER BY c.created_at DESC, c.id DESC LIMIT CAST($4 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_TEXT(parent), key, kid, GR_DB_INT(limit + 1) }, 4,
                     &rows);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(rows);
    has_more = n > (size_t)limit;
    if (has_more) {
        n = (size_t)limit;
        rc = product_cursor_make(req, scope, json_string(gr_db_text(rows, n - 1, 6)),
                                 gr_db_text(rows, n - 1, 0), &next);
        if (rc < 0)
            return rc;
    }
    data = json_array();
    body =
        product_own(req, json_pack("{s:o,s:b,s:o}", "data", data, "has_more", has_more,
                                   "next_cursor", next != NULL ? json_string(next) : json_null()));
    for (size_t i = 0; i < n; i++)
        json_array_append(data, product_category_json(req, rows, i));
    gr_resp_json(resp, 200, json_incref(body));
    return 0;
}

/* Category by id (or by slug when @key is not a UUID) into *@rows; GR_ENOTFOUND if absent. */
static int fetch_category(struct gr_req *req, const char *key, struct gr_db_rows **rows)
{
    int rc;

    if (gr_id_valid(key, strlen(key)))
        rc = gr_db_query(req->db, req->arena,
                         "SELECT " CATEGORY_COLS " FROM categories c WHERE c.id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(key) }, 1, rows);
    else
        rc = gr_db_query(req->db, req->arena,
                         "SELECT " CATEGORY_COLS " FROM categories c WHERE c.slug = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(key) }, 1, rows);
    if (rc < 0)
        return rc;
    return gr_db_nrows(*rows) == 1 ? 0 : GR_ENOTFOUND;
}

int categories_get(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    rc = fetch_category(req, gr_req_param(req, "id"), &rows);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, json_incref(product_category_json(req, rows, 0)));
    return 0;
}

struct category_in {
    const char *name, *slug, *parent_id;
};

static void read_category(const struct gr_json_rd *r, json_t *doc, struct category_in *in)
{
    memset(in, 0, sizeof(*in));
    (void)gr_json_str(r, doc, "", "name", GR_JSON_REQUIRED, 1, PRODUCT_CAT_NAME_MAX, &in->name,
                      NULL);
    product_read_slug(r, doc, "", "slug", GR_JSON_REQUIRED, &in->slug, NULL);
    product_read_uuid(r, doc, "", "parent_id", GR_JSON_NULLABLE, &in->parent_id, NULL);
}

/* The path of parent @id into *@path; a 422 at /parent_id when it does not exist. */
static int parent_path(struct gr_req *req, struct gr_resp *resp, const char *id, const char **path)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    *path = "/";
    if (id == NULL)
        return 0;
    rc = gr_db_query(req->db, req->arena, "SELECT path FROM categories WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 1) {
        *path = gr_db_text(rows, 0, 0);
        return 0;
    }
    gr_resp_field_error(req, resp, "/parent_id", "no such category");
    return GR_EVALID;
}

/* A 409 slug_taken: the UNIQUE constraint on categories.slug decides (see products.c). */
static int slug_taken(struct gr_req *req, struct gr_resp *resp, const char *slug)
{
    gr_resp_field_error(req, resp, "/slug", "is already taken");
    return gr_resp_problem(req, resp, GR_ECONFLICT, "slug_taken",
                           "category slug '%s' is already taken", slug);
}

/* 422 at /parent_id when a path of @len characters would be deeper than the tree allows. */
static int check_depth(struct gr_req *req, struct gr_resp *resp, size_t len)
{
    if ((len - 1) / CAT_PATH_STEP <= PRODUCT_CAT_DEPTH_MAX)
        return 0;
    gr_resp_field_error(req, resp, "/parent_id", "the tree would be deeper than %d levels",
                        PRODUCT_CAT_DEPTH_MAX);
    return GR_EVALID;
}

int categories_create(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "name", "slug", "parent_id", NULL };
    struct gr_json_rd r = product_rd(req, resp);
    struct category_in in;
    struct gr_db_rows *rows = NULL;
    const char *ppath = NULL, *path;
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN];
    json_t *c;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    read_category(&r, req->json, &in);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = parent_path(req, resp, in.parent_id, &ppath);
    if (rc < 0)
        return rc;
    gr_id_new(id);
    path = gr_arena_printf(req->arena, "%s%s/", ppath, id);
    rc = check_depth(req, resp, strlen(path));
    if (rc < 0)
        return rc;
    product_now(now);
    rc = gr_db_exec(req->db,
                    "INSERT INTO categories (id, parent_id, name, slug, path, version, created_at,"
                    " updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6, $6)",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(in.parent_id),
                                          GR_DB_TEXT(in.name), GR_DB_TEXT(in.slug),
                                          GR_DB_TEXT(path), GR_DB_TEXT(now) },
                    6, NULL);
    if (rc == GR_ECONFLICT)
        return slug_taken(req, resp, in.slug);
    if (rc < 0)
        return rc;
    rc = fetch_category(req, id, &rows);
    if (rc < 0)
        return rc;
    c = product_category_json(req, rows, 0);
    product_created(req, resp, gr_arena_printf(req->arena, "/api/v1/categories/%s", id), c);
    return 0;
}

/*
 * Moves the subtree under @old_path (the category itself excluded) to @new_path by rewriting
 * the prefix of every descendant's path.
 */
static int move_subtree(struct gr_req *req, const char *id, const char *old_path,
                        const char *new_path, const char *now)
{
    return gr_db_exec(
        req->db,
        "UPDATE categories SET path = CAST($1 AS TEXT) || substr(path, CAST($2 AS INTEGER)),"
        " version = version + 1, updated_at = $3"
        " WHERE path LIKE (CAST($4 AS TEXT) || '%') AND id <> $5",
        (struct gr_db_val[]){ GR_DB_TEXT(new_path), GR_DB_INT((long long)strlen(old_path) + 1),
                              GR_DB_TEXT(now), GR_DB_TEXT(old_path), GR_DB_TEXT(id) },
        5, NULL);
}

/* Checks a move of category @id (path @old_path) under @parent and computes its new path. */
static int plan_move(struct gr_req *req, struct gr_resp *resp, const char *id, const char *old_path,
                     const char *parent, const char **new_path)
{
    struct gr_db_rows *rows = NULL;
    const char *ppath = NULL;
    int rc;

    rc = parent_path(req, resp, parent, &ppath);
    if (rc < 0)
        return rc;
    if (strncmp(ppath, old_path, strlen(old_path)) == 0) {
        gr_resp_field_error(req, resp, "/parent_id", "is the category itself or one below it");
        return gr_resp_problem(req, resp, GR_EVALID, "category_cycle",
                               "a category cannot move into its own subtree");
    }
    *new_path = gr_arena_printf(req->arena, "%s%s/", ppath, id);
    /* The deepest descendant decides whether the moved tree still fits. */
    rc = gr_db_query(
        req->db, req->arena,
        "SELECT MAX(length(path)) FROM categories WHERE path LIKE (CAST($1 AS TEXT) || '%')",
        (struct gr_db_val[]){ GR_DB_TEXT(old_path) }, 1, &rows);
    if (rc < 0)
        return rc;
    return check_depth(req, resp,
                       (size_t)gr_db_int(rows, 0, 0) - strlen(old_path) + strlen(*new_path));
}

int categories_patch(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "name", "slug", "parent_id", "version", NULL };
    struct gr_json_rd r = product_rd(req, resp);
    struct category_in in;
    struct gr_db_rows *rows = NULL;
    const char *id, *old_path, *old_parent, *new_path;
    char now[GR_TIME_STR_LEN];
    long long version = 0, have, changes = 0;
    bool has_version = false;
    json_t *cur, *before, *doc, *patch;
    int rc;

    rc = fetch_category(req, gr_req_param(req, "id"), &rows);
    if (rc < 0)
        return rc;
    id = gr_db_text(rows, 0, 0);
    old_parent = gr_db_text(rows, 0, 1);
    old_path = gr_db_text(rows, 0, 4);
    have = gr_db_int(rows, 0, 5);
    if (gr_json_only(&r, req->json, "", keys) < 0 && !json_is_object(req->json))
        return GR_EVALID;
    (void)gr_json_int(&r, req->json, "", "version", GR_JSON_OPTIONAL, 1, GR_JSON_MAX_INT, &version,
                      &has_version);
    cur = product_category_json(req, rows, 0);
    before = product_own(req, json_pack("{s:O,s:O}", "name", json_object_get(cur, "name"), "slug",
                                        json_object_get(cur, "slug")));
    if (old_parent != NULL)
        json_object_set_new(before, "parent_id", json_string(old_parent));
    doc = product_own(req, json_deep_copy(before));
    patch = product_own(req, json_deep_copy(req->json));
    json_object_del(patch, "version");
    if (gr_json_merge_patch(doc, patch) < 0)
        return GR_EINTERNAL;
    read_category(&r, doc, &in);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = product_check_version(req, resp, has_version, version, have);
    if (rc < 0)
        return rc;
    if (json_equal(before, doc)) {
        gr_resp_json(resp, 200, json_incref(cur));
        return 0;
    }
    new_path = old_path;
    if ((in.parent_id == NULL) != (old_parent == NULL) ||
        (in.parent_id != NULL && strcmp(in.parent_id, old_parent) != 0)) {
        rc = plan_move(req, resp, id, old_path, in.parent_id, &new_path);
        if (rc < 0)
            return rc;
    }
    product_now(now);
    if (strcmp(new_path, old_path) != 0) {
        rc = move_subtree(req, id, old_path, new_path, now);
        if (rc < 0)
            return rc;
    }
    rc = gr_db_exec(req->db,
                    "UPDATE categories SET name = $3, slug = $4, parent_id = $5, path = $6,"
                    " version = version + 1, updated_at = $7 WHERE id = $1 AND version = $2",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_INT(have), GR_DB_TEXT(in.name),
                                          GR_DB_TEXT(in.slug), GR_DB_TEXT(in.parent_id),
                                          GR_DB_TEXT(new_path), GR_DB_TEXT(now) },
                    7, &changes);
    if (rc == GR_ECONFLICT)
        return slug_taken(req, resp, in.slug);
    if (rc < 0)
        return rc;
    if (changes != 1)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "version_conflict",
                               "the category changed concurrently");
    rc = fetch_category(req, id, &rows);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200, json_incref(product_category_json(req, rows, 0)));
    return 0;
}

int categories_delete(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    const char *id;
    int rc;

    rc = fetch_category(req, gr_req_param(req, "id"), &rows);
    if (rc < 0)
        return rc;
    id = gr_db_text(rows, 0, 0);
    rc = gr_db_query(req->db, req->arena,
                     "SELECT (SELECT COUNT(*) FROM products WHERE category_id = $1),"
                     " (SELECT COUNT(*) FROM categories WHERE parent_id = $1)",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_int(rows, 0, 0) > 0 || gr_db_int(rows, 0, 1) > 0)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "category_not_empty",
                               "the category still has %lld products and %lld subcategories",
                               gr_db_int(rows, 0, 0), gr_db_int(rows, 0, 1));
    rc = gr_db_exec(req->db, "DELETE FROM categories WHERE id = $1",
                    (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, NULL);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 204, NULL);
    return 0;
}
