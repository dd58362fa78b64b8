// The direct DFP16 depthwise convolution loops (dfp_depthwise_impl.h)
// compiled for the portable tier: baseline instruction set (SSE2 on x86-64).
// Every tier gives the same bits (integer chunk sums are exact).
#define TF_LOWPREC_DEPTHWISE_ISA portable
#define TF_LOWPREC_DEPTHWISE_ISA_NAME "portable"
#include "dfp_depthwise_impl.h"
