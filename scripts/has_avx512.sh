#!/usr/bin/env bash
# Exits 0 where the CPU has the AVX-512 flags torch needs for its AVX-512 kernels (avx512f, avx512bw, avx512vl,
# avx512dq in /proc/cpuinfo, or in the file CPUINFO names); otherwise prints the missing flags and exits 1.
set -euo pipefail
flags=" $(grep -m1 '^flags' "${CPUINFO:-/proc/cpuinfo}" 2>/dev/null | cut -d: -f2 || true) "
missing=""
for flag in avx512f avx512bw avx512vl avx512dq; do
  case "$flags" in *" $flag "*) ;; *) missing="$missing $flag" ;; esac
done
if [ -n "$missing" ]; then
  echo "this CPU lacks${missing} (${CPUINFO:-/proc/cpuinfo})"
  exit 1
fi
