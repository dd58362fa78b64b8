#!/usr/bin/env bash
# Builds benchmarks/rounding_kernel_timing.cc and writes a table of the
# rounding loops' single-thread cost (ns per element, hot cache) to the
# Markdown file given as $1 (default benchmarks/results/rounding_kernel.md),
# one table per kernel tier in $2 (comma-separated, default "auto": the
# fastest this CPU runs), with a plain copy of the same buffer as the
# baseline of the same run.  Run from the repository root:
#   bash benchmarks/rounding_kernel_timing.sh
#   bash benchmarks/rounding_kernel_timing.sh benchmarks/results/avx2_zen3/rounding_kernel.md \
#     avx2,portable
set -euo pipefail
out=${1:-benchmarks/results/rounding_kernel.md}
tiers=${2:-auto}
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
K=custom_ops/kernels
FLAGS="-std=c++17 -O3 -DNDEBUG -I$K"
AVX2="-mavx2 -mfma -mf16c"
AVX512="-mavx512f -mavx512bw -mavx512dq -mavx512vl -mprefer-vector-width=512"
# cpu_dispatch.cc selects the tiers of every op, so it links with all of them.
objects=()
for unit in rounding_loops dfp_gemm bf16_gemm; do
  g++ $FLAGS -c $K/${unit}_portable.cc -o "$build/${unit}_p.o"
  g++ $FLAGS $AVX2 -c $K/${unit}_avx2.cc -o "$build/${unit}_a2.o"
  g++ $FLAGS $AVX512 -c $K/${unit}_avx512.cc -o "$build/${unit}_a5.o"
  objects+=("$build/${unit}_p.o" "$build/${unit}_a2.o" "$build/${unit}_a5.o")
done
g++ $FLAGS -c $K/cpu_dispatch.cc -o "$build/d.o"
g++ $FLAGS benchmarks/rounding_kernel_timing.cc "${objects[@]}" "$build/d.o" -lpthread \
  -o "$build/timing"

ns() { "$build/timing" "$@" | sed -E 's/.*: ([0-9.]+) ns\/element.*/\1/'; }

{
  echo "# Rounding loops alone, one thread"
  echo
  echo "- command: \`bash benchmarks/rounding_kernel_timing.sh $out $tiers\`"
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%S+00:00)"
  echo "- cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "- load_average_before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- data: 1 MB of float32 (hot in L2), Gaussian of standard deviation sigma;"
  echo "  best of 9 repetitions of about 64 MB of work, thread CPU time"
  echo
  echo "ns per element (lower is faster); copy is memcpy of the same buffer."
  echo "sigma 1: a few percent of E4M3 values lie in its subnormal range, about"
  echo "0.2 % below its subnormal step; sigma 0.01: most E4M3 values do."
  for tier in ${tiers//,/ }; do
    echo
    echo "## Tier: $("$build/timing" e4m3 copy 0.01 "$tier" 1 1 | cut -d' ' -f1)"
    echo
    echo "| format | rounding | sigma 1 | sigma 30 | sigma 0.01 |"
    echo "|---|---|---:|---:|---:|"
    echo "| – | copy | $(ns e4m3 copy 1 "$tier" 9 1) | – | – |"
    for format in bf16 fp16 e4m3 e5m2; do
      for rounding in nearest_even stochastic toward_zero; do
        echo "| $format | $rounding | $(ns $format $rounding 1 "$tier" 9 1) |" \
             "$(ns $format $rounding 1 "$tier" 9 30) | $(ns $format $rounding 1 "$tier" 9 0.01) |"
      done
    done
  done
  echo
  echo "- load_average_after: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out"
echo "wrote $out"
