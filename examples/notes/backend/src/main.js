'use strict';
// The notes API: GET /healthz, GET/POST /api/notes, GET /api/config.
// Listens on PORT; reaches PostgreSQL through the socket (src/db.js).
const http = require('http');
const crypto = require('crypto');
const slug = require('notes-slug');
const pool = require('./db')(5);

const port = Number(process.env.PORT || 3000);

function send(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) });
  res.end(data);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.on('data', (c) => { data += c; if (data.length > 10000) req.destroy(); });
    req.on('end', () => resolve(data));
    req.on('error', reject);
  });
}

// Which variables the backend sees: NOTES_* values, and for the names in
// ?secret= only a SHA-256 of the value (a secret never leaves in clear).
function config(url) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('NOTES_')) env[k] = v;
  }
  const secrets = {};
  for (const name of url.searchParams.getAll('secret')) {
    const v = process.env[name];
    secrets[name] = v === undefined ? null : crypto.createHash('sha256').update(v).digest('hex');
  }
  return { env, secrets, release: process.env.RELEASE_VERSION || null };
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  try {
    if (url.pathname === '/healthz') {
      await pool.query('SELECT 1 FROM notes LIMIT 1');
      return send(res, 200, { ok: true });
    }
    if (url.pathname === '/api/config') return send(res, 200, config(url));
    if (url.pathname === '/api/notes' && req.method === 'GET') {
      const r = await pool.query('SELECT slug, title FROM notes ORDER BY id');
      const runs = await pool.query('SELECT release, count(*)::int AS n FROM release_runs GROUP BY release ORDER BY release');
      return send(res, 200, { title: process.env.NOTES_TITLE || 'Notes', notes: r.rows, migrationRuns: runs.rows });
    }
    if (url.pathname === '/api/notes' && req.method === 'POST') {
      const { title } = JSON.parse((await readBody(req)) || '{}');
      if (typeof title !== 'string' || !title.trim()) return send(res, 400, { error: 'title is required' });
      const r = await pool.query('INSERT INTO notes (slug, title) VALUES ($1, $2) RETURNING slug, title', [
        `${slug(title)}-${Date.now().toString(36)}`,
        title.trim(),
      ]);
      return send(res, 201, r.rows[0]);
    }
    return send(res, 404, { error: 'not found' });
  } catch (e) {
    console.error(`notes: ${req.method} ${url.pathname}: ${e.message}`);
    return send(res, 503, { error: 'unavailable' });
  }
});

server.listen(port, () => console.log(`notes: listening on ${port}`));
process.on('SIGTERM', () => server.close(() => pool.end().then(() => process.exit(0))));
