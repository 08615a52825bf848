#!/usr/bin/env bash
# Run the fuzz targets for a fixed time each: fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS defaults to 20 (what CI runs); with no TARGET, every target of
# fuzz/Cargo.toml runs, one after the other. A crash, a panic, a failed
# assertion, a leak, a timeout (10 s per input) or running out of memory
# (2 GiB) stops the script with a non-zero status and the input saved
# under fuzz/artifacts/TARGET/; fuzz/README.md says how to turn it into a
# regression test.
#
# cargo-fuzz needs nightly compiler flags (-Zsanitizer=address). The one
# toolchain these machines have is stable, which accepts them with
# RUSTC_BOOTSTRAP=1; no nightly toolchain is needed or used.
#
# Each target starts from its checked-in seeds (fuzz/corpus/TARGET) and
# from every input that once failed (fuzz/regressions/TARGET); what it
# finds on the way goes to fuzz/work/TARGET (not checked in), so a later
# run by hand goes on from there.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-20}"
shift || true
case "$seconds" in
  '' | *[!0-9]*) echo "usage: fuzz/run.sh [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
  exit 1
fi
command -v c++ >/dev/null || { echo "libFuzzer needs a C++ compiler (g++)" >&2; exit 1; }

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

echo "== fuzz build (${#targets[@]} targets)"
# One build for all targets: they share every dependency.
cargo fuzz build

failed=()
for target in "${targets[@]}"; do
  mkdir -p "work/$target" "corpus/$target"
  corpora=("work/$target" "corpus/$target")
  [ -d "regressions/$target" ] && corpora+=("regressions/$target")
  args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1)
  [ -f "$target.dict" ] && args+=(-dict="$target.dict")
  # The engine's tokio runtime keeps allocations from one input to the
  # next, so libFuzzer would run its leak check after nearly every input:
  # 5 times slower. Memory per message is measured by bench/memory.sh.
  [ "$target" = engine ] && args+=(-detect_leaks=0)
  log="work/$target.log"
  start=$(date +%s)
  if cargo fuzz run "$target" "${corpora[@]}" -- "${args[@]}" >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$target")
  fi
  took=$(($(date +%s) - start))
  # libFuzzer's last status line and final stats: coverage and speed.
  done_line=$(grep -aE '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n 1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(sed -n 's/.* cov: \([0-9]*\) ft: \([0-9]*\).*/cov \1, features \2/p' <<<"$done_line")
  printf '%-13s %-6s %4ss  %s executions, %s exec/s, %s\n' \
    "$target" "$status" "$took" "${execs:-?}" "${rate:-?}" "${cov:-coverage unknown}"
  if [ "$status" = FAILED ]; then
    echo "---- last lines of fuzz/$log"
    tail -n 60 "$log"
    echo "----"
  fi
done

passed=$((${#targets[@]} - ${#failed[@]}))
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzzing failed: ${failed[*]} (inputs under fuzz/artifacts/; see fuzz/README.md)"
  echo "fuzz: $passed passed, ${#failed[@]} failed"
  exit 1
fi
echo "fuzz: $passed passed, 0 failed"
