// Statistics, with PyTorch's keys (torch.cuda.memory_stats()).
//
// Note [Stats X-macro]: every array stat is declared once below; the struct, the pool's
// own per-kind bookkeeping (Note [Stats by kind] in csrc/pool/pool_impl.h), the dict
// conversion and the invariant checker's recomputation all expand the same list, so a
// new stat cannot be half-added.
#pragma once

#include <array>
#include <cstdint>

namespace pypool {

// X(name): a StatArray each, one Stat per StatType.
#define PYPOOL_ARRAY_STATS(X)                                                            \
  X(allocation)           /* blocks allocated and not yet freed */                       \
  X(segment)              /* segments (expandable: one per virtual range) */             \
  X(active)               /* blocks allocated, or freed with stream events pending */    \
  X(inactive_split)       /* free blocks in a split segment (the fragments) */           \
  X(allocated_bytes)      /* bytes of `allocation` blocks (block sizes, not requests) */ \
  X(reserved_bytes)       /* bytes the device holds for the pool, unmaps in flight too */ \
  X(active_bytes)         /* bytes of `active` blocks */                                 \
  X(inactive_split_bytes) /* bytes of `inactive_split` blocks */                         \
  X(requested_bytes)      /* bytes callers asked for, over `allocation` blocks */

// X(name): one count each, the number of times since the last reset_accumulated.
#define PYPOOL_SCALAR_STATS(X)                                                            \
  X(num_alloc_retries)    /* mallocs that released the cache and retried */               \
  X(num_ooms)             /* mallocs that failed after the whole fallback chain */        \
  X(num_device_alloc)     /* segments the device gave (expandable: new virtual ranges) */ \
  X(num_device_free)      /* segments the device took back */                             \
  X(num_sync_all_streams) /* waits for all pending record_stream events */                \
  X(num_segment_map)      /* growths of an expandable segment (granules mapped) */        \
  X(num_segment_unmap)    /* shrinks of an expandable segment (granules unmapped) */

// X(name): one Stat each, not split by pool kind, as torch keeps them.
// Note [Oversize stats]: torch counts allocations (blocks handed out) and fixed segments
// (device allocations; expandable segments are not counted, as in torch) whose size is
// max_split_size or more. torch compares with the max_split_size in effect at the free
// too, so its counters drift when the setting changes in between; pypool marks the block
// or segment when it counts it (Block::oversize, Segment::oversize) and uncounts what it
// counted, so `current` is always the number of live marked blocks or segments. With
// max_split_size unchanged the two agree exactly.
#define PYPOOL_SINGLE_STATS(X)                                                           \
  X(oversize_allocations) /* allocations of max_split_size bytes or more */              \
  X(oversize_segments)    /* fixed segments of max_split_size bytes or more */

// 2: oversize_allocations, oversize_segments, max_split_size, num_oom_rejections.
constexpr int kStatsVersion = 2;

struct Stat {
  std::int64_t current = 0;
  std::int64_t peak = 0;
  std::int64_t freed = 0;  // sum of decreases since the last reset_accumulated
  std::int64_t base = 0;   // `current` at the last reset_accumulated

  // Note [Derived allocated]: the sum of increases is current - base + freed, so the hot
  // path updates two fields instead of three.
  std::int64_t allocated() const { return current - base + freed; }
  void add(std::int64_t n) {
    current += n;
    if (current > peak) peak = current;
  }
  void sub(std::int64_t n) {
    current -= n;
    freed += n;
  }
  void reset_peak() { peak = current; }
  void reset_accumulated() {
    base = current;
    freed = 0;
  }
};

// The index into a StatArray, in torch's StatType order (AGGREGATE, SMALL_POOL,
// LARGE_POOL); kStatTypeNames gives the key each has in memory_stats().
enum StatType : int { kStatAll = 0, kStatSmallPool = 1, kStatLargePool = 2, kNumStatTypes = 3 };
inline constexpr const char* kStatTypeNames[kNumStatTypes] = {"all", "small_pool", "large_pool"};
using StatArray = std::array<Stat, kNumStatTypes>;

struct Stats {
#define PYPOOL_DECLARE_ARRAY(name) StatArray name;
  PYPOOL_ARRAY_STATS(PYPOOL_DECLARE_ARRAY)
#undef PYPOOL_DECLARE_ARRAY
#define PYPOOL_DECLARE_SINGLE(name) Stat name;
  PYPOOL_SINGLE_STATS(PYPOOL_DECLARE_SINGLE)
#undef PYPOOL_DECLARE_SINGLE
#define PYPOOL_DECLARE_SCALAR(name) std::int64_t name = 0;
  PYPOOL_SCALAR_STATS(PYPOOL_DECLARE_SCALAR)
#undef PYPOOL_DECLARE_SCALAR
  std::int64_t max_pool_size = 0;   // effective cap in bytes (-1 = unlimited)
  std::int64_t max_split_size = 0;  // in effect, in bytes (-1 = unlimited, as torch reports it)
};

}  // namespace pypool
