#include "pypool/size_policy.h"

#include <sstream>

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

std::string interval_divisions_text(std::uint64_t word) {
  if (word == 0) return "[]";
  std::size_t d[kRoundIntervals];
  for (int i = 0; i < kRoundIntervals; ++i) d[i] = interval_divisions(word, i);
  // t: where the run of equal values that ends the list starts (written as ">:v").
  int t = kRoundIntervals - 1;
  while (t > 0 && d[t - 1] == d[kRoundIntervals - 1]) --t;
  std::ostringstream o;
  if (t == 0) {
    o << "[1:" << d[0] << ",>:" << d[0] << "]";
    return o.str();
  }
  // c10's first key also fills every interval below it: it stands for the leading run.
  int k = 0;
  while (k + 1 < t && d[k + 1] == d[0]) ++k;
  o << "[" << (std::size_t(1) << k) << ":" << d[0];
  for (int i = k + 1; i < t; ++i) o << "," << (std::size_t(1) << i) << ":" << d[i];
  o << ",>:" << d[t] << "]";
  return o.str();
}

}  // namespace policy
}  // namespace pypool
