'use strict';
// The release command (`[release] command = "node migrate.js"`): applies the
// migrations in migrations/ not applied yet, each in a transaction, and
// records that it ran for this release. Exits non-zero on any failure, which
// fails the deploy before any traffic moves.
const fs = require('fs');
const path = require('path');
const pool = require('./src/db')(1);

async function main() {
  const db = await pool.connect();
  try {
    await db.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`);
    await db.query(`CREATE TABLE IF NOT EXISTS release_runs (
      id serial PRIMARY KEY, release text NOT NULL, ran_at timestamptz NOT NULL DEFAULT now())`);
    const dir = path.join(__dirname, 'migrations');
    const files = fs.readdirSync(dir).filter((f) => f.endsWith('.sql')).sort();
    const done = new Set((await db.query('SELECT name FROM schema_migrations')).rows.map((r) => r.name));
    for (const f of files.filter((f) => !done.has(f))) {
      console.log(`migrate: applying ${f}`);
      await db.query('BEGIN');
      try {
        await db.query(fs.readFileSync(path.join(dir, f), 'utf8'));
        await db.query('INSERT INTO schema_migrations (name) VALUES ($1)', [f]);
        await db.query('COMMIT');
      } catch (e) {
        await db.query('ROLLBACK');
        throw new Error(`${f}: ${e.message}`);
      }
    }
    await db.query('INSERT INTO release_runs (release) VALUES ($1)', [process.env.RELEASE_VERSION || 'unknown']);
    console.log(`migrate: ${files.length - done.size} applied, ${files.length} in all`);
  } finally {
    db.release();
    await pool.end();
  }
}

main().catch((e) => {
  console.error(`migrate: FAILED: ${e.message}`);
  process.exit(1);
});
