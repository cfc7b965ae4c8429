/*
 * test_docs.c - docs.c's merge: paths kept only where the routing table sends them to their
 * service, components namespaced per service with every internal $ref, discriminator mapping
 * and security requirement rewritten, operations tagged per service, a failed service listed
 * with its error, path conflicts reported.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "gr/status.h"

#include "../../docs.h"
#include "../../gw.h"
#include "../../h1.h"

static const char table_doc[] = "{\"routes\":["
                                "{\"prefix\":\"/api/v1/products\",\"service\":\"product-service\","
                                " \"instances\":[{\"host\":\"127.0.0.1\",\"port\":8007}]},"
                                "{\"prefix\":\"/api/v1/users\",\"service\":\"user-service\","
                                " \"instances\":[{\"host\":\"127.0.0.1\",\"port\":8002}]}]}";

static const char products[] =
    "{\"openapi\":\"3.1.0\",\"info\":{\"title\":\"product-service\",\"version\":\"1.2.3\"},"
    "\"servers\":[{\"url\":\"http://127.0.0.1:8007\"}],"
    "\"security\":[{\"bearer\":[]}],"
    "\"paths\":{"
    " \"/api/v1/products\":{\"get\":{\"tags\":[\"products\"],\"servers\":[{\"url\":\"x\"}],"
    "   \"responses\":{\"200\":{\"content\":{\"application/json\":{\"schema\":"
    "   {\"$ref\":\"#/components/schemas/Product\"}}}},"
    "   \"404\":{\"$ref\":\"#/components/responses/NotFound\"}}},"
    "   \"post\":{\"security\":[],\"responses\":{}}},"
    " \"/api/v1/users/stolen\":{\"get\":{\"responses\":{}}},"
    " \"/health\":{\"get\":{\"responses\":{}}}},"
    "\"components\":{"
    " \"schemas\":{\"Product\":{\"oneOf\":[{\"$ref\":\"#/components/schemas/Problem\"}],"
    "   "
    "\"discriminator\":{\"propertyName\":\"k\",\"mapping\":{\"p\":\"#/components/schemas/"
    "Problem\"}},"
    "   \"properties\":{\"$ref\":{\"type\":\"string\"},\"ext\":{\"$ref\":\"other.json#/X\"}}},"
    "  \"Problem\":{\"type\":\"object\"}},"
    " \"responses\":{\"NotFound\":{\"description\":\"nf\",\"content\":{\"application/json\":"
    "   {\"schema\":{\"$ref\":\"#/components/schemas/Problem\"}}}}},"
    " \"securitySchemes\":{\"bearer\":{\"type\":\"http\",\"scheme\":\"bearer\"}}}}";

static const char users[] =
    "{\"openapi\":\"3.1.0\",\"info\":{\"title\":\"user-service\",\"version\":\"0.1.0\"},"
    "\"paths\":{\"/api/v1/users/me\":{\"get\":{\"security\":[{\"bearer\":[\"users:read\"]}],"
    "   \"responses\":{\"200\":{\"content\":{\"application/json\":{\"schema\":"
    "   {\"$ref\":\"#/components/schemas/Problem\"}}}}}}},"
    " \"/api/v1/products\":{\"get\":{\"responses\":{}}}},"
    "\"components\":{\"schemas\":{\"Problem\":{\"type\":\"string\"}},"
    " \"securitySchemes\":{\"bearer\":{\"type\":\"http\",\"scheme\":\"bearer\"}}}}";

static const char self_doc[] =
    "{\"openapi\":\"3.1.0\",\"info\":{\"title\":\"api-gateway\",\"version\":\"0.1.0\"},"
    "\"paths\":{\"/docs\":{\"get\":{\"security\":[],\"responses\":{}}}}}";

/* The value at a JSON Pointer without its leading '/' ("a/b~1c/0"), or NULL. */
static json_t *at(json_t *doc, const char *ptr)
{
    char buf[512], key[512];
    char *save = NULL, *part;
    json_t *n = doc;

    snprintf(buf, sizeof(buf), "%s", ptr);
    for (part = strtok_r(buf, "/", &save); part && n; part = strtok_r(NULL, "/", &save)) {
        size_t k = 0;

        for (const char *c = part; *c && k < sizeof(key) - 1; c++) {
            if (c[0] == '~' && (c[1] == '0' || c[1] == '1')) {
                key[k++] = c[1] == '1' ? '/' : '~';
                c++;
            } else {
                key[k++] = *c;
            }
        }
        key[k] = '\0';
        n = json_is_array(n) ? json_array_get(n, (size_t)strtol(key, NULL, 10))
                             : json_object_get(n, key);
    }
    return n;
}

static const char *str_at(json_t *doc, const char *ptr)
{
    return json_string_value(at(doc, ptr));
}

static json_t *svc_entry(json_t *doc, const char *name)
{
    json_t *svcs = json_object_get(doc, "x-gravity-services"), *e;
    size_t i;

    json_array_foreach(svcs, i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "service")), name) == 0)
            return e;
    }
    return NULL;
}

static int teardown(void **state)
{
    (void)state;
    gw_table_clear();
    gw_breakers_clear();
    return 0;
}

static void test_merge(void **state)
{
    char err[256];
    struct gw_table *t;
    json_error_t jerr;
    json_t *p = json_loads(products, 0, &jerr), *u = json_loads(users, 0, &jerr);
    json_t *s = json_loads(self_doc, 0, &jerr), *m, *paths;
    struct gw_docs_src src[4] = {
        { "api-gateway", s, "", NULL, true },
        { "product-service", p, "127.0.0.1:8007", NULL, false },
        { "user-service", u, "127.0.0.1:8002", NULL, false },
        { "cart-service", NULL, "127.0.0.1:9", "connect refused", false },
    };

    (void)state;
    assert_non_null(p);
    assert_non_null(u);
    assert_non_null(s);
    assert_int_equal(gw_table_load(table_doc, strlen(table_doc), err, sizeof(err)), 0);
    t = gw_table_get();
    m = gw_docs_merge(src, 4, t, "9.9.9");
    gw_table_put(t);

    assert_string_equal(str_at(m, "openapi"), "3.1.0");
    assert_string_equal(str_at(m, "info/version"), "9.9.9");
    assert_string_equal(str_at(m, "servers/0/url"), "/");
    paths = json_object_get(m, "paths");
    /* routed paths only, each from the service the table sends it to */
    assert_non_null(json_object_get(paths, "/api/v1/products"));
    assert_non_null(json_object_get(paths, "/api/v1/users/me"));
    assert_non_null(json_object_get(paths, "/docs"));
    assert_null(json_object_get(paths, "/health"));
    assert_null(json_object_get(paths, "/api/v1/users/stolen"));
    assert_int_equal(json_object_size(paths), 3);
    /* the self source keeps every path, tagged with the gateway */
    assert_string_equal(str_at(m, "paths/~1docs/get/tags/0"), "api-gateway");
    assert_string_equal(str_at(svc_entry(m, "api-gateway"), "status"), "ok");
    json_decref(m);
    json_decref(p);
    json_decref(u);
    json_decref(s);
}

static void test_rewrite(void **state)
{
    char err[256];
    struct gw_table *t;
    json_error_t jerr;
    json_t *p = json_loads(products, 0, &jerr), *u = json_loads(users, 0, &jerr), *m, *e;
    json_t *op;
    struct gw_docs_src src[3] = {
        { "product-service", p, "127.0.0.1:8007", NULL, false },
        { "user-service", u, "127.0.0.1:8002", NULL, false },
        { "cart-service", NULL, "127.0.0.1:9", "connect refused", false },
    };

    (void)state;
    assert_int_equal(gw_table_load(table_doc, strlen(table_doc), err, sizeof(err)), 0);
    t = gw_table_get();
    m = gw_docs_merge(src, 3, t, "1");
    gw_table_put(t);

    op = json_object_get(json_object_get(json_object_get(m, "paths"), "/api/v1/products"), "get");
    assert_non_null(op);
    assert_string_equal(str_at(op, "tags/0"), "product-service");
    assert_int_equal(json_array_size(json_object_get(op, "tags")), 1);
    assert_null(json_object_get(op, "servers"));
    assert_string_equal(str_at(op, "responses/200/content/application~1json/schema/$ref"),
                        "#/components/schemas/product-service.Product");
    assert_string_equal(str_at(op, "responses/404/$ref"),
                        "#/components/responses/product-service.NotFound");
    /* the document's security goes onto operations without their own, namespaced */
    assert_non_null(at(op, "security/0/product-service.bearer"));
    /* an explicit empty security (public) stays empty */
    op = json_object_get(json_object_get(json_object_get(m, "paths"), "/api/v1/products"), "post");
    assert_int_equal(json_array_size(json_object_get(op, "security")), 0);
    /* an operation's own security is namespaced, scopes kept */
    op = json_object_get(json_object_get(json_object_get(m, "paths"), "/api/v1/users/me"), "get");
    assert_string_equal(str_at(op, "security/0/user-service.bearer/0"), "users:read");
    assert_string_equal(str_at(op, "responses/200/content/application~1json/schema/$ref"),
                        "#/components/schemas/user-service.Problem");

    /* components: namespaced, no collision, refs inside rewritten, others untouched */
    e = at(m, "components/schemas");
    assert_string_equal(str_at(e, "product-service.Problem/type"), "object");
    assert_string_equal(str_at(e, "user-service.Problem/type"), "string");
    assert_null(json_object_get(e, "Problem"));
    assert_string_equal(str_at(e, "product-service.Product/oneOf/0/$ref"),
                        "#/components/schemas/product-service.Problem");
    assert_string_equal(str_at(e, "product-service.Product/discriminator/mapping/p"),
                        "#/components/schemas/product-service.Problem");
    assert_string_equal(str_at(e, "product-service.Product/properties/$ref/type"), "string");
    assert_string_equal(str_at(e, "product-service.Product/properties/ext/$ref"), "other.json#/X");
    assert_string_equal(str_at(m, "components/responses/product-service.NotFound/content/"
                                  "application~1json/schema/$ref"),
                        "#/components/schemas/product-service.Problem");
    assert_non_null(at(m, "components/securitySchemes/product-service.bearer"));
    assert_non_null(at(m, "components/securitySchemes/user-service.bearer"));

    /* x-gravity-services: ok with counts, the conflict, the failure */
    e = svc_entry(m, "product-service");
    assert_string_equal(str_at(e, "status"), "ok");
    assert_int_equal(json_integer_value(json_object_get(e, "paths")), 1);
    assert_int_equal(json_integer_value(json_object_get(e, "unrouted_paths")), 2);
    assert_string_equal(str_at(e, "version"), "1.2.3");
    e = svc_entry(m, "user-service");
    assert_int_equal(json_integer_value(json_object_get(e, "paths")), 1);
    /* user-service's /api/v1/products is not routed to it: skipped, not a conflict */
    assert_int_equal(json_integer_value(json_object_get(e, "unrouted_paths")), 1);
    e = svc_entry(m, "cart-service");
    assert_string_equal(str_at(e, "status"), "error");
    assert_string_equal(str_at(e, "error"), "connect refused");
    assert_int_equal(json_integer_value(json_object_get(e, "paths")), 0);
    /* one tag per service that answered */
    assert_int_equal(json_array_size(json_object_get(m, "tags")), 2);
    json_decref(m);
    json_decref(p);
    json_decref(u);
}

static void test_conflict_without_table(void **state)
{
    json_error_t jerr;
    json_t *p = json_loads(products, 0, &jerr), *u = json_loads(users, 0, &jerr), *m, *e;
    struct gw_docs_src src[2] = {
        { "product-service", p, "a:1", NULL, false },
        { "user-service", u, "b:2", NULL, false },
    };

    (void)state;
    m = gw_docs_merge(src, 2, NULL, "1"); /* no table: every path, first claim wins */
    assert_non_null(json_object_get(json_object_get(m, "paths"), "/health"));
    assert_string_equal(
        str_at(json_object_get(json_object_get(m, "paths"), "/api/v1/products"), "get/tags/0"),
        "product-service");
    e = svc_entry(m, "user-service");
    assert_string_equal(str_at(e, "conflicting_paths/0"), "/api/v1/products");
    json_decref(m);
    json_decref(p);
    json_decref(u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_merge, teardown),
        cmocka_unit_test_teardown(test_rewrite, teardown),
        cmocka_unit_test_teardown(test_conflict_without_table, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
