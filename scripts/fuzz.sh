#!/usr/bin/env bash
# fuzz.sh [SECONDS] - builds every libFuzzer target fuzz/<name>/fuzz_<name>.c with clang
# (ASan+UBSan) against all of lib/gr, then runs each for SECONDS (default 60) on a scratch copy
# of its corpus. Prints one line per target: runs, seconds, and whether it found a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
out=build/fuzz
mkdir -p "$out"
CFLAGS=(-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -std=c17
        -D_GNU_SOURCE -pthread -Ilib/gr/include -I/usr/include/postgresql)
LIBS=(-lmicrohttpd -ljansson -lsqlite3 -lpq -lnats -lcurl -lssl -lcrypto -lhiredis -lm)
rc=0
summary=()
for src in fuzz/*/fuzz_*.c; do
    name=$(basename "$src" .c)
    dir=$(dirname "$src")
    echo "== $name: building"
    clang "${CFLAGS[@]}" "$src" lib/gr/src/*.c -o "$out/$name" "${LIBS[@]}"
    work=$(mktemp -d)
    [ -d "$dir/corpus" ] && cp -r "$dir/corpus/." "$work/"
    dict=()
    for d in "$dir"/*.dict; do [ -f "$d" ] && dict=(-dict="$d"); done
    echo "== $name: running ${secs}s"
    if "$out/$name" "${dict[@]}" -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix="$out/$name-" "$work" >"$out/$name.log" 2>&1; then
        runs=$(awk '/stat::number_of_executed_units/{print $2}' "$out/$name.log")
        summary+=("$name: ${runs:-?} runs in ${secs}s, no crash")
    else
        summary+=("$name: CRASH, see $out/$name.log")
        tail -30 "$out/$name.log"
        rc=1
    fi
    rm -rf "$work"
done
printf '%s\n' "${summary[@]}"
exit $rc
