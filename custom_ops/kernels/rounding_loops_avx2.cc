// AVX2 rounding loops.  setup.py compiles this file alone with -mavx2 -mfma
// -mf16c; it runs only where CpuSupportsAvx2() says so.  Bit-identical to the
// portable loops (tests/test_isa_equivalence.py).
#define TF_LOWPREC_ISA avx2
#define TF_LOWPREC_ISA_NAME "avx2"
#include "rounding_loops_impl.h"
