#!/usr/bin/env bash
# Smoke test of the built wheel, as a user installs it: build the wheel once, then for no
# extra and for each extra alone, install it into a fresh virtual environment and run
# tests/smoke/smoke_check.py from a directory that holds the user's own bus.py, managers.py
# and plugins/ (which must keep importing as theirs beside clusterbus).
#
# Usage: bash tests/smoke/run.sh [EXTRA ...]   (default: none cli redis sqlalchemy postgres
#        fastapi demo http otel prometheus; "none" is the install without extras)
# Environment: VENV (the repository's venv, which builds the wheel; default .venv),
#   PYTHON (makes the fresh venvs; default python3), SMOKE_JOBS (venvs at once; default 2),
#   CLUSTERBUS_TEST_REDIS_URL (the Redis of the redis extra; default redis://127.0.0.1:6379/0).
# pip's cache is shared by every run (pip's own default cache, or PIP_CACHE_DIR).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
JOBS=${SMOKE_JOBS:-2}
REDIS_URL=${CLUSTERBUS_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}
if (($# > 0)); then
    EXTRAS=("$@")
else
    EXTRAS=(none cli redis sqlalchemy postgres fastapi demo http otel prometheus)
    # the other Python versions of the classifiers, without extras, where installed (on the
    # PATH, or as a pyenv version whose shim is not active)
    for version in 3.12 3.13; do
        found=""
        for candidate in "python$version" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/"python$version"; do
            if "$candidate" -c "" 2>/dev/null; then
                found=$candidate
                break
            fi
        done
        if [[ -n $found ]]; then
            EXTRAS+=("python$version")
            declare -g "INTERPRETER_${version/./_}=$found"
        else
            echo "smoke: Python $version is not installed here: not tried"
        fi
    done
fi

WORK=$(mktemp -d -t clusterbus-smoke.XXXXXX)
# shellcheck disable=SC2317 # the functions below run from the traps
kill_tree() { # a process started here and its descendants (pip, python), by id
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$child"; done
    kill "$1" 2>/dev/null || true
}
# shellcheck disable=SC2317
cleanup() {
    local pid
    for pid in $(jobs -pr); do kill_tree "$pid"; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# pip's file mirror warns about every package it has no folder for: harmless, not shown
quiet_pip() { grep -v -E "^WARNING: Location '.*' is ignored" || true; }

started=$SECONDS
echo "smoke: building the wheel with $VENV/bin/python"
if "$VENV/bin/python" -c "import build" 2>/dev/null; then
    build=("$VENV/bin/python" -m build --wheel --outdir "$WORK/dist" .)
else
    build=("$VENV/bin/python" -m pip wheel . --no-deps --wheel-dir "$WORK/dist")
fi
if ! "${build[@]}" >"$WORK/build.log" 2>&1; then
    quiet_pip <"$WORK/build.log"
    echo "smoke: FAILED to build the wheel (${build[*]})"
    exit 1
fi
wheels=("$WORK"/dist/clusterbus-*.whl)
if ((${#wheels[@]} != 1)) || [[ ! -f ${wheels[0]} ]]; then
    echo "smoke: expected one wheel in $WORK/dist, found: ${wheels[*]}"
    exit 1
fi
WHEEL=${wheels[0]}
echo "smoke: built $(basename "$WHEEL") in $((SECONDS - started))s"

# one extra ("none": no extra): fresh venv, install, decoys, smoke_check.py; all output to
# $WORK/<label>/log and the exit status to $WORK/<label>/status
run_one() {
    local label=$1 extra=$1 dir="$WORK/$1" begin=$SECONDS status python=$PYTHON
    [[ $label == none ]] && extra=""
    if [[ $label == python3.* ]]; then # another interpreter, no extra
        local var="INTERPRETER_${label#python}"
        var=${var/./_}
        python=${!var}
        extra=""
    fi
    mkdir -p "$dir"
    set +e # the subshell stops at its first failure (-e would be ignored in `( ... ) || x`)
    (
        set -euo pipefail
        echo "--- $label: fresh venv ($("$python" --version 2>&1))"
        "$python" -m venv "$dir/venv"
        echo "--- $label: pip install $(basename "$WHEEL")${extra:+[$extra]}"
        "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "$WHEEL${extra:+[$extra]}" 2>&1 | quiet_pip
        mkdir -p "$dir/decoy/plugins"
        echo "WHO = \"user's bus\"" >"$dir/decoy/bus.py"
        echo "WHO = \"user's managers\"" >"$dir/decoy/managers.py"
        echo "WHO = \"user's plugins\"" >"$dir/decoy/plugins/__init__.py"
        cp "$ROOT/tests/smoke/smoke_check.py" "$dir/decoy/"
        args=()
        [[ -n $extra ]] && args+=(--extra "$extra")
        [[ $extra == redis ]] && args+=(--redis-url "$REDIS_URL")
        cd "$dir/decoy"
        # unset: a PYTHONPATH (or a CLUSTERBUS_* setting) of the caller must not leak in
        env -u PYTHONPATH -u PYTHONHOME ../venv/bin/python smoke_check.py "${args[@]}"
    ) >"$dir/log" 2>&1
    status=$?
    set -e
    echo "$status $((SECONDS - begin))" >"$dir/status"
    return "$status"
}

show() {
    local label=$1 status seconds
    read -r status seconds <"$WORK/$label/status"
    echo "=== $label ($([[ $status == 0 ]] && echo passed || echo "FAILED, exit $status") in ${seconds}s)"
    cat "$WORK/$label/log"
}

echo "smoke: ${#EXTRAS[@]} installs (${EXTRAS[*]}), $JOBS at a time"
declare -A LABEL=()
running=0
# wait for one install to finish and print its log
wait_one() {
    local finished=""
    wait -n -p finished || true
    running=$((running - 1))
    if [[ -n $finished ]]; then show "${LABEL[$finished]}"; fi
}
for label in "${EXTRAS[@]}"; do
    while ((running >= JOBS)); do wait_one; done
    run_one "$label" &
    LABEL[$!]=$label
    running=$((running + 1))
done
while ((running > 0)); do wait_one; done

failed=0
echo "=== smoke summary (wheel $(basename "$WHEEL"), $((SECONDS - started))s in all)"
for label in "${EXTRAS[@]}"; do
    if [[ ! -f $WORK/$label/status ]]; then
        printf '%-6s %-12s (did not finish)\n' FAIL "$label"
        failed=1
        continue
    fi
    read -r status seconds <"$WORK/$label/status"
    if [[ $status == 0 ]]; then
        printf '%-6s %-12s %4ss\n' PASS "$label" "$seconds"
    else
        reason=$(grep -m1 '^FAIL' "$WORK/$label/log" || tail -n1 "$WORK/$label/log")
        printf '%-6s %-12s %4ss  %s\n' FAIL "$label" "$seconds" "$reason"
        failed=1
    fi
done
exit "$failed"
