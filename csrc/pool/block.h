// Blocks and segments: the bookkeeping nodes of a pool. Internal header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "pypool/device_pool.h"

namespace pypool::detail {

struct Segment;

// A block of an expandable segment whose granules are unmapped (Note [VMM holes] in
// vmm.cpp). Internal: never in a free index or the live map, never reported, and not a
// BlockState of the public API. Every `state == kFree` test (coalescing, search) leaves
// it out by construction, so the hot path pays nothing for it.
inline constexpr BlockState kHole = static_cast<BlockState>(3);

struct Block {
  std::uintptr_t addr = 0;
  std::size_t size = 0;
  std::size_t requested = 0;
  Block* prev = nullptr;  // address-order neighbours inside the segment
  Block* next = nullptr;
  Block* free_prev = nullptr;  // links in a free-index bin (valid while kFree)
  Block* free_next = nullptr;
  Segment* seg = nullptr;
  Stream stream = 0;
  std::uint64_t seq = 0;
  std::uint64_t context = 0;
  double time_us = 0;
  std::vector<Stream>* uses = nullptr;  // extra streams from record_stream (rare)
  // One count per record_stream stream: 32 bits, as 16 wrapped to 0 at 65,536 streams and
  // the block was handed out while still in use (free() refuses more than fit).
  std::uint32_t pending_events = 0;     // events still to complete while kPendingFree
  std::uint16_t bin = 0;                // bin index while kFree (< FreeIndex::kBins)
  BlockState state = BlockState::kFree;
  bool oversize = false;  // counted in oversize_allocations (Note [Oversize stats]); set by every allocation

  bool is_split() const noexcept { return prev != nullptr || next != nullptr; }
};

struct FreeIndex;

struct Segment {
  std::uintptr_t addr = 0;
  // Bytes its blocks tile from addr (== allocated bytes for fixed segments). For an
  // expandable segment this includes its holes (kHole blocks): mapped bytes are
  // size - holes (Note [VMM holes] in vmm.cpp).
  std::size_t size = 0;
  std::size_t holes = 0;  // expandable: bytes of its kHole blocks
  Block* first = nullptr;
  Segment* prev = nullptr;  // all segments of a pool, intrusive list
  Segment* next = nullptr;
  FreeIndex* index = nullptr;  // the (stream, kind) free index its free blocks go to
  PoolKind kind = PoolKind::kSmall;
  Stream stream = 0;
  bool expandable = false;
  // expandable: a range after its end could not be unmapped and is quarantined; the
  // segment no longer grows, and its virtual range belongs to the quarantine
  // (Note [Unmap failure] in vmm.cpp).
  bool sealed = false;
  bool oversize = false;  // counted in oversize_segments (Note [Oversize stats])
  std::size_t reserved_va = 0;               // expandable: virtual range size
  // expandable: one handle per granule of [addr, addr + size); 0 for a granule in a hole.
  std::vector<PhysHandle>* chunks = nullptr;
  std::size_t mapped() const noexcept { return size - holes; }
};

// Recycles Block nodes so that splitting on a cache hit allocates nothing.
//
// Note [Exception safety]: every bookkeeping allocation a pool operation needs (arena
// nodes, pointer-map slots, Segments, handle vectors) is made before the operation
// changes any state, so a std::bad_alloc leaves the pool as it was: reserve() here,
// PtrMap::reserve_one(), and the up-front allocations of vmm_grow / vmm_shrink_all.
// csrc/tools/fault_paths.cpp makes every such allocation fail in turn (Note [Fault sweep]).
class BlockArena {
 public:
  BlockArena() = default;
  BlockArena(const BlockArena&) = delete;
  BlockArena& operator=(const BlockArena&) = delete;
  ~BlockArena() {
    for (Block* chunk : chunks_) delete[] chunk;
  }
  // Makes the next n get() calls allocation-free. Throws std::bad_alloc with nothing
  // changed (the nodes of a refill that succeeded stay in the arena).
  void reserve(std::size_t n = 1) {
    while (nfree_ < n) refill();
  }
  Block* get() {
    if (free_ == nullptr) refill();
    Block* b = free_;
    free_ = b->next;
    --nfree_;
    // Reset only what callers do not set; put() already cleared `uses`.
    b->requested = 0;
    b->prev = b->next = b->free_prev = b->free_next = nullptr;
    b->seq = b->context = 0;
    b->time_us = 0;
    b->pending_events = 0;
    b->state = BlockState::kFree;
    return b;
  }
  void put(Block* b) noexcept {
    delete b->uses;
    b->uses = nullptr;
    b->next = free_;
    free_ = b;
    ++nfree_;
  }

 private:
  static constexpr std::size_t kChunk = 256;
  void refill() {
    // Room in chunks_ first, so a failure leaks no chunk.
    chunks_.reserve(chunks_.size() + 1);
    Block* chunk = new Block[kChunk];
    chunks_.push_back(chunk);
    for (std::size_t i = 0; i < kChunk; ++i) {
      chunk[i].next = free_;
      free_ = &chunk[i];
    }
    nfree_ += kChunk;
  }
  Block* free_ = nullptr;
  std::size_t nfree_ = 0;  // nodes on free_
  std::vector<Block*> chunks_;
};

}  // namespace pypool::detail
