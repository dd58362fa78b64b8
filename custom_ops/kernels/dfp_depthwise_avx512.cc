// The direct DFP16 depthwise convolution loops (dfp_depthwise_impl.h)
// compiled for the avx512 tier: -mavx512f -mavx512bw -mavx512dq
// -mavx512vl (setup.py); selected where CpuSupportsAvx512().
// Every tier gives the same bits (integer chunk sums are exact).
#define TF_LOWPREC_DEPTHWISE_ISA avx512
#define TF_LOWPREC_DEPTHWISE_ISA_NAME "avx512"
#include "dfp_depthwise_impl.h"
