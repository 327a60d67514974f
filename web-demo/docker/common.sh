# Shared by the docker demo's scripts.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PROJECT=meridian-demo
REGIONS_NET="${PROJECT}_regions"
compose() { docker-compose -p "$PROJECT" -f "$HERE/docker-compose.yml" "$@"; }
region_arg() {
    case "${1:-}" in
        us|eu|ap) ;;
        *) echo "usage: $(basename "$0") us|eu|ap" >&2; exit 2 ;;
    esac
}
