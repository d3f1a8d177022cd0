// Pool configuration. Validated once (validate()) when a pool is built; the pool never
// re-checks it on the hot path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

namespace pypool {

enum class GrowthPolicy : std::uint8_t {
  kSegment = 0,  // PyTorch-style segment sizes (2 MiB / 20 MiB / rounded up to 2 MiB)
  kExact = 1,    // exactly what the request needs (rounded to the segment granularity)
  kDouble = 2,   // a new segment as large as everything reserved so far (geometric)
  kFixed = 3,    // at least growth_step bytes
};

struct Config {
  static constexpr std::size_t kUnlimited = std::numeric_limits<std::size_t>::max();

  std::size_t max_pool_size = kUnlimited;      // cap on reserved bytes
  double memory_fraction = 0.0;                // 0 = off; else cap = fraction * device total
  std::size_t min_block_size = 512;            // every size rounds up to a multiple
  std::size_t small_size = 1u << 20;           // requests <= this go to the small pool
  std::size_t small_segment_size = 2u << 20;   // segment size of the small pool
  std::size_t large_segment_size = 20u << 20;  // default segment size of the large pool
  std::size_t min_large_alloc = 10u << 20;     // larger requests get their own segment
  std::size_t round_large = 2u << 20;          // ... rounded up to this
  unsigned round_up_divisions = 0;             // 0/1 = off; else power-of-two divisions
  std::size_t max_split_size = kUnlimited;     // blocks this large are never split
  bool expandable_segments = false;            // VMM segments that grow in place
  std::size_t expandable_reserve = std::size_t(1) << 40;  // VA reserved per VMM segment
  // Sizing (see Note [Pool sizing]).
  std::size_t initial_pool_size = 0;           // reserved at construction
  GrowthPolicy growth = GrowthPolicy::kSegment;
  std::size_t growth_step = 0;                 // for kFixed
  std::size_t release_threshold = 0;           // cached bytes empty_cache keeps
  double garbage_collection_threshold = 0.0;   // 0 = off; fraction of the cap
  bool reclaim_before_grow = true;             // Note [Reclaim before grow]

  // Throws std::invalid_argument naming the offending field.
  void validate() const;
  std::string to_string() const;
};

}  // namespace pypool
