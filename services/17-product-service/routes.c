/*
 * routes.c - the product service's route table (STYLE R19). The core enforces each route's
 * flags before the handler runs: permission (401/403), allowed query parameters (422), JSON
 * body (415/400/413) and the transaction that wraps every write.
 */
#include "product.h"

#define P          "/api/v1/products"
#define C          "/api/v1/categories"
#define LIST_QUERY "category,brand,min_price,max_price,status,q,sort,limit,cursor"
#define W_JSON     (GR_R_JSON | GR_R_TX)
#define W_JSON_IK  (W_JSON | GR_R_IK) /* creates honour Idempotency-Key */

/* clang-format off */
const struct gr_route product_routes[] = {
    {"GET",    P,                          products_list,         GR_R_PUBLIC, NULL, LIST_QUERY, 0},
    {"POST",   P,                          products_create,       W_JSON_IK, "products:write", NULL, 0},
    {"GET",    P "/variants",              variants_batch_get,    GR_R_PUBLIC, NULL, "ids", 0},
    {"GET",    P "/{id}",                  products_get,          GR_R_PUBLIC, NULL, NULL, 0},
    {"PATCH",  P "/{id}",                  products_patch,        W_JSON, "products:write", NULL, 0},
    {"DELETE", P "/{id}",                  products_delete,       GR_R_TX, "products:write", NULL, 0},
    {"POST",   P "/{id}/variants",         variants_create,       W_JSON_IK, "products:write", NULL, 0},
    {"PATCH",  P "/{id}/variants/{vid}",   variants_patch,        W_JSON, "products:write", NULL, 0},
    {"DELETE", P "/{id}/variants/{vid}",   variants_delete,       GR_R_TX, "products:write", NULL, 0},
    {"POST",   P "/{id}/images",           products_image_add,    W_JSON_IK, "products:write", NULL, 0},
    {"DELETE", P "/{id}/images/{file_id}", products_image_delete, GR_R_TX, "products:write", NULL, 0},
    {"GET",    C,                          categories_list,       GR_R_PUBLIC, NULL, "parent_id,limit,cursor", 0},
    {"POST",   C,                          categories_create,     W_JSON_IK, "categories:write", NULL, 0},
    {"GET",    C "/{id}",                  categories_get,        GR_R_PUBLIC, NULL, NULL, 0},
    {"PATCH",  C "/{id}",                  categories_patch,      W_JSON, "categories:write", NULL, 0},
    {"DELETE", C "/{id}",                  categories_delete,     GR_R_TX, "categories:write", NULL, 0},
};
/* clang-format on */

_Static_assert(sizeof(product_routes) / sizeof(product_routes[0]) == PRODUCT_NROUTES,
               "PRODUCT_NROUTES must match the route table");
