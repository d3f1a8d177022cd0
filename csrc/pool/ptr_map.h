// Pointer -> live Block, an open-addressing hash table.
//
// Note [Pointer map]: linear probing with backward-shift deletion (no tombstones), load
// kept <= 1/2. It allocates only when it grows past its high-water mark, never in a
// steady state of malloc/free pairs, unlike std::unordered_map's node per insert. free()
// probes once: lookup() hands back the entry, which erase(Entry*) removes in place.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "block.h"

namespace pypool::detail {

class PtrMap {
 public:
  struct Entry {
    std::uintptr_t key = 0;
    Block* block = nullptr;
  };

  PtrMap() : slots_(new Entry[kInitial]()), mask_(kInitial - 1), grow_at_(kInitial / 2) {}

  // The entry of `key`, or nullptr. Valid until the next insert or erase.
  Entry* lookup(std::uintptr_t key) const noexcept {
    std::size_t i = slot(key);
    while (true) {
      Entry* e = &slots_[i];
      if (e->key == key) return e;
      if (e->key == 0) return nullptr;
      i = (i + 1) & mask_;
    }
  }

  Block* find(std::uintptr_t key) const noexcept {
    const Entry* e = lookup(key);
    return e != nullptr ? e->block : nullptr;
  }

  // Pre: key != 0 and not present.
  void insert(std::uintptr_t key, Block* b) {
    reserve_one();
    insert_reserved(key, b);
  }
  // Room for one more entry: throws std::bad_alloc with the map unchanged, after which
  // insert_reserved cannot fail (Note [Exception safety] in block.h).
  void reserve_one() {
    if (__builtin_expect(size_ >= grow_at_, 0)) grow();
  }
  // Pre: reserve_one() since the last insert; key != 0 and not present.
  void insert_reserved(std::uintptr_t key, Block* b) noexcept {
    place(key, b);
    ++size_;
  }

  // Pre: e came from lookup() and nothing was inserted or erased since.
  void erase(Entry* e) noexcept {
    // Backward shift: pull later members of the probe run into the hole.
    std::size_t hole = static_cast<std::size_t>(e - slots_.get());
    std::size_t j = hole;
    while (true) {
      j = (j + 1) & mask_;
      const std::uintptr_t k = slots_[j].key;
      if (k == 0) break;
      const std::size_t home = slot(k);
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
  }

  // Returns the removed block, or nullptr if absent.
  Block* erase(std::uintptr_t key) noexcept {
    Entry* e = lookup(key);
    if (e == nullptr) return nullptr;
    Block* found = e->block;
    erase(e);
    return found;
  }

  std::size_t size() const noexcept { return size_; }

  template <class F>
  void for_each(F f) const {
    for (std::size_t i = 0; i <= mask_; ++i)
      if (slots_[i].key != 0) f(slots_[i].key, slots_[i].block);
  }

 private:
  static constexpr std::size_t kInitial = 1024;

  std::size_t slot(std::uintptr_t key) const noexcept {
    // Addresses are multiples of 512: drop the low bits, then a Fibonacci hash.
    return static_cast<std::size_t>(((key >> 9) * 0x9E3779B97F4A7C15ull) >> 20) & mask_;
  }
  void place(std::uintptr_t key, Block* b) noexcept {
    std::size_t i = slot(key);
    while (slots_[i].key != 0) i = (i + 1) & mask_;
    slots_[i] = Entry{key, b};
  }
  // The new table is allocated and filled before it replaces the old one: a throw leaves
  // every entry where it was.
  __attribute__((noinline)) void grow() {
    const std::size_t n = mask_ + 1;
    std::unique_ptr<Entry[]> fresh(new Entry[2 * n]());
    const std::size_t old_mask = mask_;
    fresh.swap(slots_);  // fresh: the old table from here on
    mask_ = 2 * n - 1;
    grow_at_ = n;
    for (std::size_t i = 0; i <= old_mask; ++i)
      if (fresh[i].key != 0) place(fresh[i].key, fresh[i].block);
  }

  std::unique_ptr<Entry[]> slots_;
  std::size_t mask_;     // capacity - 1 (a power of two)
  std::size_t grow_at_;  // capacity / 2: the load limit
  std::size_t size_ = 0;
};

}  // namespace pypool::detail
