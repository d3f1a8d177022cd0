// Config's rules and its text form (Note [Config X-macro] in pypool/config.h). Off the
// hot path: run once when a pool or the registry is configured.
#include "pypool/config.h"

#include <sstream>
#include <stdexcept>
#include <utility>

#include "pypool/size_policy.h"

namespace pypool {

namespace {
bool is_pow2(std::size_t n) { return n != 0 && (n & (n - 1)) == 0; }
[[noreturn]] void bad(const char* field, const std::string& why) {
  throw std::invalid_argument(std::string("PoolConfig.") + field + ": " + why);
}

void put(std::ostream& o, std::size_t v, ConfigKind k) {
  if (k == ConfigKind::kOptionalSize && v == Config::kUnlimited)
    o << "unlimited";
  else if (k == ConfigKind::kIntervalDivisions)
    o << policy::interval_divisions_text(v);
  else
    o << v;
}
void put(std::ostream& o, unsigned v, ConfigKind) { o << v; }
void put(std::ostream& o, double v, ConfigKind) { o << v; }
void put(std::ostream& o, bool v, ConfigKind) { o << (v ? "true" : "false"); }
void put(std::ostream& o, GrowthPolicy v, ConfigKind) { o << static_cast<int>(v); }
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
  // Any packed word is valid (4 bits per interval, Note [Interval divisions]); which of
  // the two applies would be ambiguous.
  if (round_up_interval_divisions != 0 && round_up_divisions > 1)
    bad("round_up_interval_divisions",
        "set either it or round_up_divisions (" + std::to_string(round_up_divisions) + "), not both");
  // A fresh large segment must stay splittable, or a 2 MiB request would take all of a
  // 20 MiB segment (PyTorch requires max_split_size_mb > 20 for the same reason).
  if (max_split_size != kUnlimited && max_split_size <= large_segment_size)
    bad("max_split_size", "must be larger than large_segment_size (" +
                              std::to_string(large_segment_size) + ")");
  if (max_pool_size == 0) bad("max_pool_size", "must be > 0");
  if (!(memory_fraction >= 0.0 && memory_fraction <= 1.0))
    bad("memory_fraction", "must be in (0, 1] (0 = off)");
  if (growth == GrowthPolicy::kFixed && growth_step == 0)
    bad("growth_step", "must be > 0 with growth='fixed'");
  if (!(garbage_collection_threshold >= 0.0 && garbage_collection_threshold < 1.0))
    bad("garbage_collection_threshold", "must be in [0, 1)");
  if (!(reclaim_threshold >= 0.0 && reclaim_threshold < 1.0))
    bad("reclaim_threshold", "must be in [0, 1)");
  for (auto [name, v] : {std::pair<const char*, std::size_t>{"expandable_reserve", expandable_reserve},
                         {"initial_pool_size", initial_pool_size},
                         {"growth_step", growth_step},
                         {"release_threshold", release_threshold}})
    if (v > policy::kMaxRequest) bad(name, "must be <= 1 PiB, got " + std::to_string(v));
  if (expandable_segments && expandable_reserve < large_segment_size)
    bad("expandable_reserve", "must be >= large_segment_size");
}

void Config::validate_new() const {
  validate();
  if (initial_pool_size > max_pool_size)
    bad("initial_pool_size", "must be <= max_pool_size");
}

std::string Config::to_string() const {
  std::ostringstream o;
  const char* sep = "";
#define PYPOOL_PUT_FIELD(type, name, def, kind, doc) \
  o << sep << #name ":";                             \
  put(o, name, ConfigKind::kind);                    \
  sep = ",";
  PYPOOL_CONFIG_FIELDS(PYPOOL_PUT_FIELD)
#undef PYPOOL_PUT_FIELD
  return o.str();
}

}  // namespace pypool
