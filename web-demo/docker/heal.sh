#!/usr/bin/env bash
# Reconnects REGION to the network between regions, under its alias.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
region_arg "${1:-}"
docker network connect --alias "$1.regions" "$REGIONS_NET" "$PROJECT-$1"
echo "$1 is back on the network between regions"
