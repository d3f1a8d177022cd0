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

// X(name)
#define PYPOOL_ARRAY_STATS(X) \
  X(allocation)               \
  X(segment)                  \
  X(active)                   \
  X(inactive_split)           \
  X(allocated_bytes)          \
  X(reserved_bytes)           \
  X(active_bytes)             \
  X(inactive_split_bytes)     \
  X(requested_bytes)

#define PYPOOL_SCALAR_STATS(X) \
  X(num_alloc_retries)         \
  X(num_ooms)                  \
  X(num_device_alloc)          \
  X(num_device_free)           \
  X(num_sync_all_streams)      \
  X(num_segment_map)           \
  X(num_segment_unmap)

constexpr int kStatsVersion = 1;

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

// Index 0 = all, 1 = small_pool, 2 = large_pool (torch's StatType order).
using StatArray = std::array<Stat, 3>;

struct Stats {
#define PYPOOL_DECLARE_ARRAY(name) StatArray name;
  PYPOOL_ARRAY_STATS(PYPOOL_DECLARE_ARRAY)
#undef PYPOOL_DECLARE_ARRAY
#define PYPOOL_DECLARE_SCALAR(name) std::int64_t name = 0;
  PYPOOL_SCALAR_STATS(PYPOOL_DECLARE_SCALAR)
#undef PYPOOL_DECLARE_SCALAR
  std::int64_t max_pool_size = 0;  // effective cap in bytes (-1 = unlimited)
};

}  // namespace pypool
