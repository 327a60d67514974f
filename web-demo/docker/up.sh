#!/usr/bin/env bash
# Builds the image from the release binary and starts us, eu, ap and the page.
# Host ports: page 7000, regions 7001-7003 (MERIDIAN_DEMO_{PAGE,US,EU,AP}_PORT change them).
# MERIDIAN_BIN=path uses that binary instead of building one.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bin="${MERIDIAN_BIN:-}"
if [ -z "$bin" ]; then
    (cd "$ROOT" && cargo build --release --locked -p meridian-node)
    bin="$ROOT/target/release/meridian"
fi

# The image: FROM scratch, the binary, and exactly the shared libraries ldd lists (no registry
# here to pull a base image from). Built with the classic builder: no BuildKit.
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/root/data"
cp "$bin" "$ctx/root/meridian"
# the release profile keeps debug info for profiling; the image does not need it
strip "$ctx/root/meridian" 2>/dev/null || true
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$ctx/root$(dirname "$lib")"
    cp -L "$lib" "$ctx/root$lib"
done
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY root/ /
ENTRYPOINT ["/meridian"]
DOCKERFILE
if ! docker build -t meridian-demo:latest "$ctx" >"$ctx/build.log" 2>&1; then
    cat "$ctx/build.log" >&2
    exit 1
fi

# one secret per demo, kept beside the compose file so that later scripts find it
secret_file="$HERE/.secret"
if [ ! -s "$secret_file" ]; then
    head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$secret_file"
fi
export MERIDIAN_CLUSTER_SECRET="$(cat "$secret_file")"
# a development CA and a certificate per region (for its alias on each network), once per demo;
# sa's is for the region join.sh adds
if [ ! -s "$HERE/.tls/sa.pem" ]; then
    rm -rf "$HERE/.tls"
    "$bin" cert --dir "$HERE/.tls" --node us --node eu --node ap --node sa \
        --host us.regions --host eu.regions --host ap.regions --host sa.regions \
        --host us.edge --host eu.edge --host ap.edge --host sa.edge >/dev/null
fi
compose up -d
echo "regions (HTTPS; CA $HERE/.tls/ca.pem): us https://127.0.0.1:${MERIDIAN_DEMO_US_PORT:-7001}  eu https://127.0.0.1:${MERIDIAN_DEMO_EU_PORT:-7002}  ap https://127.0.0.1:${MERIDIAN_DEMO_AP_PORT:-7003}"
echo "web page: http://127.0.0.1:${MERIDIAN_DEMO_PAGE_PORT:-7000}/"
