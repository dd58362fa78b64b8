// The direct DFP16 depthwise convolution loops (dfp_depthwise_impl.h)
// compiled for the avx2 tier: -mavx2 -mfma -mf16c (setup.py); selected where CpuSupportsAvx2().
// Every tier gives the same bits (integer chunk sums are exact).
#define TF_LOWPREC_DEPTHWISE_ISA avx2
#define TF_LOWPREC_DEPTHWISE_ISA_NAME "avx2"
#include "dfp_depthwise_impl.h"
