// Portable rounding loops: baseline x86-64 (or any) instruction set.
#define TF_LOWPREC_ISA portable
#define TF_LOWPREC_ISA_NAME "portable"
#include "rounding_loops_impl.h"
