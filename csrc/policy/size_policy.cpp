#include "pypool/size_policy.h"

#include <sstream>
#include <stdexcept>

namespace pypool {
namespace policy {

std::size_t segment_size(const Config& c, std::size_t rounded) {
  if (pool_for(c, rounded) == PoolKind::kSmall) {
    return rounded <= c.small_segment_size ? c.small_segment_size
                                           : round_up(rounded, c.min_block_size);
  }
  if (rounded < c.min_large_alloc && rounded <= c.large_segment_size)
    return c.large_segment_size;
  return round_up(rounded, c.round_large);
}

}  // namespace policy

namespace {
bool is_pow2(std::size_t n) { return n != 0 && (n & (n - 1)) == 0; }
[[noreturn]] void bad(const char* field, const std::string& why) {
  throw std::invalid_argument(std::string("PoolConfig.") + field + ": " + why);
}
}  // namespace

void Config::validate() const {
  if (!is_pow2(min_block_size) || min_block_size < 16)
    bad("min_block_size", "must be a power of two >= 16, got " + std::to_string(min_block_size));
  if (small_size < min_block_size)
    bad("small_size", "must be >= min_block_size");
  if (small_segment_size < small_size || small_segment_size % min_block_size != 0)
    bad("small_segment_size", "must be >= small_size and a multiple of min_block_size");
  if (!is_pow2(round_large) || round_large < min_block_size)
    bad("round_large", "must be a power of two >= min_block_size");
  if (large_segment_size <= small_size || large_segment_size % round_large != 0)
    bad("large_segment_size", "must be > small_size and a multiple of round_large (" +
                                  std::to_string(round_large) + ")");
  if (min_large_alloc < small_size) bad("min_large_alloc", "must be >= small_size");
  if (round_up_divisions > 64 || (round_up_divisions > 1 && !is_pow2(round_up_divisions)))
    bad("round_up_divisions", "must be 0, 1 or a power of two <= 64");
  // A fresh large segment must stay splittable, or a 2 MiB request would take all of a
  // 20 MiB segment (PyTorch requires max_split_size_mb > 20 for the same reason).
  if (max_split_size != kUnlimited && max_split_size <= large_segment_size)
    bad("max_split_size", "must be larger than large_segment_size (" +
                              std::to_string(large_segment_size) + ")");
  if (max_pool_size == 0) bad("max_pool_size", "must be > 0");
  if (!(memory_fraction >= 0.0 && memory_fraction <= 1.0))
    bad("memory_fraction", "must be in (0, 1] (0 = off)");
  if (initial_pool_size > max_pool_size)
    bad("initial_pool_size", "must be <= max_pool_size");
  if (growth == GrowthPolicy::kFixed && growth_step == 0)
    bad("growth_step", "must be > 0 with growth='fixed'");
  if (!(garbage_collection_threshold >= 0.0 && garbage_collection_threshold < 1.0))
    bad("garbage_collection_threshold", "must be in [0, 1)");
  for (auto [name, v] : {std::pair<const char*, std::size_t>{"expandable_reserve", expandable_reserve},
                         {"initial_pool_size", initial_pool_size},
                         {"growth_step", growth_step},
                         {"release_threshold", release_threshold}})
    if (v > policy::kMaxRequest) bad(name, "must be <= 1 PiB, got " + std::to_string(v));
  if (expandable_segments && expandable_reserve < large_segment_size)
    bad("expandable_reserve", "must be >= large_segment_size");
}

std::string Config::to_string() const {
  std::ostringstream o;
  auto sz = [](std::size_t v) { return v == kUnlimited ? std::string("unlimited") : std::to_string(v); };
  o << "max_pool_size:" << sz(max_pool_size) << ",memory_fraction:" << memory_fraction
    << ",min_block_size:" << min_block_size
    << ",small_size:" << small_size << ",small_segment_size:" << small_segment_size
    << ",large_segment_size:" << large_segment_size << ",min_large_alloc:" << min_large_alloc
    << ",round_large:" << round_large << ",round_up_divisions:" << round_up_divisions
    << ",max_split_size:" << sz(max_split_size)
    << ",expandable_segments:" << (expandable_segments ? "true" : "false")
    << ",initial_pool_size:" << initial_pool_size << ",growth:" << static_cast<int>(growth)
    << ",growth_step:" << growth_step << ",release_threshold:" << release_threshold
    << ",garbage_collection_threshold:" << garbage_collection_threshold
    << ",reclaim_before_grow:" << (reclaim_before_grow ? "true" : "false");
  return o.str();
}

}  // namespace pypool
