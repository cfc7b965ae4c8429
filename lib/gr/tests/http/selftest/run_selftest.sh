#!/bin/sh
# Self-test of lib/gr/tests/http/runner.py against selftest/fake_service.py.
#
#   lib/gr/tests/http/selftest/run_selftest.sh [JWT_TOOL] [PG_URL]
#
# JWT_TOOL defaults to build/bin/gr-jwt (relative to the repository root).
# With PG_URL (postgres://postgres@127.0.0.1:PORT/postgres) the cases also run
# with --engine pg.  Proves both directions: pass/ must pass, and every file in
# fail/ must fail, with the reason named by its '# expect-fail:' lines.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../../.." && pwd)
jwt=${1:-$root/build/bin/gr-jwt}
pg=${2:-}
py=/usr/bin/python3
runner="$here/../runner.py"
fake="$py $here/fake_service.py"
npass=$(ls "$here"/pass/*.case | wc -l)
nfail=$(ls "$here"/fail/*.case | wc -l)
bad=0
out=$(mktemp)

check() { # name expected-rc expected-last-line [grep-text]
	rc=$1
	name=$2
	want_rc=$3
	want_last=$4
	last=$(tail -n 1 "$out")
	if [ "$rc" -ne "$want_rc" ] || [ "$last" != "$want_last" ]; then
		echo "SELFTEST FAIL: $name: rc=$rc (want $want_rc), last line '$last' (want '$want_last')"
		tail -n 40 "$out"
		bad=1
	elif [ $# -ge 5 ] && ! grep -qF "$5" "$out"; then
		echo "SELFTEST FAIL: $name: output lacks '$5'"
		bad=1
	else
		echo "selftest ok: $name: $last (rc=$rc)"
	fi
}

for engine in sqlite ${pg:+pg}; do
	set -- --bin "$fake" --jwt-tool "$jwt" --engine "$engine" ${pg:+--pg-url "$pg"} -j 4

	$py "$runner" "$@" "$here/pass" >"$out" 2>&1
	check $? "$engine pass/" 0 "$npass passed, 0 failed"

	$py "$runner" "$@" --expect-fail "$here/fail" >"$out" 2>&1
	check $? "$engine fail/ --expect-fail" 0 "$nfail passed, 0 failed"

	$py "$runner" "$@" "$here/fail" >"$out" 2>&1
	check $? "$engine fail/ plain" 1 "0 passed, $nfail failed"
done

$py "$runner" --bin "$py -c 'import sys; print(\"boom\"); sys.exit(2)'" --jwt-tool "$jwt" \
	"$here/pass/matching.case" >"$out" 2>&1
check $? "server exits at start-up" 1 "0 passed, 1 failed" "server exited during start-up with status 2"

$py "$runner" --bin "$fake" --jwt-tool /nonexistent/gr-jwt "$here/pass/matching.case" >"$out" 2>&1
check $? "missing jwt tool" 1 "0 passed, 1 failed" "cannot create JWT keys"

rm -f "$out"
if [ $bad -ne 0 ]; then
	echo "runner self-test FAILED"
	exit 1
fi
echo "runner self-test passed"
