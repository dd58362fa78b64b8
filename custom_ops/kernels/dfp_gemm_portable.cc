// Portable INT16 shared-exponent GEMM (baseline instruction set): every chunk
// sum is computed in INT64.  Also the workspace cache shared by all tiers
// (the run-time choice of the kernel is in cpu_dispatch.cc).
#define TF_LOWPREC_DFP_ISA portable
#define TF_LOWPREC_DFP_ISA_NAME "portable"
#define TF_LOWPREC_DFP_AVX2 0
#define TF_LOWPREC_DFP_VNNI 0
#include "dfp_gemm_impl.h"

#include <cstdlib>
#include <cstring>
#include <mutex>

namespace tf_lowprec {
namespace dfp_gemm {

namespace {

// Released workspace blocks, kept for the next calls (a GEMM takes one for
// the packed operands and one per thread for its FP32 tiles).
struct CachedBlock {
  void* block = nullptr;
  int64_t capacity = 0;
};
constexpr int kCacheSlots = 8;
std::mutex g_cache_mutex;
CachedBlock g_cache[kCacheSlots];
int64_t g_cached_bytes = 0;

}  // namespace

void* AcquireWorkspace(int64_t bytes, int64_t* capacity) {
  bytes = bytes < 64 ? 64 : (bytes + 63) / 64 * 64;
  {
    std::lock_guard<std::mutex> lock(g_cache_mutex);
    int best = -1;  // the smallest cached block that is large enough
    for (int i = 0; i < kCacheSlots; ++i) {
      if (g_cache[i].block != nullptr && g_cache[i].capacity >= bytes &&
          (best < 0 || g_cache[i].capacity < g_cache[best].capacity)) {
        best = i;
      }
    }
    if (best >= 0) {
      void* block = g_cache[best].block;
      *capacity = g_cache[best].capacity;
      g_cached_bytes -= *capacity;
      g_cache[best] = CachedBlock();
      return block;
    }
  }
  void* block = std::aligned_alloc(64, bytes);
  if (block == nullptr) std::abort();  // as operator new would (no exceptions here)
  *capacity = bytes;
  return block;
}

void ReleaseWorkspace(void* block, int64_t capacity) {
  {
    std::lock_guard<std::mutex> lock(g_cache_mutex);
    // Keep it in a free slot, or in place of a smaller block, within the budget.
    int slot = -1;
    for (int i = 0; i < kCacheSlots; ++i) {
      if (g_cache[i].block == nullptr) {
        slot = i;
        break;
      }
      if (g_cache[i].capacity < capacity &&
          (slot < 0 || g_cache[i].capacity < g_cache[slot].capacity)) {
        slot = i;
      }
    }
    if (slot >= 0) {
      const int64_t evicted = g_cache[slot].capacity;
      if (g_cached_bytes - evicted + capacity <= kWorkspaceCacheBytes) {
        void* old = g_cache[slot].block;
        g_cache[slot].block = block;
        g_cache[slot].capacity = capacity;
        g_cached_bytes += capacity - evicted;
        block = old;  // freed below (nullptr for a free slot)
      }
    }
  }
  std::free(block);
}

}  // namespace dfp_gemm
}  // namespace tf_lowprec
