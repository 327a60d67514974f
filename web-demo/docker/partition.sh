#!/usr/bin/env bash
# Cuts REGION off the network between regions (its users still reach it).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
region_arg "${1:-}"
docker network disconnect "$REGIONS_NET" "$PROJECT-$1"
echo "$1 is cut off from the other regions"
