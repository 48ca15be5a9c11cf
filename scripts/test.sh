#!/usr/bin/env bash
# Installs what the tests need (Debian/Ubuntu) and runs every test: vet,
# gofmt, the unit and integration tests under the race detector, and a short
# run of each fuzz target. This is the command README.md and .ci/run use.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

echo "== gofmt"
unformatted=$(gofmt -l .)
if [[ -n $unformatted ]]; then
	echo "gofmt needed on:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== fuzz (short runs)"
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
		echo "-- $pkg $target"
		# A count, not a duration: Go 1.26's fuzz coordinator can report a
		# bare "context deadline exceeded" when a -fuzztime duration ends
		# while a worker is mid-input (go.dev/issue/75804, fixed in 1.27);
		# a count has no deadline to race. -timeout still bounds a hang.
		go test -run='^$' -fuzz="^${target}\$" -fuzztime="${FUZZ_EXECS:-200000}x" \
			-parallel=2 -timeout=5m "$pkg"
	done
done

echo "== go test -race"
go test -race -count=1 -timeout 20m ./...
