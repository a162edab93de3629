#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each (default 600), one after the other, at the lowest CPU
# priority, and appends one line per run to fuzz/results.tsv: target, seconds, executions, CPU seconds, corpus
# size, crashes. Stable Rust only here: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its sanitizer flags (ASan).
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-600}"; shift || true
targets=("$@")
((${#targets[@]})) || targets=(canon rules_doc rules_local wire host_verify redact proxy_head)
export RUSTC_BOOTSTRAP=1
cargo run -q --bin seed >/dev/null
mkdir -p logs artifacts
for t in "${targets[@]}"; do
  [[ -f "fuzz_targets/$t.rs" ]] || continue
  cargo fuzz build -O --fuzz-dir . "$t" 2>/dev/null
  log="logs/$t.log"
  start_cpu=$(awk '{print $14+$15+$16+$17}' /proc/$$/stat)
  /usr/bin/time -f '%U %S' -o "logs/$t.time" nice -n 19 \
    "target/x86_64-unknown-linux-gnu/release/$t" "corpus/$t" -max_total_time="$secs" -print_final_stats=1 \
    -artifact_prefix="artifacts/$t-" -close_fd_mask=3 >"$log" 2>&1 || true
  execs=$(grep -oP 'stat::number_of_executed_units:\s*\K[0-9]+' "$log" || echo 0)
  cpu=$(awk '{printf "%.0f", $1+$2}' "logs/$t.time")
  corpus=$(find "corpus/$t" -type f | wc -l)
  crashes=$(find artifacts -name "$t-*" -type f | wc -l)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$secs" "$execs" "$cpu" "$corpus" "$crashes" | tee -a results.tsv
done
