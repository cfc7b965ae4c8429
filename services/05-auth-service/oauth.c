/*
 * oauth.c - OAuth2/OIDC login with PKCE. Being written: answers 503 until then.
 */
#include "auth.h"

int auth_oauth_authorize(struct gr_req *req, struct gr_resp *resp)
{
    return gr_resp_problem(req, resp, GR_EUNAVAIL, NULL, "not available yet");
}

int auth_oauth_callback(struct gr_req *req, struct gr_resp *resp)
{
    return gr_resp_problem(req, resp, GR_EUNAVAIL, NULL, "not available yet");
}
