#!/usr/bin/env bash
# Removes everything up.sh made: containers, networks, volumes (the data), the image, the secret, the certificates.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MERIDIAN_CLUSTER_SECRET=unused compose --profile join down -v --remove-orphans
docker image rm -f meridian-demo:latest >/dev/null 2>&1 || true
rm -rf "$HERE/.secret" "$HERE/.tls"
echo "the docker demo is gone"
