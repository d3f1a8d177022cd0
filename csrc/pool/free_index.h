// Free blocks of one (stream, pool kind), in TLSF-style segregated bins.
//
// Note [Free index]: two-level bins (a power-of-two class, split into 16 linear
// sub-classes) with a bitmap per level give O(1) insert, remove and search, with
// intrusive lists so that nothing is allocated. Search first looks at a few blocks of
// the request's own bin for the best fit there, then takes the head of the first
// non-empty bin whose every block is large enough ("good fit": at most 1/16 larger than
// the request before the split). RMM's address-ordered list is O(n); PyTorch's std::set
// is O(log n) and allocates a node per insert.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include "block.h"

namespace pypool::detail {

class FreeIndex {
 public:
  static constexpr int kSlBits = 4;
  static constexpr int kSlCount = 1 << kSlBits;
  static constexpr int kFlCount = 64;
  static constexpr int kBins = kFlCount * kSlCount;
  static constexpr int kBestFitScan = 8;

  FreeIndex(Stream s, PoolKind k) : stream(s), kind(k) {}
  FreeIndex(const FreeIndex&) = delete;
  FreeIndex& operator=(const FreeIndex&) = delete;

  // Bin of a block of `size`: (fl - kSlBits + 1) * kSlCount + sl for fl = floor(log2 size)
  // and sl the next kSlBits bits. size >> (fl - kSlBits) is those bits with the leading
  // one on top, i.e. kSlCount + sl, which saves a mask and a multiply on the hot path.
  // Pre: size >= kSlCount, which every block and request is (min_block_size >= 16,
  // Config::validate); bins below kSlCount stay empty.
  static std::uint32_t bin_of(std::size_t size) noexcept {
    const int shift = 63 - __builtin_clzll(size) - kSlBits;
    return static_cast<std::uint32_t>((shift << kSlBits) + static_cast<int>(size >> shift));
  }
  static_assert(kSlCount <= 16, "bin_of's precondition relies on min_block_size >= 16");

  void insert(Block* b) noexcept {
    const std::uint32_t i = bin_of(b->size);
    b->bin = i;
    b->free_prev = nullptr;
    b->free_next = heads_[i];
    if (heads_[i] != nullptr) heads_[i]->free_prev = b;
    heads_[i] = b;
    sl_map_[i / kSlCount] |= 1u << (i % kSlCount);
    fl_map_ |= std::uint64_t(1) << (i / kSlCount);
    bytes += b->size;
  }

  void remove(Block* b) noexcept {
    const std::uint32_t i = b->bin;
    if (b->free_prev != nullptr) {
      b->free_prev->free_next = b->free_next;
    } else {
      heads_[i] = b->free_next;
    }
    if (b->free_next != nullptr) b->free_next->free_prev = b->free_prev;
    b->free_prev = b->free_next = nullptr;
    if (heads_[i] == nullptr) {
      sl_map_[i / kSlCount] &= ~(1u << (i % kSlCount));
      if (sl_map_[i / kSlCount] == 0) fl_map_ &= ~(std::uint64_t(1) << (i / kSlCount));
    }
    bytes -= b->size;
  }

  // A free block that can serve `rounded` bytes, or nullptr. `ok(size)` is the policy
  // filter (policy::can_use); blocks it rejects are skipped.
  // The hot path scans a bounded number of blocks per bin; `exhaustive` (the slow path,
  // before the pool grows or fails) scans every block, so a fitting block deep in a bin
  // is never missed.
  template <class Ok>
  Block* find(std::size_t rounded, Ok ok, bool exhaustive = false) const noexcept {
    const int limit = exhaustive ? std::numeric_limits<int>::max() : kBestFitScan;
    // 1. Best fit among the first blocks of the request's own bin.
    const std::uint32_t own = bin_of(rounded);
    Block* best = nullptr;
    int scanned = 0;
    for (Block* b = heads_[own]; b != nullptr && scanned < limit;
         b = b->free_next, ++scanned) {
      if (b->size >= rounded && ok(b->size) && (best == nullptr || b->size < best->size)) {
        best = b;
        if (b->size == rounded) break;
      }
    }
    if (best != nullptr) return best;
    // 2. Every block of a higher bin fits; take the first acceptable one.
    for (std::int64_t i = next_nonempty(own + 1); i >= 0; i = next_nonempty(i + 1)) {
      scanned = 0;
      for (Block* b = heads_[i]; b != nullptr && scanned < limit;
           b = b->free_next, ++scanned) {
        if (ok(b->size)) return b;
      }
    }
    return nullptr;
  }

  // Largest free block (for reports and OOM messages; not the hot path).
  std::size_t largest() const noexcept {
    if (fl_map_ == 0) return 0;
    const int fl = 63 - __builtin_clzll(fl_map_);
    const int sl = 31 - __builtin_clz(sl_map_[fl]);
    std::size_t m = 0;
    for (Block* b = heads_[fl * kSlCount + sl]; b != nullptr; b = b->free_next)
      if (b->size > m) m = b->size;
    return m;
  }

  template <class F>
  void for_each(F f) const {
    for (int i = 0; i < kBins; ++i)
      for (Block* b = heads_[i]; b != nullptr; b = b->free_next) f(b);
  }

  bool contains(const Block* target) const noexcept {
    for (Block* b = heads_[target->bin]; b != nullptr; b = b->free_next)
      if (b == target) return true;
    return false;
  }

  bool bitmaps_consistent() const noexcept {
    std::uint64_t fl = 0;
    for (int f = 0; f < kFlCount; ++f) {
      std::uint32_t sl = 0;
      for (int s = 0; s < kSlCount; ++s)
        if (heads_[f * kSlCount + s] != nullptr) sl |= 1u << s;
      if (sl != sl_map_[f]) return false;
      if (sl != 0) fl |= std::uint64_t(1) << f;
    }
    return fl == fl_map_;
  }

  const Stream stream;
  const PoolKind kind;
  Segment* vmm_seg = nullptr;  // this index's expandable segment, if any
  bool vmm_busy = false;       // a grow or shrink of vmm_seg is in flight (Note [VMM segments])
  std::size_t bytes = 0;  // total size of the free blocks in the index

 private:
  // First non-empty bin with index >= from, or -1.
  std::int64_t next_nonempty(std::uint32_t from) const noexcept {
    if (from >= static_cast<std::uint32_t>(kBins)) return -1;
    std::uint32_t fl = from / kSlCount;
    std::uint32_t slm = sl_map_[fl] & (~0u << (from % kSlCount));
    if (slm == 0) {
      const std::uint64_t flm =
          fl + 1 >= kFlCount ? 0 : fl_map_ & (~std::uint64_t(0) << (fl + 1));
      if (flm == 0) return -1;
      fl = static_cast<std::uint32_t>(__builtin_ctzll(flm));
      slm = sl_map_[fl];
    }
    return static_cast<std::int64_t>(fl * kSlCount + __builtin_ctz(slm));
  }

  Block* heads_[kBins] = {};
  std::uint32_t sl_map_[kFlCount] = {};
  std::uint64_t fl_map_ = 0;
};

}  // namespace pypool::detail
