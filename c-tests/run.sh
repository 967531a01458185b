#!/usr/bin/env bash
# Runs test programs one after the other, shows their output and totals their closing lines
# `N passed, N failed`. A program that exits non-zero, or ends without that line, counts as
# one more failure. Prints `<label>: N passed, N failed` and exits non-zero on any failure.
#
#   c-tests/run.sh [--label NAME] [--limit SECONDS] [--wrap "valgrind --flags"] PROGRAM...
#
# --limit kills a program (SIGKILL) that outlives its own watchdog by that much: a process
# stuck where signals cannot reach it (e.g. inside valgrind) still ends, as a failure.
#
# With VELOQ_TEST_TOTALS set, appends "passed failed" to that file (make test's total).
set -uo pipefail

label=c-tests
wrap=""
limit=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    --label) label=$2; shift 2 ;;
    --wrap) wrap=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
    esac
done

passed=0
failed=0
broken=()
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT

for prog in "$@"; do
    name=$(basename "$prog")
    log=$logdir/$name.log
    : >"$log"
    echo "--- $name${wrap:+ (under ${wrap%% *})}"
    killer=()
    [[ $limit -gt 0 ]] && killer=(timeout -s KILL "$limit")
    # shellcheck disable=SC2086 # $wrap is a command line on purpose
    "${killer[@]}" $wrap "$prog" >"$log" 2>&1 &
    pid=$!
    tail -n +1 -f --pid=$pid "$log" 2>/dev/null
    wait $pid
    rc=$?
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n1 || true)
    if [[ -z $line ]]; then
        [[ $rc -eq 137 && $limit -gt 0 ]] && echo "!!! $name killed after ${limit}s"
        echo "!!! $name exited with status $rc without its closing line"
        failed=$((failed + 1))
        broken+=("$name")
        continue
    fi
    p=${line%% passed*}
    f=${line#*, }
    f=${f%% failed*}
    passed=$((passed + p))
    failed=$((failed + f))
    if [[ $rc -ne 0 || $f -ne 0 ]]; then
        [[ $rc -ne 0 && $f -eq 0 ]] && failed=$((failed + 1)) # e.g. valgrind found errors
        echo "!!! $name: exit status $rc, $f failed"
        broken+=("$name")
    fi
done

if [[ -n ${VELOQ_TEST_TOTALS:-} ]]; then
    echo "$passed $failed" >>"$VELOQ_TEST_TOTALS"
fi
echo
[[ ${#broken[@]} -gt 0 ]] && echo "$label: failing programs: ${broken[*]}"
echo "$label: $passed passed, $failed failed"
[[ ${#broken[@]} -eq 0 ]]
