#include "pypool/size_policy.h"

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
}  // namespace pypool
