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
		go test -run='^$' -fuzz="^${target}\$" -fuzztime="${FUZZTIME:-10s}" "$pkg"
	done
done

echo "== go test -race"
go test -race -count=1 -timeout 20m ./...
