// Pointer -> live Block, an open-addressing hash table.
//
// Note [Pointer map]: linear probing with backward-shift deletion (no tombstones), load
// kept <= 1/2. It allocates only when it grows past its high-water mark, never in a
// steady state of malloc/free pairs, unlike std::unordered_map's node per insert.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "block.h"

namespace pypool::detail {

class PtrMap {
 public:
  PtrMap() { slots_.resize(kInitial); }

  Block* find(std::uintptr_t key) const noexcept {
    std::size_t i = slot(key);
    while (true) {
      const Entry& e = slots_[i];
      if (e.key == key) return e.block;
      if (e.key == 0) return nullptr;
      i = (i + 1) & mask();
    }
  }

  // Pre: key != 0 and not present.
  void insert(std::uintptr_t key, Block* b) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    place(key, b);
    ++size_;
  }

  // Returns the removed block, or nullptr if absent.
  Block* erase(std::uintptr_t key) noexcept {
    std::size_t i = slot(key);
    while (slots_[i].key != key) {
      if (slots_[i].key == 0) return nullptr;
      i = (i + 1) & mask();
    }
    Block* found = slots_[i].block;
    // Backward shift: pull later members of the probe run into the hole.
    std::size_t hole = i;
    std::size_t j = i;
    while (true) {
      j = (j + 1) & mask();
      if (slots_[j].key == 0) break;
      const std::size_t home = slot(slots_[j].key);
      // Move j into the hole unless its home lies cyclically in (hole, j].
      const bool home_after_hole =
          hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
      if (!home_after_hole) {
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    slots_[hole] = Entry{};
    --size_;
    return found;
  }

  std::size_t size() const noexcept { return size_; }

  template <class F>
  void for_each(F f) const {
    for (const Entry& e : slots_)
      if (e.key != 0) f(e.key, e.block);
  }

 private:
  struct Entry {
    std::uintptr_t key = 0;
    Block* block = nullptr;
  };
  static constexpr std::size_t kInitial = 1024;

  std::size_t mask() const noexcept { return slots_.size() - 1; }
  std::size_t slot(std::uintptr_t key) const noexcept {
    // Addresses are multiples of 512: drop the low bits, then a Fibonacci hash.
    return static_cast<std::size_t>(((key >> 9) * 0x9E3779B97F4A7C15ull) >> 20) & mask();
  }
  void place(std::uintptr_t key, Block* b) noexcept {
    std::size_t i = slot(key);
    while (slots_[i].key != 0) i = (i + 1) & mask();
    slots_[i] = Entry{key, b};
  }
  void grow() {
    std::vector<Entry> old;
    old.swap(slots_);
    slots_.assign(old.size() * 2, Entry{});
    for (const Entry& e : old)
      if (e.key != 0) place(e.key, e.block);
  }

  std::vector<Entry> slots_;
  std::size_t size_ = 0;
};

}  // namespace pypool::detail
