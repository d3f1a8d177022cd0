// Size policy: pure functions of (Config, sizes). No state, no backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "pypool/config.h"

namespace pypool {

enum class PoolKind : std::uint8_t { kSmall = 0, kLarge = 1 };
constexpr int kNumPoolKinds = 2;

namespace policy {

// Largest request the policy accepts; beyond it rounding could overflow and no device
// has that much memory anyway (1 PiB).
constexpr std::size_t kMaxRequest = std::size_t(1) << 50;

inline std::size_t round_up(std::size_t n, std::size_t m) { return (n + m - 1) / m * m; }

// Note [Interval divisions]: PyTorch's roundup_power2_divisions is one number of
// divisions per power-of-two interval of sizes (c10's AcceleratorAllocatorConfig): 16
// intervals, the first [1 MiB, 2 MiB), the last [32 GiB, 64 GiB); a size below 1 MiB takes
// the first interval's value and one of 64 GiB or more the last's. With d > 1 divisions a
// size in [2^k, 2^(k+1)) rounds up to a multiple of 2^k / d, when that step is at least
// the minimum block (torch's `size > kMinBlockSize * d`, the same condition for a power of
// two d), else to the minimum block; 0 and 1 are off. Torch's "[k:v,...,>:v]" form is
// read in pypool/config.py (parse_interval_divisions, the same algorithm as c10).
//
// round_up_interval_divisions keeps them packed in one 64-bit word: 4 bits per interval,
// interval i in bits [4i, 4i+4), holding log2(d) (0 = off), so d is at most 2^15 = 32768
// (torch takes any power of two; a step of 2^k / 32768 is already under 512 bytes for
// every interval but the last three). round_up_divisions, pypool's older single number,
// is the same word with every interval equal, applied only above small_size (the
// "gate"); a config sets at most one of the two (Config::validate).
//
// malloc rounds before it takes the pool lock (Note [Live settings]), so a pool keeps
// Rounding {word, gate} in two atomics (DevicePool::Impl): off, the hot path tests one
// word as it tested round_up_divisions before. A malloc racing update_config may pair the
// new word with the old gate; either rule gives a valid size (>= the request, a multiple
// of the minimum block), so the race only picks which of two valid roundings it gets.
constexpr int kRoundIntervals = 16;
constexpr int kRoundFirstLog2 = 20;  // the first interval starts at 1 MiB
constexpr unsigned kMaxIntervalDivisionsLog2 = 15;

// The divisions of interval i in a packed word (0 = off).
inline std::size_t interval_divisions(std::uint64_t word, int i) {
  const unsigned l = unsigned(word >> (4 * i)) & 15u;
  return l == 0 ? 0 : std::size_t(1) << l;
}

struct Rounding {
  std::uint64_t word = 0;  // Note [Interval divisions]
  std::size_t gate = 0;    // sizes at or below it are not divided
};

// The rounding a config asks for.
inline Rounding rounding_of(const Config& c) {
  if (c.round_up_interval_divisions != 0) return {c.round_up_interval_divisions, 0};
  if (c.round_up_divisions <= 1) return {};
  const std::uint64_t l = std::uint64_t(__builtin_ctz(c.round_up_divisions));  // a power of two
  return {l * 0x1111111111111111ull, c.small_size};
}

// Rounded block size for a request (size > 0, size <= kMaxRequest), under `r` (a pool
// passes its atomic copy: the fields may change while malloc rounds, Note [Live settings]).
inline std::size_t round_size(const Config& c, std::size_t size, std::uint64_t word, std::size_t gate) {
  if (size <= c.min_block_size) return c.min_block_size;
  if (word != 0 && size > gate) {
    const int k = 63 - __builtin_clzll(size);
    int i = k - kRoundFirstLog2;
    i = i < 0 ? 0 : (i >= kRoundIntervals ? kRoundIntervals - 1 : i);
    const unsigned l = unsigned(word >> (4 * i)) & 15u;
    const std::size_t lo = std::size_t(1) << k;
    if (l != 0 && size != lo) {
      const std::size_t step = lo >> l;
      if (step >= c.min_block_size) return (size + step - 1) & ~(step - 1);
    }
  }
  // min_block_size is a power of two (validated).
  return (size + c.min_block_size - 1) & ~(c.min_block_size - 1);
}
inline std::size_t round_size(const Config& c, std::size_t size) {
  const Rounding r = rounding_of(c);
  return round_size(c, size, r.word, r.gate);
}

// A packed word in torch's bracket form (Note [Interval divisions]), shortest of the
// forms c10's parser reads back to the same word: "[]" when off.
std::string interval_divisions_text(std::uint64_t word);

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
