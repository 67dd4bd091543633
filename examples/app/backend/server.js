// Example backend for cultivate: Node's http module and `pg` (Debian's
// node-pg), no other dependency. It reaches PostgreSQL only through the Unix
// socket directory (the shared db_socket volume) as role `apiuser`, with peer
// authentication: there is no password anywhere.
//
//   GET  /health, /api/health   runs SELECT 1 through the socket
//   GET  /api/info              release version and greeting (never a secret)
//   GET  /api/slow?ms=N         answers after N ms (at most 10000; default 2000):
//                               a request in flight while a release is switched
//   GET  /api/notes             lists notes
//   POST /api/notes             {"body": "..."} inserts a note
'use strict';

const http = require('http');
const { Pool } = require('pg');

const port = Number(process.env.PORT || 3000);
const pool = new Pool({
  host: process.env.DB_SOCKET_DIR || '/var/run/postgresql',
  database: process.env.DB_NAME || 'cultivate',
  user: process.env.DB_USER || 'apiuser',
  max: 5,
  idleTimeoutMillis: 10000,
  connectionTimeoutMillis: 3000,
});
pool.on('error', (err) => log('error', 'idle database client failed: ' + err.message));

function log(level, message) {
  const line = JSON.stringify({ time: new Date().toISOString(), level, message });
  (level === 'error' ? process.stderr : process.stdout).write(line + '\n');
}

function send(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(data),
    'Cache-Control': 'no-store',
  });
  res.end(data);
}

function readBody(req, limit) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        reject(Object.assign(new Error('request body too large'), { status: 413 }));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

let schemaReady = null;
function ensureSchema() {
  if (!schemaReady) {
    schemaReady = pool
      .query(
        'CREATE TABLE IF NOT EXISTS notes (' +
          'id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())'
      )
      .catch((err) => {
        schemaReady = null;
        throw err;
      });
  }
  return schemaReady;
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  const route = req.method + ' ' + url.pathname;
  switch (route) {
    case 'GET /health':
    case 'GET /api/health':
    case 'HEAD /health':
      try {
        const result = await pool.query('SELECT 1 AS ok');
        return send(res, 200, { status: 'ok', database: result.rows[0].ok === 1 ? 'ok' : 'unexpected' });
      } catch (err) {
        log('error', 'health check query failed: ' + err.message);
        return send(res, 503, { status: 'error', database: 'unreachable' });
      }
    case 'GET /api/info':
      // Only non-secret settings: APP_SECRET is reported as set or not,
      // never returned.
      return send(res, 200, {
        version: process.env.RELEASE_VERSION || 'dev',
        greeting: process.env.APP_GREETING || 'Hello from cultivate',
        secretConfigured: Boolean(process.env.APP_SECRET),
      });
    case 'GET /api/slow': {
      const ms = Math.min(Math.max(Number(url.searchParams.get('ms') || 2000) || 0, 0), 10000);
      await new Promise((resolve) => setTimeout(resolve, ms));
      return send(res, 200, { waited: ms, version: process.env.RELEASE_VERSION || 'dev' });
    }
    case 'GET /api/notes': {
      await ensureSchema();
      const result = await pool.query('SELECT id, body, created_at FROM notes ORDER BY id');
      return send(res, 200, { notes: result.rows });
    }
    case 'POST /api/notes': {
      const raw = await readBody(req, 64 * 1024);
      let body;
      try {
        body = JSON.parse(raw).body;
      } catch (err) {
        return send(res, 400, { error: 'expected JSON {"body": "..."}' });
      }
      if (typeof body !== 'string' || body.length === 0) {
        return send(res, 400, { error: 'expected JSON {"body": "..."} with a non-empty string' });
      }
      await ensureSchema();
      const result = await pool.query('INSERT INTO notes (body) VALUES ($1) RETURNING id, body, created_at', [body]);
      return send(res, 201, result.rows[0]);
    }
    default:
      return send(res, 404, { error: 'not found' });
  }
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    log('error', req.method + ' ' + req.url + ' failed: ' + err.message);
    if (!res.headersSent) {
      send(res, err.status || 500, { error: err.status ? err.message : 'internal error' });
    } else {
      res.destroy();
    }
  });
});

server.listen(port, () => log('info', 'listening on port ' + port));

let stopping = false;
function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  log('info', 'received ' + signal + ', shutting down');
  const force = setTimeout(() => process.exit(1), 8000);
  force.unref();
  server.close(() => {
    pool.end().then(
      () => process.exit(0),
      () => process.exit(1)
    );
  });
  server.closeIdleConnections && server.closeIdleConnections();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
