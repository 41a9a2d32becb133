# Sourced by the checks that try the service as a stranger would (.ci/schemathesis, .ci/newman): start it here with
# low limits, its own data dir and instance name, and an empty package index on loopback (nothing is downloaded);
# create a client; stop everything and remove its containers on exit. Sets: work, port, key.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

serve_for_check() {
    work="$(mktemp -d)"
    port="$(free_port)"
    local index_port instance="$1-$$"
    index_port="$(free_port)"
    mkdir -p "$work/index/simple"
    export PORT="$port" RUNNER_DATA_DIR="$work/data" RUNNER_INSTANCE="$instance" \
        RUNNER_TIMEOUT_S=1 RUNNER_MAX_TIMEOUT_S=2 RUNNER_MAX_MEMORY_MB=256 RUNNER_MAX_CPUS=1 \
        RUNNER_MAX_FILE_BYTES=65536 RUNNER_MAX_BODY_BYTES=262144 RUNNER_MAX_FILES=5 RUNNER_WORKERS=2 \
        RUNNER_QUEUE_SIZE=64 RUNNER_CLIENT_QUEUE_LIMIT=64 RUNNER_FOLLOWERS_PER_CLIENT=64 RUNNER_BUILD_TIMEOUT_S=30 \
        PIP_INDEX_URL="http://127.0.0.1:$index_port/simple" PIP_RETRIES=0 PIP_DEFAULT_TIMEOUT=5
    python3 -m http.server "$index_port" --bind 127.0.0.1 --directory "$work/index" >"$work/index.log" 2>&1 &
    index_pid=$!
    key="$(pipenv run python run.py clients create "$1" | tail -1)"
    pipenv run python run.py >"$work/server.log" 2>&1 &
    server_pid=$!
    service_instance="$instance"
    trap stop_service EXIT
    for _ in $(seq 120); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && return; sleep 0.5; done
    echo "the service did not become ready:"; tail -40 "$work/server.log"; return 1
}

stop_service() {
    kill "$server_pid" "$index_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    docker ps -aq --filter "label=io.datapane.runner.instance=$service_instance" | xargs -r docker rm -f >/dev/null
    rm -rf "$work"
}
