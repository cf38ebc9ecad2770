#!/usr/bin/env bash
# Long mode of the fuzz suite: every target in fuzz/ runs for a fixed budget on a nightly
# toolchain, then its corpus is minimised (cargo fuzz cmin) so what is committed stays small.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]     (default: 60 s, every target)
#
# A crash stops that target; its input is copied to fuzz/regressions/<target>/, where the
# stable test crates/rio-parse/tests/corpora.rs replays it (and fails until it is fixed).
# Env: FUZZ_TOOLCHAIN (default nightly), FUZZ_TARGET_DIR (default fuzz/target),
# FUZZ_JOBS (parallel libFuzzer workers per target, default 1).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-60}"
shift || true
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
JOBS="${FUZZ_JOBS:-1}"

if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  echo "fuzzing needs a $TOOLCHAIN toolchain (rustup toolchain install $TOOLCHAIN)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

fuzz() { cargo "+$TOOLCHAIN" fuzz "$@"; }

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(fuzz list)
fi

echo "== building ${#targets[@]} fuzz targets ($TOOLCHAIN)"
fuzz build --target-dir "$TARGET_DIR"

logs="$(mktemp -d)"
crashed=0
printf '\n%-26s %14s %8s %8s  %s\n' target executions seconds corpus result > "$logs/summary"
for t in "${targets[@]}"; do
  echo "== $t: ${SECS}s"
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  start=$(date +%s)
  result=ok
  if ! fuzz run "$t" --target-dir "$TARGET_DIR" --jobs "$JOBS" -- \
      -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$logs/$t.log" 2>&1; then
    result=CRASH
    crashed=1
  fi
  secs=$(( $(date +%s) - start ))
  execs=$(grep -h 'stat::number_of_executed_units' "$logs/$t.log" | awk '{s += $2} END {print s + 0}')
  if [ "$result" = CRASH ]; then
    mkdir -p "fuzz/regressions/$t"
    for a in "fuzz/artifacts/$t"/*; do
      [ -f "$a" ] || continue
      cp "$a" "fuzz/regressions/$t/"
      result="CRASH $(basename "$a") -> fuzz/regressions/$t/"
    done
    grep -m1 -A12 'panicked at\|ERROR: libFuzzer' "$logs/$t.log" || tail -20 "$logs/$t.log"
  else
    # Edges only (no hit counters) and a set cover: a corpus of a few dozen files per
    # target that still reaches every edge the run found, so the committed corpora stay small.
    fuzz cmin "$t" --target-dir "$TARGET_DIR" -- -use_counters=0 -set_cover_merge=1 \
      >"$logs/$t.cmin.log" 2>&1 || true
  fi
  files=$(find "fuzz/corpus/$t" -type f | wc -l)
  printf '%-26s %14s %8s %8s  %s\n' "$t" "$execs" "$secs" "$files" "$result" >> "$logs/summary"
done

cat "$logs/summary"
echo "corpora: $(du -sh fuzz/corpus | cut -f1); logs in $logs"
exit "$crashed"
