#!/usr/bin/env bash
# Runs the SQL test scripts against a throw-away PostgreSQL cluster.
#
#   sql/tests/run.sh            all scripts (sql/tests/[0-9]*.sql)
#   sql/tests/run.sh 03 07      only the scripts whose names start with these
#
# Creates a cluster in a temporary folder (as the `postgres` system user when
# run as root: PostgreSQL refuses root), migrates a template database exactly
# like refinery does (each V*.sql in one transaction), loads helpers.sql,
# applies sql/rules/, clones the template per script, runs it with ON_ERROR_STOP, prints
# PASS/FAIL per script, then stops and removes the cluster.
# Needs the PostgreSQL 15 server binaries (PG_BIN to override) and psql.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SQL_DIR="$(dirname "$HERE")"
PG_BIN="${PG_BIN:-$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}"
PORT="${PGTEST_PORT:-$((20000 + RANDOM % 20000))}"
WORK="$(mktemp -d /tmp/livedesk-sqltest.XXXXXX)"
chmod 755 "$WORK"

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; fi

cleanup() {
    as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

as_pg "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres >"$WORK/initdb.log" 2>&1 \
    || { cat "$WORK/initdb.log"; exit 1; }
# fsync off: a throw-away cluster (benchmarks must not do this).
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w \
    -o "-p $PORT -k $WORK -c listen_addresses='' -c fsync=off -c synchronous_commit=off" start >/dev/null \
    || { cat "$WORK/server.log"; exit 1; }

PSQL=(psql -X -q -h "$WORK" -p "$PORT" -U postgres -v ON_ERROR_STOP=1)

"${PSQL[@]}" -d postgres -c "CREATE DATABASE ld_template"
# In version order (V10 after V9), as refinery applies them; a glob sorts
# by name.
while IFS= read -r f; do
    [ -e "$f" ] || continue
    "${PSQL[@]}" -d ld_template -1 -f "$f" </dev/null >/dev/null
done < <(printf '%s\n' "$SQL_DIR"/V*__*.sql | sort -V)
# The rules, in one transaction, as livedesk applies them at start.
"${PSQL[@]}" -d ld_template -1 $(for f in "$SQL_DIR"/rules/*.sql; do printf -- '-f %s ' "$f"; done) >/dev/null
"${PSQL[@]}" -d ld_template -f "$HERE/helpers.sql" >/dev/null

has_dblink="$("${PSQL[@]}" -d postgres -tA -c "SELECT count(*) FROM pg_available_extensions WHERE name = 'dblink'")"

pass=0
fail=0
for script in "$HERE"/[0-9]*.sql; do
    name="$(basename "$script" .sql)"
    if [ "$#" -gt 0 ]; then
        wanted=0
        for p in "$@"; do case "$name" in "$p"*) wanted=1 ;; esac; done
        [ "$wanted" = 1 ] || continue
    fi
    if [ "$has_dblink" = 0 ] && grep -q 'CREATE EXTENSION IF NOT EXISTS dblink' "$script"; then
        echo "SKIP $name (the dblink extension is not installed: postgresql-contrib)"
        continue
    fi
    db="t_${name//[^a-zA-Z0-9]/_}"
    "${PSQL[@]}" -d postgres -c "CREATE DATABASE $db TEMPLATE ld_template"
    if "${PSQL[@]}" -d "$db" -v connstr="host=$WORK port=$PORT user=postgres dbname=$db" \
        -f "$script" >"$WORK/$name.out" 2>&1; then
        echo "PASS $name"
        pass=$((pass + 1))
    else
        echo "FAIL $name"
        sed 's/^/    /' "$WORK/$name.out"
        fail=$((fail + 1))
    fi
done

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
