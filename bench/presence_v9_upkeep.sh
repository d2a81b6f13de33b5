#!/usr/bin/env bash
# Put V9's presence upkeep back (touch = UPDATE of every viewer row, expiry
# by row age) into the database of the livedesk server that the
# livedesk-bench process <pid> spawns: the "before" half of a side-by-side
# run of the subscribers curve with one binary (docs/benchmarks.md, "Where
# the curves bend, and why"). The server calls the functions by name, so the
# swap takes effect at its next upkeep; the bench's output is unchanged.
#
#   target/release/livedesk-bench --only curve-subscribers --output /tmp/v9.md & \
#       bench/presence_v9_upkeep.sh $!; wait
set -uo pipefail
bench=$1
for i in $(seq 1 600); do
  srv=$(pgrep -P "$bench" -x livedesk | head -1)
  [ -n "$srv" ] && break
  sleep 0.2
done
[ -n "${srv:-}" ] || { echo "no livedesk server under process $bench" >&2; exit 1; }
url=$(tr '\0' '\n' < /proc/$srv/environ | sed -n 's/^DATABASE_URL=//p')
host=$(echo "$url" | sed -n 's/.*host=\([^ ]*\).*/\1/p'); port=$(echo "$url" | sed -n 's/.*port=\([^ ]*\).*/\1/p')
psql -X -q -v ON_ERROR_STOP=1 -h "$host" -p "$port" -U livedesk -d livedesk <<'SQL'
CREATE OR REPLACE FUNCTION ld_presence_touch(p_process uuid) RETURNS void
LANGUAGE sql AS $$
    UPDATE presence SET heard_at = now() WHERE process_id = p_process
$$;
CREATE OR REPLACE FUNCTION ld_presence_expire(p_ttl_ms int) RETURNS int
LANGUAGE plpgsql AS $$
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
$$;
SQL
echo "swapped in V9 upkeep on $host:$port (server $srv): $(psql -X -At -h "$host" -p "$port" -U livedesk -d livedesk -c "SELECT prosrc FROM pg_proc WHERE proname = 'ld_presence_touch'")"
