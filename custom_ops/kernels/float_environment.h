// The floating-point environment the GEMM kernels compute in.
//
// TensorFlow runs op kernels, and the threads of its intra-op pool, with
// denormals flushed: on x86 the MXCSR register has FTZ (results below 2^-126
// become 0) and DAZ (subnormal inputs read as 0) set.  The GEMMs promise IEEE
// results, subnormals included (a DFP product of operands at 2^-70 is
// 2^-138, not 0; docs/dfp_gemm.md), and the same bits whoever calls them, so
// they run under ScopedIeeeFloatEnvironment: round to nearest even, every
// exception masked, FTZ and DAZ off, restored on scope exit.  Each thread has
// its own MXCSR, so the scope is opened on the op's thread and in every work
// item run on the pool (kernels/batched_gemm_common.h).
//
// The rounding loops are written to give the same bits with or without FTZ
// and DAZ (rounding.h); their float-addition forms need only the rounding
// mode to be nearest even, which ScopedRoundToNearest ensures without
// touching the rest of the register.
#ifndef TF_LOWPREC_KERNELS_FLOAT_ENVIRONMENT_H_
#define TF_LOWPREC_KERNELS_FLOAT_ENVIRONMENT_H_

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace tf_lowprec {

#if defined(__x86_64__) || defined(__i386__)
// MXCSR 0x1F80: all six exceptions masked, round to nearest even, FTZ = DAZ = 0.
constexpr unsigned kIeeeMxcsr = 0x1F80u;

class ScopedIeeeFloatEnvironment {
 public:
  ScopedIeeeFloatEnvironment() : saved_(_mm_getcsr()) {
    if (saved_ != kIeeeMxcsr) _mm_setcsr(kIeeeMxcsr);
  }
  ~ScopedIeeeFloatEnvironment() {
    if (saved_ != kIeeeMxcsr) _mm_setcsr(saved_);
  }
  ScopedIeeeFloatEnvironment(const ScopedIeeeFloatEnvironment&) = delete;
  ScopedIeeeFloatEnvironment& operator=(const ScopedIeeeFloatEnvironment&) = delete;

 private:
  unsigned saved_;
};
// MXCSR with round-to-nearest for the lifetime of the scope: the rounding
// control field (bits 13-14) cleared, FTZ/DAZ and the exception masks kept;
// the caller's MXCSR is restored on exit.  Free when the mode is already
// nearest (TensorFlow's threads): one read of the register.
class ScopedRoundToNearest {
 public:
  ScopedRoundToNearest() : saved_(_mm_getcsr()) {
    if ((saved_ & kRoundingControl) != 0) _mm_setcsr(saved_ & ~kRoundingControl);
  }
  ~ScopedRoundToNearest() {
    if ((saved_ & kRoundingControl) != 0) _mm_setcsr(saved_);
  }
  ScopedRoundToNearest(const ScopedRoundToNearest&) = delete;
  ScopedRoundToNearest& operator=(const ScopedRoundToNearest&) = delete;

 private:
  static constexpr unsigned kRoundingControl = 0x6000u;
  unsigned saved_;
};
#else
// Other architectures: TensorFlow's flush-denormal mode (FPCR.FZ on aarch64)
// is not changed here; the portable kernels then flush subnormal results
// where TensorFlow asks for it (documented in docs/dfp_gemm.md).
class ScopedIeeeFloatEnvironment {
 public:
  ScopedIeeeFloatEnvironment() {}
};
class ScopedRoundToNearest {
 public:
  ScopedRoundToNearest() {}
};
#endif

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_FLOAT_ENVIRONMENT_H_
