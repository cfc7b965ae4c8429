#!/usr/bin/env node
/*
 * launch.js - test double [TD] of an OAuth 2 / OpenID Connect provider (Google-like, and the
 * GitHub user API) for 05-auth-service's OAuth login tests, on npm oauth2-mock-server. It is
 * a double and never presented as the real provider; it binds 127.0.0.1 only.
 *
 * Environment:
 *   MOCK_PORT       port to listen on (default 0: any free port)
 *   MOCK_PORT_FILE  where to write the bound port once listening (the test waits for it)
 *   MOCK_ALG        signing key algorithm: RS256 (default) or ES256
 *
 * The provider is oauth2-mock-server's (/authorize, /token with PKCE, /jwks, /userinfo,
 * /.well-known/openid-configuration), plus:
 *   GET  /user, /user/emails   GitHub's API shape, for a bearer access token this double issued
 *   POST /_control             JSON {claims, faults, github}: replaces the scenario
 *                              claims: merged into the next id_tokens (null deletes a claim)
 *                              faults: token_status (the token endpoint's status),
 *                                      token_body (raw text sent instead of the mock's),
 *                                      token_delay_ms, jwks_status, id_token ("bad_signature" |
 *                                      "alg_none" | "alg_hs256" | "unknown_kid": a tampered
 *                                      id_token)
 *                              github: {user: {...}, emails: [...]}
 *   GET  /_control/requests    the token requests received so far (form fields and whether
 *                              an Authorization header came)
 * Faults apply until the next POST /_control.
 */
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const express = require('express');
const { OAuth2Server } = require('oauth2-mock-server');

const host = '127.0.0.1';
const port = Number(process.env.MOCK_PORT || 0);
const alg = process.env.MOCK_ALG || 'RS256';

let scenario = { claims: {}, faults: {}, github: {} };
const tokenRequests = [];
const issuedAccessTokens = new Set();

function b64url(s) {
  return Buffer.from(s).toString('base64url');
}

function bearer(req) {
  const m = /^Bearer (.+)$/.exec(req.headers.authorization || '');
  return m && issuedAccessTokens.has(m[1]) ? m[1] : null;
}

async function main() {
  const server = new OAuth2Server();
  await server.issuer.keys.generate(alg);
  const service = server.service;

  // id_tokens are the tokens without a scope claim (the access token always carries one).
  service.on('beforeTokenSigning', (token) => {
    if ('scope' in token.payload) return;
    for (const [k, v] of Object.entries(scenario.claims || {})) {
      if (v === null) delete token.payload[k];
      else token.payload[k] = v;
    }
  });

  service.on('beforeResponse', (resp) => {
    const f = scenario.faults || {};
    const body = resp.body;
    if (body && body.access_token) issuedAccessTokens.add(body.access_token);
    if (body && body.id_token && f.id_token) {
      const [h, p, s] = body.id_token.split('.');
      if (f.id_token === 'bad_signature') {
        // Same header and signature, claims changed: the signature no longer matches.
        const claims = JSON.parse(Buffer.from(p, 'base64url').toString());
        claims.email = 'mallory@example.com';
        body.id_token = `${h}.${b64url(JSON.stringify(claims))}.${s}`;
      } else if (f.id_token === 'alg_none') {
        body.id_token = `${b64url(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${p}.`;
      } else if (f.id_token === 'alg_hs256') {
        // The classic confusion: a symmetric alg in the header of an asymmetric key's token.
        const header = JSON.parse(Buffer.from(h, 'base64url').toString());
        header.alg = 'HS256';
        body.id_token = `${b64url(JSON.stringify(header))}.${p}.${s}`;
      } else if (f.id_token === 'unknown_kid') {
        const header = JSON.parse(Buffer.from(h, 'base64url').toString());
        header.kid = 'no-such-key';
        body.id_token = `${b64url(JSON.stringify(header))}.${p}.${s}`;
      }
    }
    if (f.token_status) resp.statusCode = f.token_status;
  });

  // An outer express app in front of the mock's own: control routes, the GitHub API, faults,
  // and a record of each token request (its parsed form is reused by the mock's app).
  const app = express();
  app.disable('x-powered-by');
  app.post('/_control', express.json({ limit: '1mb' }), (req, res) => {
    const s = req.body || {};
    scenario = { claims: s.claims || {}, faults: s.faults || {}, github: s.github || {} };
    res.status(204).end();
  });
  app.get('/_control/requests', (req, res) => res.json(tokenRequests));
  app.get(['/user', '/user/emails'], (req, res) => {
    if (!bearer(req)) return res.status(401).json({ message: 'Bad credentials' });
    const gh = scenario.github || {};
    return res.json(req.path === '/user' ? gh.user || {} : gh.emails || []);
  });
  app.get('/jwks', (req, res, next) => {
    const f = scenario.faults || {};
    if (f.jwks_status) return res.status(f.jwks_status).json({ error: 'injected' });
    return next();
  });
  const form = express.urlencoded({ extended: false, limit: '1mb' });
  app.post('/token', form, async (req, res, next) => {
    const f = scenario.faults || {};
    tokenRequests.push({ form: { ...req.body }, authorization: req.headers.authorization || null });
    if (f.token_delay_ms) await new Promise((r) => setTimeout(r, f.token_delay_ms));
    if (f.token_body !== undefined) {
      return res.status(f.token_status || 200).type('application/json').send(f.token_body);
    }
    return next();
  });
  app.use(service.requestHandler);
  const httpServer = http.createServer(app);
  httpServer.listen(port, host, () => {
    const bound = httpServer.address().port;
    server.issuer.url = `http://${host}:${bound}`;
    if (process.env.MOCK_PORT_FILE) {
      fs.writeFileSync(`${process.env.MOCK_PORT_FILE}.tmp`, String(bound));
      fs.renameSync(`${process.env.MOCK_PORT_FILE}.tmp`, process.env.MOCK_PORT_FILE);
    }
    process.stdout.write(`oauth2-mock listening on ${server.issuer.url}\n`);
  });
  const stop = () => {
    httpServer.close(() => process.exit(0));
    httpServer.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => {
  process.stderr.write(`oauth2-mock: ${e.stack || e}\n`);
  process.exit(1);
});
