// The tests' identity provider: oidc-provider (an OpenID Certified implementation) over HTTPS on a loopback port,
// configured by the JSON file named on the command line (written by tests/support/oidc_provider.py):
//
//   { "modules": ".../node_modules", "issuer": "https://localhost:PORT", "port": PORT, "cert": PEM path, "key": PEM path,
//     "users": { "<login>": { "password": "...", "name": "...", "roles": ["..."] } },
//     "web_clients": [ { "client_id", "client_secret", "redirect_uris": [...], "post_logout_redirect_uris": [...] } ],
//     "machines": { "<client_id>": { "client_secret": "...", "roles": ["..."], "ttl": seconds } },
//     "resources": { "<resource indicator>": "<audience>" }, "default_resource": "<resource indicator>" }
//
// People sign in on this provider's own form (login + password; "Cancel" answers access_denied); the grant of the
// scopes a client asks for is given without a consent page (an administrator's consent, as in Entra ID). ID tokens
// carry the person's roles in "roles"; machines get JWT access tokens (client credentials, RFC 9068) for a resource
// with their roles in "roles". PKCE is required of every client. "ready <port>" on stdout means it is listening.
import { readFileSync } from 'node:fs';
import * as https from 'node:https';
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';

const conf = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { default: Provider, errors } = await import(pathToFileURL(path.join(conf.modules, 'oidc-provider', 'lib', 'index.js')).href);

const signing = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function resourceServer(indicator, client) {
  const audience = conf.resources[indicator];
  if (!audience) return undefined;
  const machine = conf.machines[client.clientId];
  return {
    scope: 'api', audience, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } },
    accessTokenTTL: machine?.ttl ?? 600,
  };
}

const configuration = {
  clients: [
    ...conf.web_clients.map((c) => ({
      ...c, grant_types: ['authorization_code'], response_types: ['code'],
      token_endpoint_auth_method: c.client_secret ? 'client_secret_basic' : 'none',
    })),
    ...Object.entries(conf.machines).map(([id, m]) => ({
      client_id: id, client_secret: m.client_secret, grant_types: ['client_credentials'], response_types: [],
      redirect_uris: [], token_endpoint_auth_method: 'client_secret_basic',
    })),
  ],
  jwks: { keys: [{ ...signing, kid: crypto.randomUUID(), use: 'sig', alg: 'RS256' }] }, // a new key at each start
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  claims: { openid: ['sub'], profile: ['name', 'preferred_username', 'roles'], email: ['email'] },
  conformIdTokenClaims: false, // the ID token itself carries the roles, as Entra ID's does
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf ?? (client.grantTypeAllowed('client_credentials') ? conf.default_resource : undefined),
      useGrantedResource: async () => false,
      getResourceServerInfo: async (ctx, indicator, client) => {
        const info = resourceServer(indicator, client);
        if (!info) throw new errors.InvalidTarget();
        return info;
      },
    },
  },
  async extraTokenClaims(ctx, token) {
    const machine = conf.machines[token.clientId];
    return machine && !token.accountId ? { roles: machine.roles } : undefined;
  },
  async findAccount(ctx, id) {
    const user = conf.users[id];
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, name: user.name, preferred_username: id, email: `${id}@hospital.test`, roles: user.roles };
      },
    };
  },
  async loadExistingGrant(ctx) {
    // every scope and claim the client asks for is granted (no consent page)
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    if (!ctx.oidc.session.accountId) return undefined;
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid profile email');
    grant.addOIDCClaims(['sub', 'name', 'preferred_username', 'roles', 'email']);
    await grant.save();
    return grant;
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: {
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? 600,
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? 600,
    IdToken: 600, Interaction: 600, Session: 3600, Grant: 3600, AuthorizationCode: 60,
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = `<!doctype html><title>Error</title><h1 id="idp-error">${escape(out.error)}</h1><p>${escape(out.error_description || '')}</p>`;
  },
};

const provider = new Provider(conf.issuer, configuration);
provider.on('server_error', (ctx, err) => console.error('server_error', err));

function loginPage(res, uid, client, error) {
  res.writeHead(error ? 401 : 200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!doctype html><html><head><title>Test identity provider: sign in</title></head><body>
<h1>Sign in to ${escape(client)}</h1>${error ? `<p id="login-error">${escape(error)}</p>` : ''}
<form id="login-form" method="post" action="/interaction/${uid}/login">
<input id="login" name="login" autofocus> <input id="password" name="password" type="password">
<button id="submit" type="submit">Sign in</button></form>
<p><a id="cancel" href="/interaction/${uid}/abort">Cancel</a></p></body></html>`);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return new URLSearchParams(body);
}

async function interaction(req, res, parts) {
  const [, , uid, step] = parts;
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  if (step === undefined && req.method === 'GET') {
    if (details.prompt.name === 'login') return loginPage(res, uid, details.params.client_id);
    // consent: loadExistingGrant grants everything, so this prompt only shows for a grant it could not load
    const grant = new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    grant.addOIDCScope('openid profile email');
    return provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
  }
  if (step === 'login' && req.method === 'POST') {
    const form = await readForm(req);
    const login = form.get('login') || '';
    const user = conf.users[login];
    if (!user || user.password !== form.get('password')) {
      return loginPage(res, uid, details.params.client_id, 'Wrong user name or password.');
    }
    return provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
  }
  if (step === 'abort') {
    return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'the user cancelled the sign-in' },
      { mergeWithLastSubmission: false });
  }
  res.writeHead(404);
  res.end();
}

const callback = provider.callback();
const server = https.createServer({ cert: readFileSync(conf.cert), key: readFileSync(conf.key) }, (req, res) => {
  const parts = new URL(req.url, conf.issuer).pathname.split('/');
  if (parts[1] === 'interaction') {
    interaction(req, res, parts).catch((err) => {
      console.error('interaction error', err);
      if (!res.headersSent) { res.writeHead(400, { 'content-type': 'text/plain' }); }
      res.end(String(err.message || err));
    });
    return;
  }
  callback(req, res);
});
server.listen(conf.port, '127.0.0.1', () => console.log(`ready ${server.address().port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
