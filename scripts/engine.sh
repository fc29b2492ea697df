#!/usr/bin/env bash
# Sourced by test.sh: make sure a Docker-API engine answers for the docker driver's tests.
# If none does and this is Debian with root, install Podman and serve its Docker-compatible API
# on a unix socket for the duration of the run (stopped again on exit).

PODMAN_SOCKET=/run/podman/projectvm-test.sock
PODMAN_PID=

engine_answers() {
    "$ROOT/.venv/bin/python" - <<'PY' 2>/dev/null
import docker
docker.from_env(timeout=5).ping()
PY
}

podman_conf() {
    # runc as the runtime (crun fails on hybrid cgroup hosts); ulimits within the hard limits
    # of this host and of Podman's own service process, or containers fail to start.
    local nofile nproc manager=cgroupfs
    nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
    nproc=$(ulimit -Hu); { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
    [ -d /run/systemd/system ] && manager=systemd
    cat <<CONF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]
[engine]
runtime = "runc"
cgroup_manager = "${manager}"
events_logger = "file"
CONF
}

stop_podman() {
    if [ -n "$PODMAN_PID" ]; then
        kill "$PODMAN_PID" 2>/dev/null || true
        wait "$PODMAN_PID" 2>/dev/null || true
        rm -f "$PODMAN_SOCKET"
        PODMAN_PID=
    fi
}

ensure_engine() {
    if engine_answers; then
        log "a Docker-API engine answers${DOCKER_HOST:+ at $DOCKER_HOST}"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        log "no Docker-API engine answers; the docker driver's tests will be skipped"
        return 0
    fi
    apt_install podman runc
    local conf="$ROOT/.venv/projectvm-podman.conf"
    podman_conf >"$conf"
    mkdir -p "$(dirname "$PODMAN_SOCKET")"
    rm -f "$PODMAN_SOCKET"
    log "starting Podman's Docker-compatible service on $PODMAN_SOCKET"
    CONTAINERS_CONF="$conf" podman system service --time=0 "unix://$PODMAN_SOCKET" \
        >"$ROOT/.venv/podman-service.log" 2>&1 &
    PODMAN_PID=$!
    trap stop_podman EXIT
    export DOCKER_HOST="unix://$PODMAN_SOCKET"
    local tries=0
    until engine_answers; do
        tries=$((tries + 1))
        if [ $tries -gt 150 ] || ! kill -0 "$PODMAN_PID" 2>/dev/null; then
            log "Podman's service did not come up; see $ROOT/.venv/podman-service.log"
            tail -20 "$ROOT/.venv/podman-service.log" >&2 || true
            return 1
        fi
        sleep 0.2
    done
}

ensure_runtime_image() {
    engine_answers || return 0
    if "$ROOT/.venv/bin/projectvm" image status | grep -q ": missing"; then
        apt_install debootstrap
        log "building the project runtime image (Debian packages, no registry)"
        "$ROOT/.venv/bin/projectvm" --data-dir "$ROOT/.venv/image-build" image build \
            --for docker | grep --line-buffered -E "^(building|installing|packing|importing|imported|done|debootstrap|reusing)" || return 1
    fi
}
