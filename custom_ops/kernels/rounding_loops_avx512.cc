// AVX-512 rounding loops.  setup.py compiles this file alone with
// -mavx512f -mavx512bw -mavx512dq -mavx512vl; it runs only where
// CpuSupportsAvx512() says so.
#define TF_LOWPREC_ISA avx512
#define TF_LOWPREC_ISA_NAME "avx512"
#include "rounding_loops_impl.h"
