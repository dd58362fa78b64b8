#!/usr/bin/env bash
# Builds benchmarks/rounding_kernel_timing.cc and writes a table of the
# rounding loops' single-thread cost (ns per element, hot cache) to the
# Markdown file given as $1 (default benchmarks/results/rounding_kernel.md),
# with a plain copy of the same buffer as the baseline of the same run.
# Run from the repository root:
#   bash benchmarks/rounding_kernel_timing.sh
set -euo pipefail
out=${1:-benchmarks/results/rounding_kernel.md}
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
K=custom_ops/kernels
V="-mavx512f -mavx512bw -mavx512dq -mavx512vl -mprefer-vector-width=512"
g++ -std=c++17 -O3 -DNDEBUG -I$K -c $K/rounding_loops_portable.cc -o "$build/p.o"
g++ -std=c++17 -O3 -DNDEBUG $V -I$K -c $K/rounding_loops_avx512.cc -o "$build/a.o"
g++ -std=c++17 -O3 -DNDEBUG -I$K -c $K/cpu_dispatch.cc -o "$build/d.o"
g++ -std=c++17 -O3 -I$K benchmarks/rounding_kernel_timing.cc "$build/p.o" "$build/a.o" \
  "$build/d.o" -o "$build/timing"

ns() { "$build/timing" "$@" | sed -E 's/.*: ([0-9.]+) ns\/element.*/\1/'; }

{
  echo "# Rounding loops alone, one thread"
  echo
  echo "- command: \`bash benchmarks/rounding_kernel_timing.sh $out\`"
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%S+00:00)"
  echo "- cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "- load_average_before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- data: 1 MB of float32 (hot in L2), Gaussian of standard deviation sigma;"
  echo "  best of 9 repetitions of about 64 MB of work, thread CPU time"

  echo
  echo "ns per element (lower is faster); copy is memcpy of the same buffer."
  echo "sigma 1: a few percent of E4M3 values lie in its subnormal range, about"
  echo "0.2 % below its subnormal step; sigma 0.01: most E4M3 values do."
  echo
  echo "| format | rounding | sigma 1 | sigma 30 | sigma 0.01 |"
  echo "|---|---|---:|---:|---:|"
  echo "| – | copy | $(ns e4m3 copy 1 avx512 9 1) | – | – |"
  for format in bf16 fp16 e4m3 e5m2; do
    for rounding in nearest_even stochastic toward_zero; do
      echo "| $format | $rounding | $(ns $format $rounding 1 avx512 9 1) |" \
           "$(ns $format $rounding 1 avx512 9 30) | $(ns $format $rounding 1 avx512 9 0.01) |"
    done
  done
  echo
  echo "- load_average_after: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out"
echo "wrote $out"
