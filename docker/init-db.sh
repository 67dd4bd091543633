#!/bin/sh
# Create role apiuser (login, no password, no special rights) and database
# cultivate owned by it. Idempotent: safe on every start. Runs as the postgres
# OS user against a server reachable through $PGHOST (a socket directory).
set -eu
DB_USER="${DB_USER:-apiuser}"
DB_NAME="${DB_NAME:-cultivate}"

psql -v ON_ERROR_STOP=1 --no-psqlrc -q -d postgres \
    -v db_user="$DB_USER" -v db_name="$DB_NAME" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'db_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'db_user') \gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD NULL', :'db_user') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db_name', :'db_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db_name') \gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'db_name', :'db_user') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db_name') \gexec
SQL
echo "init-db: role $DB_USER and database $DB_NAME ready" >&2
