'use strict';
// PostgreSQL over the Unix socket shared with the database container, as
// apiuser (peer authentication: no password). `pg` is Debian's node-pg.
const { Pool } = require('pg');

module.exports = function pool(max) {
  return new Pool({
    host: process.env.DB_SOCKET_DIR || '/var/run/postgresql',
    database: process.env.DB_NAME || 'cultivate',
    user: process.env.DB_USER || 'apiuser',
    max,
    connectionTimeoutMillis: 3000,
  });
};
