# Sourced by scripts/up and scripts/test: create or update .venv with the given extras. pip is skipped when
# pyproject.toml is unchanged since the last install and that install had every extra asked for, so a second
# start is fast.
ensure_venv() {
    local extras="$1" python="${PYTHON:-python3}" stamp=.venv/.bullrq-installed
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "error: bullrq needs Python 3.11 or newer as '$python' (set PYTHON to another interpreter)" >&2
        return 1
    fi
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    local hash installed_hash="" installed_extras="" extra missing=""
    hash="$(sha256sum pyproject.toml | cut -c1-16)"
    [ -f "$stamp" ] && read -r installed_hash installed_extras < "$stamp"
    for extra in ${extras//,/ }; do
        [[ ",$installed_extras," == *",$extra,"* ]] || missing=1
    done
    [ "$installed_hash" = "$hash" ] && [ -z "$missing" ] && return 0
    [ -n "$installed_extras" ] && [ "$installed_hash" = "$hash" ] && extras="$installed_extras,$extras"
    echo "installing bullrq[$extras] into .venv ..." >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]" 2>&1 \
        | { grep -v "^WARNING: Location" || true; } >&2
    [ "${PIPESTATUS[0]}" = 0 ] || return 1
    echo "$hash $extras" > "$stamp"
}
