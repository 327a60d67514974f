#!/usr/bin/env bash
# Starts a fourth region, sa (host port 7004, MERIDIAN_DEMO_SA_PORT changes it), seeded with us
# alone, and adds it to the running cluster through us with `meridian region add`: every region
# follows it within a second, and it catches up from their feeds. Nobody is restarted.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export MERIDIAN_CLUSTER_SECRET="$(cat "$HERE/.secret")"
compose --profile join up -d --no-recreate sa
# the CLI runs in us's container, against us itself (its certificate covers 127.0.0.1)
docker exec "$PROJECT-us" /meridian region add sa https://sa.regions:7070 \
    --node https://127.0.0.1:7070 --ca-cert /tls/ca.pem >/dev/null
echo "sa joined: https://127.0.0.1:${MERIDIAN_DEMO_SA_PORT:-7004}"
