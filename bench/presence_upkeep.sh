#!/usr/bin/env bash
# The presence upkeep's cost at N viewers of one process, before (V9) and
# after (V10) side by side in one sitting (issue 14, docs/benchmarks.md
# "Where the curves bend, and why").
#
#   cargo build --bin livedesk && bench/presence_upkeep.sh [viewers] [rounds]
#
# Starts a throw-away PostgreSQL (server binaries on PATH or in
# /usr/lib/postgresql/*/bin), migrates it with the livedesk binary ($LIVEDESK,
# default target/debug/livedesk: it only migrates, so a debug build measures
# the same SQL), writes the viewer rows with ld_presence_set, then times
# each upkeep statement as the server sends it, one autocommit statement
# each, with psql's \timing (client round trip over the unix socket
# included, ~0.1 ms):
#
#   before  V9's  ld_presence_touch: UPDATE of every viewer row of the process
#           V9's  ld_presence_expire: DELETE scanning every viewer row's heard_at
#   after   V10's ld_presence_touch: upsert of the process's heartbeat row
#           V10's ld_presence_expire: DELETE of stale heartbeats (+ their viewers)
#
# and what V10 adds to a viewer's write (ld_presence_set: a key-share lock on
# its process's heartbeat), with pgbench: one client, state flips of random
# viewers, V9's and V10's ld_presence_set alternating.
#
# The V9 bodies are copied verbatim into a schema of their own. Rounds
# alternate which variant goes first, with an (untimed) VACUUM of the tables
# before each variant, as the autovacuum would between upkeeps 5 s apart.
set -euo pipefail
cd "$(dirname "$0")/.."

viewers=${1:-10000}
rounds=${2:-20}
livedesk=${LIVEDESK:-target/debug/livedesk}
[ -x "$livedesk" ] || { echo "no $livedesk: cargo build --bin livedesk" >&2; exit 1; }
if ! command -v initdb >/dev/null 2>&1 || ! command -v pgbench >/dev/null 2>&1; then
    PATH="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1):$PATH"
fi

dir=$(mktemp -d /tmp/ld-upkeep-XXXXXX)
port=54$((RANDOM % 90 + 10))
as_pg() { "$@"; }
if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root.
    chown postgres "$dir"
    as_pg() { runuser -u postgres -- "$@"; }
fi
cleanup() {
    as_pg pg_ctl -D "$dir/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
as_pg initdb -D "$dir/pg" -U postgres -A trust >/dev/null
as_pg pg_ctl -D "$dir/pg" -l "$dir/pg.log" -w \
    -o "-k $dir -p $port -c listen_addresses='' -c fsync=off" start >/dev/null
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres)
"${psql[@]}" -d postgres -c "CREATE DATABASE upkeep"
DATABASE_URL="host=$dir port=$port user=postgres dbname=upkeep" RUST_LOG=warn \
    "$livedesk" migrate >/dev/null

"${psql[@]}" -d upkeep >/dev/null <<SQL
CREATE SCHEMA v9;
-- sql/rules/40_presence.sql before V10, verbatim.
CREATE FUNCTION v9.ld_presence_touch(p_process uuid) RETURNS void
LANGUAGE sql AS \$\$
    UPDATE presence SET heard_at = now() WHERE process_id = p_process
\$\$;
CREATE FUNCTION v9.ld_presence_set(p_process uuid, p_key text, p_connection bigint,
                                   p_ticket bigint, p_agent bigint, p_state text)
RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
    INSERT INTO presence AS p (process_id, process_key, connection_id, ticket_id, agent_id, state)
    VALUES (p_process, p_key, p_connection, p_ticket, p_agent, p_state)
    ON CONFLICT (process_id, connection_id, ticket_id) DO UPDATE
        SET state = EXCLUDED.state, since = now(), heard_at = now()
        WHERE p.state IS DISTINCT FROM EXCLUDED.state;
    IF FOUND THEN
        PERFORM ld_presence_announce(ARRAY[p_ticket]);
    END IF;
END
\$\$;
CREATE FUNCTION v9.ld_presence_expire(p_ttl_ms int) RETURNS int
LANGUAGE plpgsql AS \$\$
DECLARE
    gone bigint[];
BEGIN
    WITH d AS (
        DELETE FROM presence
        WHERE heard_at < now() - make_interval(secs => p_ttl_ms / 1000.0)
        RETURNING ticket_id
    )
    SELECT array_agg(ticket_id) INTO gone FROM d;
    IF gone IS NOT NULL THEN
        PERFORM ld_presence_announce(gone);
    END IF;
    RETURN coalesce(array_length(gone, 1), 0);
END
\$\$;
-- One process with $viewers viewers, each on a ticket of its own.
SELECT count(ld_presence_set('00000000-0000-0000-0000-00000000000a', 'bench@here', c, c, 1, 'viewing'))
FROM generate_series(1, $viewers) c;
VACUUM ANALYZE presence, presence_processes;
SQL

p="'00000000-0000-0000-0000-00000000000a'"
script="$dir/rounds.sql"
{
    echo '\timing on'
    for ((r = 1; r <= rounds; r++)); do
        before="VACUUM presence, presence_processes;
\\echo @before-touch
SELECT v9.ld_presence_touch($p);
\\echo @before-expire
SELECT v9.ld_presence_expire(30000);"
        after="VACUUM presence, presence_processes;
\\echo @after-touch
SELECT ld_presence_touch($p);
\\echo @after-expire
SELECT ld_presence_expire(30000);"
        if ((r % 2)); then printf '%s\n%s\n' "$before" "$after"; else printf '%s\n%s\n' "$after" "$before"; fi
    done
} >"$script"

echo "presence upkeep at $viewers viewers of one process, $rounds rounds, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
"${psql[@]}" -d upkeep -t -f "$script" | awk '
    /^@/ { label = substr($1, 2); next }
    /^Time: / { if (label != "") { t[label] = t[label] " " $2; label = "" } }
    function stats(name, s,   n, v, i, j, x) {
        n = split(s, v, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { x = v[i]; v[i] = v[j]; v[j] = x }
        printf "  %-14s min %8.3f  median %8.3f  p90 %8.3f  max %8.3f ms  (n=%d)\n", name, v[1], v[int((n + 1) / 2)], v[int(n * 0.9 + 0.5)], v[n], n
    }
    END {
        split("before-touch before-expire after-touch after-expire", order, " ")
        for (k = 1; k <= 4; k++) stats(order[k], t[order[k]])
    }'

for variant in v9. public. v9. public.; do
    printf '\\set c random(1, %d)\nSELECT %sld_presence_set(%s, '"'"'bench@here'"'"', :c, :c, 1, (ARRAY['"'"'typing'"'"', '"'"'viewing'"'"'])[1 + (random() < 0.5)::int]);\n' \
        "$viewers" "$variant" "$p" >"$dir/set.sql"
    latency=$(pgbench -n -h "$dir" -p "$port" -U postgres -c 1 -t 3000 -f "$dir/set.sql" upkeep 2>/dev/null |
        sed -n 's/^latency average = \(.*\)$/\1/p')
    name=v9
    [ "$variant" = public. ] && name=v10
    echo "  set ($name) latency average $latency, 3000 state flips"
done
