// A real OpenID provider for Gatehouse's SSO tests: the OpenID-Certified `oidc-provider`
// library with static test users, clients from a JSON file, PKCE required, the device
// authorization grant, its own login and consent forms, and an admin endpoint that rotates
// the signing key or shifts the provider's clock. Listens on 127.0.0.1 only and prints
// `READY http://127.0.0.1:PORT` once it serves requests. See README.md beside this file.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';


const HERE = path.dirname(fileURLToPath(import.meta.url));
const HOST = '127.0.0.1';

// ---------------------------------------------------------------- configuration
const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    issuer: { type: 'string' },
    'issuer-path': { type: 'string' },
    users: { type: 'string' },
    clients: { type: 'string' },
    jwks: { type: 'string' },
    'userinfo-claims-only': { type: 'boolean' },
    'disable-device-flow': { type: 'boolean' },
    'id-token-ttl': { type: 'string' },
    'clock-offset': { type: 'string' },
    debug: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  },
});

if (args.help) {
  process.stdout.write(`usage: node provider.js [--port N] [--issuer URL | --issuer-path /p]
       [--users FILE] [--clients FILE] [--jwks FILE] [--userinfo-claims-only]
       [--disable-device-flow] [--id-token-ttl SECONDS] [--clock-offset SECONDS] [--debug]
Environment equivalents: OIDC_PORT (or PORT), OIDC_ISSUER, OIDC_ISSUER_PATH, OIDC_USERS,
OIDC_USERS_JSON, OIDC_CLIENTS, OIDC_CLIENTS_JSON, OIDC_JWKS, OIDC_USERINFO_CLAIMS_ONLY=1,
OIDC_DISABLE_DEVICE_FLOW=1, OIDC_ID_TOKEN_TTL, OIDC_CLOCK_OFFSET, OIDC_ADMIN_TOKEN (enables
/__admin/*), OIDC_DEBUG=1 (log every request to stderr), OIDC_NODE_MODULES (where the npm
packages are; default .venv/oidc-fixture/node_modules of the checkout).
`);
  process.exit(0);
}

const env = process.env;
const flag = (name, envName) => Boolean(args[name]) || ['1', 'true', 'yes'].includes(String(env[envName] || '').toLowerCase());

function loadJson(fileOpt, fileEnv, inlineEnv, fallbackFile) {
  if (args[fileOpt]) return JSON.parse(fs.readFileSync(args[fileOpt], 'utf8'));
  if (env[inlineEnv]) return JSON.parse(env[inlineEnv]);
  if (env[fileEnv]) return JSON.parse(fs.readFileSync(env[fileEnv], 'utf8'));
  return JSON.parse(fs.readFileSync(path.join(HERE, fallbackFile), 'utf8'));
}

// The npm packages are in .venv/oidc-fixture/node_modules: scripts/install-deps.sh installs
// them there, out of the source tree that the collection's sanity tests and galaxy build copy.
// $OIDC_NODE_MODULES, or a node_modules beside this file (a hand-run `npm ci`), come first.
async function importProvider() {
  const candidates = [env.OIDC_NODE_MODULES, path.join(HERE, 'node_modules'),
    path.join(HERE, '..', '..', '.venv', 'oidc-fixture', 'node_modules')].filter(Boolean);
  for (const dir of candidates) {
    const pkgFile = path.join(dir, 'oidc-provider', 'package.json');
    if (fs.existsSync(pkgFile)) {
      const pkg = JSON.parse(fs.readFileSync(pkgFile, 'utf8'));
      let entry = pkg.exports && typeof pkg.exports === 'object' ? (pkg.exports['.'] ?? pkg.exports) : pkg.exports;
      if (entry && typeof entry === 'object') entry = entry.import ?? entry.default;
      if (typeof entry !== 'string') entry = pkg.main || 'index.js';
      const mod = await import(pathToFileURL(path.join(dir, 'oidc-provider', entry)).href);
      process.stderr.write(`oidc-provider ${pkg.version} from ${dir}\n`);
      return mod.default;
    }
  }
  throw new Error(`oidc-provider is not installed (looked in ${candidates.join(', ')}); run scripts/install-deps.sh`);
}
const Provider = await importProvider();

const port = Number(args.port ?? env.OIDC_PORT ?? env.PORT ?? 0);
const users = loadJson('users', 'OIDC_USERS', 'OIDC_USERS_JSON', 'users.json');
let clients = loadJson('clients', 'OIDC_CLIENTS', 'OIDC_CLIENTS_JSON', 'clients.json');
if (!Array.isArray(clients)) clients = [clients];
const userinfoClaimsOnly = flag('userinfo-claims-only', 'OIDC_USERINFO_CLAIMS_ONLY');
const deviceFlow = !flag('disable-device-flow', 'OIDC_DISABLE_DEVICE_FLOW');
if (!deviceFlow) {
  // Without the feature oidc-provider refuses clients registered for the grant: drop it.
  const grant = 'urn:ietf:params:oauth:grant-type:device_code';
  clients = clients.map((c) => ({ ...c, grant_types: c.grant_types?.filter((g) => g !== grant) }));
}
const idTokenTtl = Number(args['id-token-ttl'] ?? env.OIDC_ID_TOKEN_TTL ?? 3600);
const adminToken = env.OIDC_ADMIN_TOKEN || '';
const debug = flag('debug', 'OIDC_DEBUG');

// Every time source of oidc-provider (token iat/exp, stored-item expiry) reads Date.now(), so
// an offset here makes the provider's clock run early or late: tests use it for expired tokens
// and clock skew without waiting.
let clockOffsetMs = Number(args['clock-offset'] ?? env.OIDC_CLOCK_OFFSET ?? 0) * 1000;
const realNow = Date.now.bind(Date);
Date.now = () => realNow() + clockOffsetMs;

const byUsername = new Map();
const bySub = new Map();
for (const user of users) {
  if (!user.username || !user.password || !user.claims?.sub) {
    throw new Error(`every user needs username, password and claims.sub: ${JSON.stringify(user)}`);
  }
  byUsername.set(user.username, user);
  if (user.claims.email && !byUsername.has(user.claims.email)) byUsername.set(user.claims.email, user);
  bySub.set(user.claims.sub, user);
}

// ---------------------------------------------------------------- signing keys
let keyCounter = 0;
function newSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  keyCounter += 1;
  return {
    ...privateKey.export({ format: 'jwk' }),
    kid: `k${keyCounter}-${crypto.randomBytes(6).toString('hex')}`,
    alg: 'RS256',
    use: 'sig',
  };
}

let signingKeys;
const jwksFile = args.jwks ?? env.OIDC_JWKS;
if (jwksFile) {
  signingKeys = JSON.parse(fs.readFileSync(jwksFile, 'utf8')).keys;
} else {
  signingKeys = [newSigningKey()];
}
const cookieKeys = [crypto.randomBytes(32).toString('base64url')];

// ---------------------------------------------------------------- HTML pages (no external assets)
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>${esc(title)}</title>
  <style>body{font-family:sans-serif;max-width:28em;margin:2em auto}input,button{display:block;margin:.4em 0;font-size:1em}.error{color:#b00}</style>
</head>
<body>
<h1>${esc(title)}</h1>
${body}
</body>
</html>
`;
}

function loginPage(uid, mountPath, params, error) {
  const hint = params.login_hint ? ` value="${esc(params.login_hint)}"` : '';
  return page('Sign in to the Gatehouse test IdP', `
${error ? `<p class="error" id="login-error">${esc(error)}</p>` : ''}
<p>Client <code>${esc(params.client_id)}</code> asks you to sign in.</p>
<form id="login-form" method="post" action="${esc(mountPath)}/interaction/${esc(uid)}/login" autocomplete="off">
  <label for="username">Username or email</label>
  <input id="username" type="text" name="username" required autofocus${hint}>
  <label for="password">Password</label>
  <input id="password" type="password" name="password" required>
  <button type="submit" name="action" value="login">Sign in</button>
</form>
<form id="abort-form" method="post" action="${esc(mountPath)}/interaction/${esc(uid)}/abort">
  <button type="submit" name="action" value="abort">Cancel</button>
</form>`);
}

function consentPage(uid, mountPath, params, details, user) {
  const scopes = (details.missingOIDCScope || []).filter((s) => s !== 'openid');
  const claims = (details.missingOIDCClaims || []).filter((c) => !['sub', 'sid', 'auth_time', 'acr', 'amr', 'iss'].includes(c));
  return page('Authorize access', `
<p>Signed in as <strong id="signed-in-as">${esc(user?.username)}</strong>.</p>
<p>Client <code>${esc(params.client_id)}</code> asks for:</p>
<ul id="scopes">${scopes.map((s) => `<li>scope ${esc(s)}</li>`).join('')}${claims.map((c) => `<li>claim ${esc(c)}</li>`).join('')}</ul>
<form id="consent-form" method="post" action="${esc(mountPath)}/interaction/${esc(uid)}/confirm">
  <button type="submit" name="action" value="allow">Allow</button>
</form>
<form id="deny-form" method="post" action="${esc(mountPath)}/interaction/${esc(uid)}/abort">
  <button type="submit" name="action" value="deny">Deny</button>
</form>`);
}

// Replacements for oidc-provider's default pages, which load a web font from the internet.
async function userCodeInputSource(ctx, form, out, err) {
  let msg = '<p>Enter the code displayed on your device.</p>';
  if (err && (err.userCode || err.name === 'NoCodeError')) msg = '<p class="error">The code you entered is incorrect. Try again.</p>';
  else if (err && err.name === 'AbortedError') msg = '<p class="error">The sign-in request was interrupted.</p>';
  else if (err) msg = '<p class="error">There was an error processing your request.</p>';
  ctx.type = 'html';
  ctx.body = page('Device sign-in', `${msg}\n${form}\n<button type="submit" form="op.deviceInputForm">Continue</button>`);
}

async function userCodeConfirmSource(ctx, form, client, deviceInfo, userCode) {
  ctx.type = 'html';
  ctx.body = page('Confirm device', `
<p>Client <code>${esc(client.clientName || client.clientId)}</code> on a device asks to sign you in.</p>
<p>The device should show this code: <code id="user-code">${esc(userCode)}</code></p>
${form}
<button type="submit" form="op.deviceConfirmForm">Continue</button>
<button type="submit" form="op.deviceConfirmForm" value="yes" name="abort">Abort</button>`);
}

async function successSource(ctx) {
  ctx.type = 'html';
  ctx.body = page('Sign-in success', '<p id="device-success">Your device is signed in; you can close this page.</p>');
}

async function logoutSource(ctx, form) {
  ctx.type = 'html';
  ctx.body = page('Sign out', `${form}
<button type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>`);
}

async function postLogoutSuccessSource(ctx) {
  ctx.type = 'html';
  ctx.body = page('Signed out', '<p>You are signed out.</p>');
}

async function renderError(ctx, out) {
  ctx.type = 'html';
  ctx.body = page('Error', Object.entries(out)
    .map(([k, v]) => `<p class="error"><strong>${esc(k)}</strong>: <span id="${esc(k)}">${esc(v)}</span></p>`).join('\n'));
}

// ---------------------------------------------------------------- the provider
async function findAccount(ctx, sub) {
  const user = bySub.get(sub);
  if (!user) return undefined;
  return {
    accountId: sub,
    // oidc-provider filters these by the granted scopes and the `claims` table below.
    async claims() { return structuredClone(user.claims); },
  };
}

let mountPath = '';
let issuer;
let current; // the Provider serving requests; replaced on key rotation
let currentHandler;

function buildProvider() {
  const provider = new Provider(issuer, {
    clients: structuredClone(clients),
    jwks: { keys: structuredClone(signingKeys) },
    cookies: { keys: cookieKeys },
    findAccount,
    claims: {
      openid: ['sub', 'auth_time', 'amr'],
      email: ['email', 'email_verified'],
      profile: ['name', 'given_name', 'family_name', 'preferred_username'],
      groups: ['groups', 'logins_from_idp'],
      acr: null,
      amr: null,
      auth_time: null,
      sid: null,
      iss: null,
    },
    // false: the claims of the granted scopes are in the ID token too, not only at userinfo.
    conformIdTokenClaims: userinfoClaimsOnly,
    responseTypes: ['code'],
    // HS256 (an ID token MACed with the client's secret) is on so that a test client can get one
    // and check that the relying party's algorithm allowlist refuses what discovery offers.
    enabledJWA: { idTokenSigningAlgValues: ['RS256', 'PS256', 'ES256', 'Ed25519', 'EdDSA', 'HS256'] },
    pkce: { required: () => true },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      DeviceCode: 600,
      Grant: 14 * 24 * 3600,
      IdToken: idTokenTtl,
      Interaction: 3600,
      RefreshToken: 14 * 24 * 3600,
      Session: 14 * 24 * 3600,
    },
    interactions: { url: (ctx, interaction) => `${mountPath}/interaction/${interaction.uid}` },
    renderError,
    features: {
      devInteractions: { enabled: false },
      deviceFlow: {
        enabled: deviceFlow, userCodeInputSource, userCodeConfirmSource, successSource,
      },
      rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
      revocation: { enabled: true },
      userinfo: { enabled: true },
    },
  });
  for (const event of ['server_error', 'authorization.error', 'grant.error', 'userinfo.error',
    'end_session.error', 'revocation.error', 'code_verification.error', 'discovery.error']) {
    provider.on(event, (ctx, err) => {
      process.stderr.write(`oidc event ${event}: ${err?.name} ${err?.message} ${err?.error_detail || ''}\n`);
    });
  }
  return provider;
}

// ---------------------------------------------------------------- interactions (login, consent)
function readBody(req, limit = 65536) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (c) => {
      size += c.length;
      if (size > limit) { reject(new Error('body too large')); req.destroy(); } else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendHtml(res, status, html) {
  res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(html);
}

function sendJson(res, status, obj) {
  res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
  res.end(JSON.stringify(obj));
}

async function interaction(req, res, uid, action) {
  const provider = current;
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    sendHtml(res, 400, page('Error', `<p class="error">${esc(err.name)}: ${esc(err.message)}</p>`));
    return;
  }
  if (details.uid !== uid) {
    sendHtml(res, 400, page('Error', '<p class="error">interaction mismatch</p>'));
    return;
  }
  const { prompt, params, session } = details;

  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') {
      sendHtml(res, 200, loginPage(uid, mountPath, params));
    } else if (prompt.name === 'consent') {
      const user = bySub.get(session?.accountId);
      sendHtml(res, 200, consentPage(uid, mountPath, params, prompt.details, user));
    } else {
      sendHtml(res, 501, page('Error', `<p class="error">prompt ${esc(prompt.name)} not implemented</p>`));
    }
    return;
  }
  if (req.method !== 'POST') {
    sendHtml(res, 405, page('Error', '<p class="error">method not allowed</p>'));
    return;
  }
  const form = new URLSearchParams(await readBody(req));

  if (action === 'abort') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (action === 'login' && prompt.name === 'login') {
    const user = byUsername.get(form.get('username') || '');
    const password = Buffer.from(form.get('password') || '');
    const ok = user && password.length === Buffer.byteLength(user.password)
      && crypto.timingSafeEqual(password, Buffer.from(user.password));
    if (!ok) {
      sendHtml(res, 200, loginPage(uid, mountPath, params, 'Invalid username or password.'));
      return;
    }
    await provider.interactionFinished(req, res, {
      login: { accountId: user.claims.sub, amr: ['pwd'], remember: false },
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (action === 'confirm' && prompt.name === 'consent') {
    const { details: missing } = prompt;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    if (missing.missingResourceScopes) {
      for (const [indicator, scope] of Object.entries(missing.missingResourceScopes)) {
        grant.addResourceScope(indicator, scope.join(' '));
      }
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }
  sendHtml(res, 400, page('Error', `<p class="error">unexpected ${esc(action)} for prompt ${esc(prompt.name)}</p>`));
}

// ---------------------------------------------------------------- admin endpoint (tests only)
function publicKids() {
  return signingKeys.map((k) => k.kid);
}

async function admin(req, res, what) {
  const auth = req.headers.authorization || '';
  const expected = `Bearer ${adminToken}`;
  if (!adminToken || auth.length !== expected.length
      || !crypto.timingSafeEqual(Buffer.from(auth), Buffer.from(expected))) {
    sendJson(res, adminToken ? 401 : 404, { error: adminToken ? 'unauthorized' : 'admin endpoint disabled' });
    return;
  }
  let body = {};
  if (req.method === 'POST') {
    const raw = await readBody(req);
    body = raw ? JSON.parse(raw) : {};
  }
  if (what === 'state' && req.method === 'GET') {
    sendJson(res, 200, { issuer, kids: publicKids(), signing_kid: signingKeys[0].kid, clock_offset: clockOffsetMs / 1000 });
  } else if (what === 'rotate-keys' && req.method === 'POST') {
    // A new key signs from now on. By default the previous keys stay published (a rollover);
    // {"retire_previous": true} drops them, so tokens they signed no longer verify.
    const key = body.jwks ? body.jwks.keys[0] : newSigningKey();
    const extra = body.jwks ? body.jwks.keys.slice(1) : [];
    signingKeys = body.retire_previous ? [key, ...extra] : [key, ...extra, ...signingKeys];
    current = buildProvider();
    currentHandler = current.callback();
    sendJson(res, 200, { kids: publicKids(), signing_kid: key.kid });
  } else if (what === 'clock' && req.method === 'POST') {
    clockOffsetMs = Number(body.offset || 0) * 1000;
    sendJson(res, 200, { clock_offset: clockOffsetMs / 1000 });
  } else {
    sendJson(res, 404, { error: 'unknown admin call' });
  }
}

// ---------------------------------------------------------------- HTTP server
async function handle(req, res) {
  if (debug) process.stderr.write(`${req.method} ${req.url}\n`);
  const url = new URL(req.url, 'http://x');
  let m = /^\/__admin\/([a-z-]+)$/.exec(url.pathname);
  if (m) { await admin(req, res, m[1]); return; }

  if (mountPath) {
    if (url.pathname !== mountPath && !url.pathname.startsWith(`${mountPath}/`)) {
      sendJson(res, 404, { error: 'not_found' });
      return;
    }
    // Mounted like express does it: oidc-provider derives its mount path from originalUrl.
    req.originalUrl = req.url;
    req.url = req.url.slice(mountPath.length) || '/';
  }
  m = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?$/.exec(new URL(req.url, 'http://x').pathname);
  if (m) { await interaction(req, res, m[1], m[2]); return; }
  currentHandler(req, res);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    process.stderr.write(`error: ${err.stack || err}\n`);
    if (!res.headersSent) sendHtml(res, 500, page('Error', '<p class="error">internal error</p>'));
    else res.end();
  });
});

server.listen(port, HOST, () => {
  const base = `http://${HOST}:${server.address().port}`;
  issuer = args.issuer ?? env.OIDC_ISSUER;
  if (!issuer) {
    const p = (args['issuer-path'] ?? env.OIDC_ISSUER_PATH ?? '').replace(/\/+$/, '');
    issuer = `${base}${p && !p.startsWith('/') ? '/' : ''}${p}`;
  }
  mountPath = new URL(issuer).pathname.replace(/\/+$/, '');
  current = buildProvider();
  currentHandler = current.callback();
  process.stdout.write(`READY ${base}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { server.close(); server.closeAllConnections?.(); process.exit(0); });
}
