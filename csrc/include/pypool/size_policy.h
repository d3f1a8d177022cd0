// Size policy: pure functions of (Config, sizes). No state, no backend.
#pragma once

#include <cstddef>
#include <cstdint>

#include "pypool/config.h"

namespace pypool {

enum class PoolKind : std::uint8_t { kSmall = 0, kLarge = 1 };
constexpr int kNumPoolKinds = 2;

namespace policy {

// Largest request the policy accepts; beyond it rounding could overflow and no device
// has that much memory anyway (1 PiB).
constexpr std::size_t kMaxRequest = std::size_t(1) << 50;

inline std::size_t round_up(std::size_t n, std::size_t m) { return (n + m - 1) / m * m; }

// Rounded block size for a request (size > 0, size <= kMaxRequest).
// With round_up_divisions = d > 1, sizes above small_size round up to the next of d
// equal divisions of their power-of-two interval (as PyTorch's roundup_power2_divisions),
// which makes blocks of nearby sizes interchangeable.
// `divisions` stands for c.round_up_divisions (a pool passes its atomic copy: the field
// may change while malloc rounds, Note [Live settings]).
inline std::size_t round_size(const Config& c, std::size_t size, unsigned divisions) {
  if (size <= c.min_block_size) return c.min_block_size;
  if (divisions > 1 && size > c.small_size) {
    // Split [2^k, 2^(k+1)) into d equal steps and round up to the next step.
    const int k = 63 - __builtin_clzll(size);
    const std::size_t lo = std::size_t(1) << k;
    const std::size_t step = lo / divisions;
    if (size == lo) return lo;
    if (step >= c.min_block_size) return round_up(size, step);
  }
  // min_block_size is a power of two (validated).
  return (size + c.min_block_size - 1) & ~(c.min_block_size - 1);
}
inline std::size_t round_size(const Config& c, std::size_t size) {
  return round_size(c, size, c.round_up_divisions);
}

inline PoolKind pool_for(const Config& c, std::size_t rounded) {
  return rounded <= c.small_size ? PoolKind::kSmall : PoolKind::kLarge;
}

// Preferred segment size for a rounded request under the segment growth policy.
std::size_t segment_size(const Config& c, std::size_t rounded);

// The smallest segment that can hold a rounded request.
inline std::size_t min_segment_size(const Config& c, std::size_t rounded) {
  return pool_for(c, rounded) == PoolKind::kSmall ? round_up(rounded, c.min_block_size)
                                                  : round_up(rounded, c.round_large);
}

// Whether a free block of `block_size` may serve a request of `rounded` bytes.
// Blocks of max_split_size or more are kept for requests that large, and are only given
// to one if the waste stays under large_segment_size (PyTorch's rule).
inline bool can_use(const Config& c, std::size_t block_size, std::size_t rounded) {
  if (block_size < rounded) return false;
  if (block_size < c.max_split_size) return true;
  return rounded >= c.max_split_size && block_size - rounded < c.large_segment_size;
}

// Whether the remainder after serving `rounded` from `block_size` becomes its own block.
inline bool should_split(const Config& c, std::size_t block_size, std::size_t rounded) {
  if (block_size >= c.max_split_size || rounded >= c.max_split_size) return false;
  const std::size_t rest = block_size - rounded;
  return pool_for(c, rounded) == PoolKind::kSmall ? rest >= c.min_block_size
                                                  : rest > c.small_size;
}

}  // namespace policy
}  // namespace pypool
