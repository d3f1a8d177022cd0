// Pool configuration. Validated once (validate_new()) when a pool is built; the pool never
// re-checks it on the hot path.
//
// Note [Config X-macro]: every field is declared once, in PYPOOL_CONFIG_FIELDS below (the
// way Note [Stats X-macro] in stats.h declares the stats). The struct's members, ==,
// to_string (csrc/config/config.cpp), the pybind11 attributes and the table
// `_core.CONFIG_FIELDS` (csrc/bindings/config.cpp) all expand that list. The Python side
// derives from the table: PoolConfig's conversions to and from the native config, the
// PYPOOL_CONF parser and the snapshot's allocator_settings
// (Note [PoolConfig from the table] in pypool/config.py). A field added here reaches all
// of them, and an import-time check makes PoolConfig fail loudly until its own
// declaration has it too.
//
// Note [Pool sizing]: how much a pool reserves beyond what requests need, set by
// initial_pool_size, growth, growth_step, release_threshold, garbage_collection_threshold,
// reclaim_before_grow and reclaim_threshold.
//   * initial_pool_size: the constructor allocates and frees one block that large on the
//     default stream (DevicePool::DevicePool), so the first steps find it cached. It is an
//     ordinary cached segment afterwards: empty_cache frees it unless release_threshold
//     keeps it.
//   * growth / growth_step: the size of a new large-pool segment (want_segment in
//     csrc/pool/pool_impl.h): `segment` is PyTorch's sizes (policy::segment_size), `exact`
//     only what the request needs, `double` as much as is reserved so far, `fixed` at least
//     growth_step. For a request below max_split_size, a grown segment stays below it too,
//     so it can still be split. growth does not apply to the small pool.
//   * release_threshold: cached bytes empty_cache keeps (release_cached_locked), so a
//     training loop that empties the cache every step does not return and re-reserve its
//     working set. The out-of-memory retry ignores it.
//   * garbage_collection_threshold: a fraction of the cap; a malloc that would grow the
//     pool past it first releases the cached segments (the whole cache, the threshold
//     ignored), like PyTorch's setting of the same name.
//   * reclaim_before_grow, reclaim_threshold: Note [Reclaim before grow] and Note [Reclaim
//     under pressure] in csrc/pool/device_pool.cpp.
// The order in which a malloc that finds no free block tries these is the fallback chain
// in DevicePool::fallback_locked (csrc/pool/device_pool.cpp).
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

// How a field reads and prints outside C++ (its name in `_core.CONFIG_FIELDS`, which
// pypool/config.py converts by): kOptionalSize is kUnlimited <-> None, kOptionalFraction
// is 0.0 <-> None, kGrowth is the GrowthPolicy <-> its name.
enum class ConfigKind : std::uint8_t {
  kSize,              // "size": bytes; Python also takes "512MiB"
  kOptionalSize,      // "optional_size": bytes, or kUnlimited
  kCount,             // "int"
  kFraction,          // "fraction": a float in [0, 1)
  kOptionalFraction,  // "optional_fraction": a float in (0, 1], 0 = off
  kBool,              // "bool"
  kGrowth,            // "growth": a GrowthPolicy
  kIntervalDivisions, // "interval_divisions": packed per-interval divisions (Note [Interval
                      // divisions] in size_policy.h); Python shows torch's "[k:v,...]"
};

inline const char* config_kind_name(ConfigKind k) {
  switch (k) {
    case ConfigKind::kSize: return "size";
    case ConfigKind::kOptionalSize: return "optional_size";
    case ConfigKind::kCount: return "int";
    case ConfigKind::kFraction: return "fraction";
    case ConfigKind::kOptionalFraction: return "optional_fraction";
    case ConfigKind::kBool: return "bool";
    case ConfigKind::kGrowth: return "growth";
    case ConfigKind::kIntervalDivisions: return "interval_divisions";
  }
  return "?";
}

// X(type, name, default, kind, doc), in the order of to_string's output. Defaults may
// name Config::kUnlimited as kUnlimited (the list expands inside the struct).
#define PYPOOL_CONFIG_FIELDS(X)                                                                \
  X(std::size_t, max_pool_size, kUnlimited, kOptionalSize, "cap on reserved bytes")            \
  X(double, memory_fraction, 0.0, kOptionalFraction,                                           \
    "0 = off; else cap = fraction * device total")                                             \
  X(std::size_t, min_block_size, 512, kSize, "every size rounds up to a multiple")             \
  X(std::size_t, small_size, std::size_t(1) << 20, kSize, "requests <= this go to the small pool") \
  X(std::size_t, small_segment_size, std::size_t(2) << 20, kSize, "segment size of the small pool") \
  X(std::size_t, large_segment_size, std::size_t(20) << 20, kSize,                             \
    "default segment size of the large pool")                                                  \
  X(std::size_t, min_large_alloc, std::size_t(10) << 20, kSize,                                \
    "larger requests get their own segment")                                                   \
  X(std::size_t, round_large, std::size_t(2) << 20, kSize, "... rounded up to this")           \
  X(unsigned, round_up_divisions, 0, kCount, "0/1 = off; else power-of-two divisions")         \
  X(std::uint64_t, round_up_interval_divisions, 0, kIntervalDivisions,                         \
    "0 = off; else divisions per power-of-two interval (Note [Interval divisions])")           \
  X(std::size_t, max_split_size, kUnlimited, kOptionalSize, "blocks this large are never split") \
  X(bool, expandable_segments, false, kBool, "VMM segments that grow in place")                \
  X(std::size_t, expandable_reserve, std::size_t(1) << 40, kSize, "VA reserved per VMM segment") \
  X(std::size_t, initial_pool_size, 0, kSize,                                                  \
    "reserved at construction (Note [Pool sizing])")                                           \
  X(GrowthPolicy, growth, GrowthPolicy::kSegment, kGrowth,                                     \
    "size of a new large segment (Note [Pool sizing])")                                        \
  X(std::size_t, growth_step, 0, kSize, "for growth=fixed")                                    \
  X(std::size_t, release_threshold, 0, kSize, "cached bytes empty_cache keeps")                \
  X(double, garbage_collection_threshold, 0.0, kFraction, "0 = off; fraction of the cap")      \
  X(bool, reclaim_before_grow, true, kBool, "Note [Reclaim before grow]")                      \
  X(double, reclaim_threshold, 0.8, kFraction,                                                 \
    "reclaim only past this fraction of the room; 0 = always")

// Note [Live settings]: the fields a pool takes while it is in use
// (DevicePool::update_config, which validates the whole config first and changes nothing
// on a bad value). Each is read only with the pool lock or the growth mutex held (both
// are taken to change them), on the slow path, and applies from the next decision it
// drives: round_up_divisions and round_up_interval_divisions to the next request's
// rounding (malloc rounds before it takes the lock, from an atomic copy: Note [Interval
// divisions] in size_policy.h), max_split_size to the next search, split and
// growth (a cached block keeps its size; Note [Oversize stats] keeps the counters exact),
// the growth knobs, reclaim_before_grow and reclaim_threshold to the next growth, the two
// other thresholds to the next malloc or empty_cache, expandable_reserve to the next virtual range reserved, and
// max_pool_size / memory_fraction to the cap at once (as set_memory_fraction does).
// The other fields are fixed for a pool's life:
//   * min_block_size: every block size and offset is a multiple of it (the free index's
//     bins and check_invariants rely on it), so cached blocks would break it;
//   * small_size, small_segment_size, large_segment_size, min_large_alloc, round_large:
//     the segment geometry cached blocks were cut to; they decide which free index a
//     size belongs to, and max_split_size is validated against large_segment_size;
//   * expandable_segments: whether a stream's large pool grows by mapping into one
//     virtual range; the growth and release paths branch on the setting rather than on
//     each segment, so a pool holding both kinds would strand one of them;
//   * initial_pool_size: applies only when a pool is made (so a pool's live
//     max_pool_size may go below it; the registry's may not, as its config makes the
//     pools of later devices: Config::validate_new).
#define PYPOOL_LIVE_CONFIG_FIELDS(X)                                                   \
  X(max_pool_size) X(memory_fraction) X(round_up_divisions) X(round_up_interval_divisions) \
  X(max_split_size)                                                                    \
  X(expandable_reserve) X(growth) X(growth_step) X(release_threshold)                  \
  X(garbage_collection_threshold) X(reclaim_before_grow) X(reclaim_threshold)

struct Config {
  static constexpr std::size_t kUnlimited = std::numeric_limits<std::size_t>::max();

#define PYPOOL_DECLARE_FIELD(type, name, def, kind, doc) type name = def;
  PYPOOL_CONFIG_FIELDS(PYPOOL_DECLARE_FIELD)
#undef PYPOOL_DECLARE_FIELD

  // Throws std::invalid_argument naming the offending field. The rules every config
  // follows, a live pool's new one included (DevicePool::update_config).
  void validate() const;
  // validate(), and the rules that concern only a pool being made: initial_pool_size <=
  // max_pool_size (initial_pool_size is fixed and used only then, so a live pool's
  // max_pool_size may go below it). Run by DevicePool's constructor and by the registry,
  // whose config makes the pools of later devices.
  void validate_new() const;
  // "name:value,..." over every field ("unlimited" for kUnlimited sizes, growth as its
  // number): the registry's mismatch message.
  std::string to_string() const;

  // Whether `name` is in PYPOOL_LIVE_CONFIG_FIELDS (Note [Live settings]).
  static bool is_live_field(const std::string& name) {
#define PYPOOL_FIELD_IS_LIVE(f) if (name == #f) return true;
    PYPOOL_LIVE_CONFIG_FIELDS(PYPOOL_FIELD_IS_LIVE)
#undef PYPOOL_FIELD_IS_LIVE
    return false;
  }
  // The first field that differs from `o` and cannot change on a live pool ("" if none).
  // Reads no live field (a pool calls it while they may change).
  std::string first_fixed_difference(const Config& o) const {
#define PYPOOL_FIELD_FIXED_DIFF(type, name, def, kind, doc) \
  if (!is_live_field(#name) && !(name == o.name)) return #name;
    PYPOOL_CONFIG_FIELDS(PYPOOL_FIELD_FIXED_DIFF)
#undef PYPOOL_FIELD_FIXED_DIFF
    return "";
  }

  bool operator==(const Config& o) const {
#define PYPOOL_FIELD_EQ(type, name, def, kind, doc) &&name == o.name
    return true PYPOOL_CONFIG_FIELDS(PYPOOL_FIELD_EQ);
#undef PYPOOL_FIELD_EQ
  }
  bool operator!=(const Config& o) const { return !(*this == o); }
};

}  // namespace pypool
