#!/usr/bin/env bash
# Run every native Go fuzz target of the module, one after another.
#   scripts/fuzz.sh [FUZZTIME [FUZZPARALLEL [FUZZMINIMIZETIME]]]   (make fuzz FUZZTIME=10m FUZZPARALLEL=1)
# Targets are discovered afresh each run: packages whose test files declare
# a func Fuzz..., confirmed with `go test -list '^Fuzz'`. Each target runs
# for FUZZTIME with -parallel FUZZPARALLEL; a failing input is written under
# the package's testdata/fuzz/<target>/ by go test (commit it as a seed once
# fixed). Exits 1 if any target failed, after running all of them.
# FUZZMINIMIZETIME bounds the minimization of each new interesting input
# (go's default, 60s, spends a whole short run minimizing inputs derived from
# large seeds such as config/testdata/sample.toml, executing almost nothing).
set -u -o pipefail

FUZZTIME=${1:-${FUZZTIME:-10m}}
FUZZPARALLEL=${2:-${FUZZPARALLEL:-1}}
FUZZMINIMIZETIME=${3:-${FUZZMINIMIZETIME:-5s}}
GO=${GO:-go}

cd "$(dirname "$0")/.."

# Packages with a candidate in their test files (cheap), then the authoritative list.
candidates=()
while read -r dir pkg files; do
	[ -n "$files" ] || continue
	if (cd "$dir" && grep -lE '^func Fuzz[A-Za-z0-9_]*\(' $files >/dev/null 2>&1); then
		candidates+=("$pkg")
	fi
done < <($GO list -f '{{.Dir}} {{.ImportPath}} {{join .TestGoFiles " "}} {{join .XTestGoFiles " "}}' ./...)

targets=() # "package target"
for pkg in "${candidates[@]}"; do
	if ! out=$($GO test -list '^Fuzz' "$pkg" 2>&1); then
		echo "fuzz: cannot list the fuzz targets of $pkg:" >&2
		echo "$out" >&2
		exit 1
	fi
	while read -r name; do
		case $name in
		Fuzz*) targets+=("$pkg $name") ;;
		esac
	done <<<"$out"
done

if [ ${#targets[@]} -eq 0 ]; then
	echo "fuzz: no fuzz targets found" >&2
	exit 1
fi
echo "fuzz: ${#targets[@]} targets, $FUZZTIME each, -parallel $FUZZPARALLEL"
for t in "${targets[@]}"; do echo "  ${t#* } ${t%% *}"; done

results=()
failed=0
for t in "${targets[@]}"; do
	pkg=${t%% *}
	name=${t#* }
	echo "=== fuzz $name $pkg ($FUZZTIME)"
	start=$(date +%s)
	if $GO test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZETIME" -parallel "$FUZZPARALLEL" "$pkg"; then
		result=PASS
	else
		result=FAIL
		failed=1
	fi
	secs=$(($(date +%s) - start))
	echo "=== $result $name $pkg (${secs}s)"
	results+=("$result $name $pkg ${secs}s")
done

echo "fuzz summary ($FUZZTIME each, -parallel $FUZZPARALLEL):"
for r in "${results[@]}"; do echo "  $r"; done
exit $failed
