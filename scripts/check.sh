#!/usr/bin/env bash
# check.sh - `make check`: clang-format (Appendix A of STYLE.md), banned functions (STYLE R31),
# SQL built from format strings, and cppcheck on lib/gr, cmd and services.
set -uo pipefail
cd "$(dirname "$0")/.."
rc=0
# Tracked files and new ones not ignored yet: a file is checked before its first commit.
files=$(git ls-files --cached --others --exclude-standard '*.c' '*.h' | grep -v '^fuzz/' | sort -u || true)
echo "-- clang-format"
# shellcheck disable=SC2086
fmt=$(clang-format --dry-run -Werror $files 2>&1 | head -40)
[ -n "$fmt" ] && { echo "$fmt"; rc=1; }
echo "-- banned functions"
grep -nE '\b(sprintf|vsprintf|strcpy|strcat|strncpy|strtok|atoi|atol|sscanf|gets)\(' $files && rc=1
grep -nE '\b(malloc|calloc|realloc|free)\(' $files | grep -v 'lib/gr/src/arena.c' | grep -v 'json_\|PQfreemem\|curl_free\|OPENSSL_free' && rc=1
echo "-- SQL from format strings"
grep -nE 'printf\([^;]*"[^"]*(SELECT|INSERT|UPDATE|DELETE)[^"]*%s' $files && rc=1
echo "-- cppcheck"
cppcheck --quiet --inline-suppr --enable=warning,portability --error-exitcode=1 -Ilib/gr/include \
    --suppress=missingIncludeSystem lib/gr/src cmd services 2>&1 | tail -20 || rc=1
[ $rc = 0 ] && echo "check: clean" || echo "check: problems above"
exit $rc
