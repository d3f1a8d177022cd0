// DevicePool's private state, shared by device_pool.cpp and vmm.cpp. Internal header.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "block.h"
#include "free_index.h"
#include "ptr_map.h"
#include "pypool/device_pool.h"
#include "pypool/size_policy.h"

namespace pypool {

namespace detail {

inline double now_us() {
  using namespace std::chrono;
  return duration<double, std::micro>(steady_clock::now().time_since_epoch()).count();
}

inline std::string human(std::size_t n) {
  if (n == Config::kUnlimited) return "unlimited";
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    ++u;
  }
  char buf[64];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%zu B", n);
  else
    std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

inline std::string hex(std::uintptr_t p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%" PRIxPTR, p);
  return buf;
}

inline StatType kind_index(PoolKind k) {
  return k == PoolKind::kSmall ? kStatSmallPool : kStatLargePool;
}

// Note [Stats by kind]: every array stat changes for one pool kind at a time, and "all"
// is the sum of the two kinds, so the pool keeps each stat per kind only, plus the peak
// of their sum (a peak of a sum is not a sum of peaks). An increase updates one Stat and
// compares the sum with that peak; a decrease updates one Stat instead of two. "all"'s
// current, freed and base are sums, so its allocated() is too. Snapshots (Stats, with
// torch's [all, small, large] arrays) are made when the stats are read.
struct KindStat {
  Stat kind[kNumPoolKinds];
  std::int64_t all_peak = 0;

  void add(PoolKind k, std::int64_t n) noexcept {
    Stat& s = kind[static_cast<int>(k)];
    s.add(n);
    const std::int64_t all = kind[0].current + kind[1].current;
    if (all > all_peak) all_peak = all;
  }
  void sub(PoolKind k, std::int64_t n) noexcept { kind[static_cast<int>(k)].sub(n); }
  std::int64_t current() const noexcept { return kind[0].current + kind[1].current; }
  void reset_peak() noexcept {
    for (Stat& s : kind) s.reset_peak();
    all_peak = current();
  }
  void reset_accumulated() noexcept {
    for (Stat& s : kind) s.reset_accumulated();
  }
  StatArray snapshot() const noexcept {
    StatArray a;
    for (int i = 0; i < kNumPoolKinds; ++i) {
      a[kind_index(static_cast<PoolKind>(i))] = kind[i];
      a[kStatAll].current += kind[i].current;
      a[kStatAll].freed += kind[i].freed;
      a[kStatAll].base += kind[i].base;
    }
    a[kStatAll].peak = all_peak;
    return a;
  }
};

struct PoolStats {
#define PYPOOL_DECLARE_KIND_STAT(name) KindStat name;
  PYPOOL_ARRAY_STATS(PYPOOL_DECLARE_KIND_STAT)
#undef PYPOOL_DECLARE_KIND_STAT
#define PYPOOL_DECLARE_SINGLE(name) Stat name;
  PYPOOL_SINGLE_STATS(PYPOOL_DECLARE_SINGLE)
#undef PYPOOL_DECLARE_SINGLE
#define PYPOOL_DECLARE_SCALAR(name) std::int64_t name = 0;
  PYPOOL_SCALAR_STATS(PYPOOL_DECLARE_SCALAR)
#undef PYPOOL_DECLARE_SCALAR

  Stats snapshot() const noexcept {
    Stats s;
#define PYPOOL_SNAPSHOT_ARRAY(name) s.name = name.snapshot();
    PYPOOL_ARRAY_STATS(PYPOOL_SNAPSHOT_ARRAY)
#undef PYPOOL_SNAPSHOT_ARRAY
#define PYPOOL_SNAPSHOT_SINGLE(name) s.name = name;
    PYPOOL_SINGLE_STATS(PYPOOL_SNAPSHOT_SINGLE)
#undef PYPOOL_SNAPSHOT_SINGLE
#define PYPOOL_SNAPSHOT_SCALAR(name) s.name = name;
    PYPOOL_SCALAR_STATS(PYPOOL_SNAPSHOT_SCALAR)
#undef PYPOOL_SNAPSHOT_SCALAR
    return s;
  }
};

// Note [Device pre-check]: before the pool grows it asks the backend how much memory the
// device has (mem_info: cuMemGetInfo on CUDA, the capacity on the host backend) and skips
// a backend allocation that cannot succeed. Without it a request larger than the device
// cost one failing cuMemAlloc per try in default mode, and with expandable segments a
// cuMemCreate + cuMemMap per 2 MiB granule until the device ran dry, then as many
// unmaps, twice over the fallback chain (82k calls for 200 GiB on an 80 GiB device).
// mem_info is a snapshot of a device other processes share, so it only ever skips work:
//   * growth > total: no release can help; malloc reports out of memory at once, without
//     emptying the cache (`never`);
//   * growth > free: this attempt is skipped, which leads malloc to its release-and-retry
//     step; the retry asks again after the cache is released, so memory the pool gave
//     back (or another process freed meanwhile) is seen, and only a growth that still
//     exceeds what the device has free is refused there.
// A snapshot that is stale the other way (memory appears just after it) is the same
// race as an allocation failing just before the memory appears. mem_info is called with
// the pool lock released (Note [Locking rule]); a backend that cannot tell (throws, or
// reports a total of 0) is not pre-checked, and the backend call decides as before.
// The OOM message reports the snapshot of the last attempt instead of asking again.
struct DeviceRoom {
  MemInfo mem;         // {0, 0}: unknown
  bool never = false;  // set by a growth that needs more than the whole device
  // Asked by the reclaim check just before this growth (Note [Reclaim under pressure]):
  // grow_locked takes it instead of asking again, once.
  bool fresh = false;
  // Set by an expandable segment that cannot grow because its reserved address space
  // (expandable_reserve) is used up, with what it has mapped, reserved and needed, for
  // the OOM message (Note [OOM message]).
  bool reserve_full = false;
  std::size_t reserve_mapped = 0, reserve_total = 0, reserve_need = 0;

  static DeviceRoom ask(Backend& be) noexcept {
    DeviceRoom r;
    try {
      r.mem = be.mem_info();
    } catch (...) {
      r.mem = MemInfo{};
    }
    return r;
  }
  bool known() const noexcept { return mem.total > 0; }
  bool beyond_total(std::size_t n) const noexcept { return known() && n > mem.total; }
  bool fits_free(std::size_t n) const noexcept { return !known() || n <= mem.free; }
};

// A range of granules that could not be unmapped (Note [Unmap failure] in vmm.cpp): the
// device still holds it, so it stays in reserved_bytes, and it is never mapped again.
// va_size > 0: this entry also owns the virtual range [va, va + va_size) it lies in.
struct Quarantined {
  std::uintptr_t addr = 0;
  std::vector<PhysHandle> handles;  // granules from addr on, still mapped
  std::uintptr_t va = 0;
  std::size_t va_size = 0;
};

}  // namespace detail

using detail::Block;
using detail::DeviceRoom;
using detail::FreeIndex;
using detail::PoolStats;
using detail::Segment;
using detail::hex;
using detail::human;
using detail::kind_index;
using detail::now_us;

struct DevicePool::Impl {
  explicit Impl(const Config& c, Backend& b, int dev)
      : cfg(c), be(b), device(dev) {
    set_rounding(c);
  }

  // Its live fields change under grow_mu and mu together (Note [Live settings]).
  const Config& cfg;
  Backend& be;
  const int device;
  mutable SpinMutex mu;
  // cfg's rounding (policy::rounding_of) for malloc, which rounds before mu is taken
  // (Note [Interval divisions] in size_policy.h).
  std::atomic<std::uint64_t> round_word{0};
  std::atomic<std::size_t> round_gate{0};
  void set_rounding(const Config& c) {
    const policy::Rounding r = policy::rounding_of(c);
    round_gate.store(r.gate, std::memory_order_relaxed);
    round_word.store(r.word, std::memory_order_relaxed);
  }

  detail::BlockArena arena;
  detail::PtrMap live;  // allocated and pending-free blocks by address
  std::vector<std::unique_ptr<FreeIndex>> indexes;
  FreeIndex* last_index[kNumPoolKinds] = {nullptr, nullptr};
  Segment* segs = nullptr;  // intrusive list of all segments
  PoolStats st;  // Note [Stats by kind]
  double fraction = 0.0;
  std::size_t cap = Config::kUnlimited;
  std::uint64_t seq = 0;
  // Note [Event FIFOs]: record_stream events, one FIFO per stream they were recorded
  // on. Events of one stream complete in the order they were recorded, so
  // process_events queries the head of each FIFO and stops at the first incomplete one,
  // as PyTorch does: O(streams) per malloc while anything is pending, not O(events).
  // Entries are popped by advancing `head` (no allocation); the storage is reused.
  struct EventFifo {
    Stream stream;
    std::vector<std::pair<Event, Block*>> q;
    std::size_t head = 0;
  };
  std::vector<EventFifo> fifos;
  std::size_t npending = 0;  // entries over all FIFOs: the hot path's one test
  // Held across every backend call that changes the pool's device footprint, but for
  // the two releases of Note [Shrink outside grow_mu]
  // (Note [Growth and release protocol] in device_pool.cpp). Taken before mu, never
  // while holding mu (try_lock aside).
  mutable std::mutex grow_mu;
  // Wakes threads waiting for another thread's grow or shrink of the same expandable
  // segment to finish (FreeIndex::vmm_busy, Note [VMM segments]); waits with mu.
  std::condition_variable_any vmm_cv;
  std::size_t shrinking = 0;  // shrinks of expandable segments in flight (Note [Shrink outside grow_mu])
  // Quarantine entries that grows and shrinks in flight may still add (Note [Quarantine
  // room] in vmm.cpp); m.quarantine's capacity is at least its size plus this.
  std::size_t quarantine_owed = 0;
  // Threads synchronizing record_stream events they took out of the FIFOs
  // (sync_pending_locked), with mu dropped: their blocks come back free when they finish.
  std::size_t syncing = 0;
  // Bumped (under mu, then vmm_cv notified) whenever a shrink or such a synchronize
  // finishes: a grower that failed compares it to see whether memory may have come back
  // since it looked (Note [Shrink outside grow_mu]).
  std::uint64_t release_epoch = 0;
  // Bumps this thread made itself (the OOM retry's own sync and shrink): they need no
  // round more, and counting them would keep a retry going round while other streams
  // keep recording events.
  static inline thread_local std::uint64_t own_releases = 0;
  void released() noexcept {
    ++release_epoch;
    ++own_releases;
    vmm_cv.notify_all();
  }
  // Bytes counted in reserved_bytes that belong to no segment: tails being unmapped
  // (still counted against the cap until the device has them back) and quarantined
  // ranges (Note [Unmap failure]). reserved == sum of segments' mapped bytes + detached.
  std::size_t detached[kNumPoolKinds] = {0, 0};
  std::vector<detail::Quarantined> quarantine;

  // Note [Trace ring]: a fixed-size ring allocated when history is enabled, so
  // recording allocates nothing; the oldest entries are overwritten.
  bool history_on = false;
  std::vector<TraceEntry> ring;
  std::size_t ring_next = 0;
  std::size_t ring_count = 0;

  // Read without the lock on the hot path (relaxed): the context hook runs before the
  // lock is taken, because a Python hook takes the GIL and a thread holding the GIL
  // may be waiting for our lock.
  std::atomic<bool> annotate{false};
  ContextHook hook = nullptr;
  void* hook_user = nullptr;
  bool capture_context = false;
  // Note [Free stacks]: with free-context capture on (torch's context="all"), a free and
  // an empty_cache also call the hook, before the lock as malloc does; the free's id goes
  // on its free_requested / free_completed entries (instead of the allocation's), the
  // release's on the segment_free / segment_unmap entries it makes, through
  // release_context: set by the releasing thread for the duration of its release, so
  // a release that another thread's malloc makes meanwhile (OOM path) is not given it.
  std::atomic<bool> annotate_free{false};
  bool capture_free_context = false;
  static inline thread_local std::uint64_t release_context = 0;

  // ---------------------------------------------------------------- helpers (lock held)
  static void add(detail::KindStat& a, PoolKind k, std::int64_t n) { a.add(k, n); }
  static void sub(detail::KindStat& a, PoolKind k, std::int64_t n) { a.sub(k, n); }

  void trace(TraceAction a, std::uintptr_t addr, std::size_t size, Stream s,
             std::uint64_t context = 0, std::uint64_t sq = 0) {
    if (__builtin_expect(history_on, 0)) {
      if (context == 0 && (a == TraceAction::kSegmentFree || a == TraceAction::kSegmentUnmap))
        context = release_context;  // Note [Free stacks]
      record(a, addr, size, s, context, sq);
    }
  }
  __attribute__((noinline)) void record(TraceAction a, std::uintptr_t addr, std::size_t size,
                                        Stream s, std::uint64_t context, std::uint64_t sq) {
    ring[ring_next] = TraceEntry{a, t_trace_metadata, addr, size, s, now_us(), context, sq};
    ring_next = (ring_next + 1) % ring.size();
    if (ring_count < ring.size()) ++ring_count;
  }

  FreeIndex* index_for(Stream s, PoolKind k) {
    FreeIndex* hit = last_index[static_cast<int>(k)];
    if (__builtin_expect(hit != nullptr && hit->stream == s, 1)) return hit;
    return find_index(s, k);
  }
  __attribute__((noinline)) FreeIndex* find_index(Stream s, PoolKind k) {
    for (auto& idx : indexes) {
      if (idx->stream == s && idx->kind == k) {
        last_index[static_cast<int>(k)] = idx.get();
        return idx.get();
      }
    }
    indexes.push_back(std::make_unique<FreeIndex>(s, k));
    last_index[static_cast<int>(k)] = indexes.back().get();
    return indexes.back().get();
  }

  // `split`: whether b is part of a split segment (b->is_split()), when the caller knows.
  void put_free(FreeIndex* idx, Block* b) { put_free(idx, b, b->is_split()); }
  void put_free(FreeIndex* idx, Block* b, bool split) {
    b->state = BlockState::kFree;
    idx->insert(b);
    if (split) {
      add(st.inactive_split, idx->kind, 1);
      add(st.inactive_split_bytes, idx->kind, static_cast<std::int64_t>(b->size));
    }
  }
  void take_free(FreeIndex* idx, Block* b) { take_free(idx, b, b->is_split()); }
  void take_free(FreeIndex* idx, Block* b, bool split) {
    idx->remove(b);
    if (split) {
      sub(st.inactive_split, idx->kind, 1);
      sub(st.inactive_split_bytes, idx->kind, static_cast<std::int64_t>(b->size));
    }
  }

  std::size_t reserved() const { return static_cast<std::size_t>(st.reserved_bytes.current()); }

  // Serves `size` (rounded) from free block b (already taken out of its index). On
  // std::bad_alloc b goes back to its index and nothing else has changed
  // (Note [Exception safety] in block.h).
  void* finish_alloc(Block* b, std::size_t rounded, std::size_t size, Stream stream,
                     std::uint64_t context, double t) {
    FreeIndex* idx = b->seg->index;
    const bool split = !b->seg->expandable ? policy::should_split(cfg, b->size, rounded)
                                           : b->size - rounded >= cfg.min_block_size;
    Block* r = nullptr;
    try {
      live.reserve_one();
      if (split) r = arena.get();
    } catch (...) {
      put_free(idx, b);
      throw;
    }
    if (split) {
      r->addr = b->addr + rounded;
      r->size = b->size - rounded;
      r->seg = b->seg;
      r->stream = b->stream;
      r->requested = b->requested;  // the rest keeps the last request (Note [Last requested size])
      r->prev = b;
      r->next = b->next;
      if (b->next != nullptr) b->next->prev = r;
      b->next = r;
      b->size = rounded;
      put_free(idx, r, /*split=*/true);
    }
    b->state = BlockState::kAllocated;
    b->requested = size;
    b->seq = ++seq;
    b->context = context;
    b->time_us = t;
    live.insert_reserved(b->addr, b);
    const PoolKind k = idx->kind;
    const auto bs = static_cast<std::int64_t>(b->size);
    add(st.allocation, k, 1);
    add(st.allocated_bytes, k, bs);
    add(st.active, k, 1);
    add(st.active_bytes, k, bs);
    add(st.requested_bytes, k, static_cast<std::int64_t>(size));
    b->oversize = b->size >= cfg.max_split_size;  // Note [Oversize stats]
    if (b->oversize) st.oversize_allocations.add(1);
    // Trace sizes are requested bytes, as in torch's snapshots.
    trace(TraceAction::kAlloc, b->addr, size, stream, context, b->seq);
    return reinterpret_cast<void*>(b->addr);
  }

  // Returns an allocated or pending-free block to its free index, coalescing.
  void free_block(Block* b) {
    live.erase(b->addr);
    return_block(b);
  }
  // free_block for a block already out of the live map.
  __attribute__((always_inline)) void return_block(Block* b) {
    FreeIndex* idx = b->seg->index;
    const PoolKind k = idx->kind;
    sub(st.active, k, 1);
    sub(st.active_bytes, k, static_cast<std::int64_t>(b->size));
    trace(TraceAction::kFreeCompleted, b->addr, b->requested, b->stream, b->context, b->seq);
    // Note [Last requested size]: torch's snapshots show a free block's requested_size
    // as the last request it served (the freed block survives its merges there), and
    // tools read it (torch's test_memory_plots finds a freed tensor's size so), and the
    // rest of a split free block keeps it too, as torch's does. A free block keeps
    // `requested` for that: nothing else reads it on a free block, a block
    // taken from the arena starts at 0, and reports clamp it to the block's size
    // (a VMM hole can shrink a free block below it).
    b->seq = 0;
    b->context = 0;
    delete b->uses;
    b->uses = nullptr;
    if (b->prev != nullptr && b->prev->state == BlockState::kFree) {
      Block* p = b->prev;
      take_free(idx, p, /*split=*/true);  // it has a neighbour: b
      p->size += b->size;
      p->requested = b->requested;
      p->next = b->next;
      if (b->next != nullptr) b->next->prev = p;
      arena.put(b);
      b = p;
    }
    if (b->next != nullptr && b->next->state == BlockState::kFree) {
      Block* n = b->next;
      take_free(idx, n, /*split=*/true);  // it has a neighbour: b
      b->size += n->size;
      b->next = n->next;
      if (n->next != nullptr) n->next->prev = b;
      arena.put(n);
    }
    put_free(idx, b);
  }

  // The FIFO of events recorded on `s`, made on first use (may throw bad_alloc; then
  // nothing else has changed).
  EventFifo& fifo_for(Stream s) {
    for (EventFifo& f : fifos)
      if (f.stream == s) return f;
    fifos.push_back(EventFifo{s, {}, 0});
    return fifos.back();
  }

  // Frees the blocks whose last event completed (Note [Event FIFOs]). An entry leaves
  // its FIFO before anything that can throw, so a throwing backend never leaves an
  // entry to be counted twice; at worst an event is not returned to the backend.
  __attribute__((noinline)) void process_events() {  // off the hot path: inlined into malloc it cost the cache-hit pair ~10 ns
    for (EventFifo& f : fifos) {
      while (f.head < f.q.size()) {
        auto [ev, b] = f.q[f.head];
        if (!event_done(ev)) break;
        ++f.head;
        --npending;
        if (--b->pending_events == 0) free_block(b);
        be.release_event(ev);
      }
      if (f.head == f.q.size()) {
        f.q.clear();
        f.head = 0;
      } else if (f.head >= 64 && 2 * f.head >= f.q.size()) {
        // A stream that always has work pending: drop the popped prefix (no allocation).
        f.q.erase(f.q.begin(), f.q.begin() + static_cast<std::ptrdiff_t>(f.head));
        f.head = 0;
      }
    }
  }

  bool event_done(Event ev) {
#ifdef PYPOOL_BREAK_EARLY_EVENTS
    // Test-only, compiled into the "broken" stress driver: 1 in N events is taken as
    // complete while its stream may still run, to prove the stress catches early reuse.
    static std::atomic<unsigned> n{0};
    if (n.fetch_add(1, std::memory_order_relaxed) % PYPOOL_BREAK_EARLY_EVENTS == 0) return true;
#endif
    return be.query_event(ev);
  }

  // Takes ownership of backend memory p. On std::bad_alloc the memory goes straight back
  // to the backend (with the lock held: a rare failure path) and the pool is unchanged.
  Segment* add_segment(void* p, std::size_t size, FreeIndex* idx) {
    Segment* seg = nullptr;
    Block* b = nullptr;
    try {
      seg = new Segment();
      b = arena.get();
    } catch (...) {
      delete seg;
      try {
        be.deallocate(p, size);
      } catch (...) {
        // The device refused its own memory back: nothing more to do here.
      }
      throw;
    }
    seg->addr = reinterpret_cast<std::uintptr_t>(p);
    seg->size = size;
    seg->index = idx;
    seg->kind = idx->kind;
    seg->stream = idx->stream;
    seg->reserved_va = size;
    seg->next = segs;
    if (segs != nullptr) segs->prev = seg;
    segs = seg;
    b->addr = seg->addr;
    b->size = size;
    b->seg = seg;
    b->stream = idx->stream;
    seg->first = b;
    add(st.segment, idx->kind, 1);
    add(st.reserved_bytes, idx->kind, static_cast<std::int64_t>(size));
    seg->oversize = size >= cfg.max_split_size;  // Note [Oversize stats]
    if (seg->oversize) st.oversize_segments.add(1);
    ++st.num_device_alloc;
    trace(TraceAction::kSegmentAlloc, seg->addr, size, idx->stream);
    return seg;
  }

  void unlink_segment(Segment* seg) {
    if (seg->prev != nullptr) seg->prev->next = seg->next;
    else segs = seg->next;
    if (seg->next != nullptr) seg->next->prev = seg->prev;
    seg->prev = seg->next = nullptr;
  }

  // The growth policies of Note [Pool sizing] (pypool/config.h). When the cap or the
  // device refuses the preferred size, grow_locked tries the smallest segment that holds
  // the request.
  // Preferred segment size for a rounded request, by growth policy.
  std::size_t want_segment(std::size_t rounded, PoolKind k) const {
    const std::size_t base = policy::segment_size(cfg, rounded);
    std::size_t want = base;
    if (k == PoolKind::kSmall) return want;
    switch (cfg.growth) {
      case GrowthPolicy::kSegment: break;
      case GrowthPolicy::kExact: want = policy::min_segment_size(cfg, rounded); break;
      case GrowthPolicy::kDouble:
        want = std::max(want, policy::round_up(reserved(), cfg.round_large));
        break;
      case GrowthPolicy::kFixed:
        want = std::max(want, policy::round_up(cfg.growth_step, cfg.round_large));
        break;
    }
    // A segment of max_split_size or more is never split (policy::should_split), so a
    // grown segment that large would be handed whole to a request below the limit, and
    // with `double` every such request would double the pool. Below the limit, grow by
    // at most the largest splittable size.
    if (want > base && cfg.max_split_size != Config::kUnlimited && rounded < cfg.max_split_size) {
      const std::size_t limit = (cfg.max_split_size - 1) / cfg.round_large * cfg.round_large;
      want = std::max(base, std::min(want, limit));
    }
    return want;
  }

  // Called with grow_mu held: no other growth is in flight, and bytes being released
  // still count in reserved() until the device has them back, so the cap is never passed
  // (Note [Growth and release protocol]).
  bool fits_cap(std::size_t n) const {
    const std::size_t used = reserved();
    return cap == Config::kUnlimited || (used <= cap && n <= cap - used);
  }

  // Largest free block and total free bytes, over all indexes.
  std::pair<std::size_t, std::size_t> free_summary() const {
    std::size_t largest = 0, total = 0;
    for (auto& idx : indexes) {
      largest = std::max(largest, idx->largest());
      total += idx->bytes;
    }
    return {largest, total};
  }

  // `room`: what the device said at the last growth attempt (Note [Device pre-check]).
  //
  // Note [OOM message]: the message starts the way PyTorch's caching allocator words its
  // own ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of
  // 80.00 GiB of which 1.50 GiB is free. ...", sizes in c10's format), because code in
  // the field recognises an OOM by that text (accelerate's find_executable_batch_size
  // wants "CUDA out of memory." in a one-argument RuntimeError; Lightning's batch-size
  // finder wants "CUDA" and "out of memory"). pypool's own account follows: what limit
  // was hit (the cap, the device, the whole device, or an expandable segment's reserved
  // address space) and advice that fits the configuration (never "turn on expandable
  // segments" when they are on). Backends other than CUDA say which backend they are.
  std::string oom_message(std::size_t size, std::size_t rounded, Stream stream,
                          const DeviceRoom& room) {
    auto [largest, free_bytes] = free_summary();
    const MemInfo mi = room.mem;
    const double ext = free_bytes == 0 ? 0.0 : 1.0 - double(largest) / double(free_bytes);
    const std::size_t allocated = std::size_t(st.allocated_bytes.current());
    const bool cuda = std::string(be.name()) == "cuda";
    const PoolKind kind = policy::pool_for(cfg, rounded);
    std::ostringstream o;
    if (cuda)
      o << "CUDA out of memory. Tried to allocate " << c10_size(size) << ". GPU " << device;
    else
      o << "pypool (" << be.name() << " backend): out of memory. Tried to allocate "
        << c10_size(size) << ". Device " << device;
    if (room.known())
      o << " has a total capacity of " << c10_size(mi.total) << " of which " << c10_size(mi.free)
        << " is free. ";
    else
      o << " did not report its capacity. ";
    if (cap != Config::kUnlimited) o << c10_size(cap) << " allowed; ";
    const char* by = cuda ? "PyTorch" : "pypool";
    o << "Of the allocated memory " << c10_size(allocated) << " is allocated by " << by << ", and "
      << c10_size(reserved() > allocated ? reserved() - allocated : 0) << " is reserved by " << by
      << " but unallocated. ";
    o << "pypool: request rounded to " << human(rounded) << " ("
      << (kind == PoolKind::kSmall ? "small" : "large") << " pool, stream " << hex(stream)
      << "); pool " << human(reserved()) << " reserved, " << human(allocated) << " allocated, "
      << human(free_bytes) << " free in pool (largest free block " << human(largest)
      << ", external fragmentation " << static_cast<int>(ext * 100.0 + 0.5) << "% = 1 - largest/free); cap "
      << human(cap) << ". ";
    // Which limit was hit.
    const bool cap_limited =
        cap != Config::kUnlimited && reserved() + std::min(want_segment(rounded, kind), cap) > cap;
    if (room.never)
      o << "Limit: the request is larger than the whole device, so it cannot succeed there. ";
    else if (room.reserve_full)
      o << "Limit: the expandable segment of stream " << hex(stream) << " has mapped "
        << human(room.reserve_mapped) << " of the " << human(room.reserve_total)
        << " of address space it reserved (expandable_reserve), so it cannot grow by "
        << human(room.reserve_need) << "; the device itself has room. ";
    else if (cap_limited)
      o << "Limit: the pool's cap (" << human(cap) << ", from max_pool_size or the memory fraction). ";
    else if (room.known())
      o << "Limit: the device (" << human(mi.free) << " free of " << human(mi.total) << "). ";
    o << "What to try: free tensors you no longer need, then torch.cuda.empty_cache() (or "
         "pypool.empty_cache())";
    if (room.reserve_full)
      o << "; raise expandable_reserve (PYPOOL_CONF=expandable_reserve:...) above the "
           "stream's peak";
    if (cap != Config::kUnlimited)
      o << "; raise max_pool_size (PYPOOL_CONF=max_pool_size:...) or the memory fraction if "
           "the cap is the limit";
    if (!cfg.expandable_segments && ext >= 0.2)
      o << "; with high fragmentation set PYPOOL_CONF=expandable_segments:true or a max_split_size";
    o << "; or reduce the batch size.";
    return o.str();
  }

  // A size as c10's format_size writes it (CUDACachingAllocator.cpp): "N bytes" up to
  // 1 KiB, then KiB, MiB and GiB with two decimals, never a larger unit.
  static std::string c10_size(std::size_t n) {
    char buf[64];
    if (n <= 1024)
      std::snprintf(buf, sizeof buf, "%zu bytes", n);
    else if (n <= (std::size_t(1) << 20))
      std::snprintf(buf, sizeof buf, "%.2f KiB", double(n) / 1024.0);
    else if (n <= (std::size_t(1) << 30))
      std::snprintf(buf, sizeof buf, "%.2f MiB", double(n) / 1048576.0);
    else
      std::snprintf(buf, sizeof buf, "%.2f GiB", double(n) / 1073741824.0);
    return buf;
  }

  // Message of a request beyond policy::kMaxRequest (1 PiB): out of memory on any
  // device, worded like oom_message's opening, and from 1 EiB on like PyTorch's own
  // check ("Tried to allocate more than 1EB memory."). Called without the pool lock.
  std::string too_large_message(std::size_t size) const {
    const DeviceRoom room = DeviceRoom::ask(be);
    const bool cuda = std::string(be.name()) == "cuda";
    const bool exa = size >= (std::size_t(1) << 60);
    std::ostringstream o;
    if (cuda)
      o << "CUDA out of memory. ";
    else
      o << "pypool (" << be.name() << " backend): out of memory. ";
    if (exa)
      o << "Tried to allocate more than 1EB memory. ";
    else
      o << "Tried to allocate " << c10_size(size) << ". ";
    o << (cuda ? "GPU " : "Device ") << device;
    if (room.known())
      o << " has a total capacity of " << c10_size(room.mem.total) << " of which "
        << c10_size(room.mem.free) << " is free. ";
    else
      o << " did not report its capacity. ";
    o << "pypool: " << size << " bytes is over pypool's 1 PiB limit on any request, beyond "
      << "any device; nothing was allocated.";
    return o.str();
  }
};


namespace detail {
// Note [VMM segments] is in vmm.cpp.
// Sets `room` to what the device said (Note [Device pre-check]).
Block* vmm_grow(DevicePool::Impl& m, std::unique_lock<SpinMutex>& lk, FreeIndex* idx,
                std::size_t rounded, DeviceRoom& room);
// Never throws: what it cannot do (a bookkeeping allocation fails) it leaves as it was,
// and a failed unmap quarantines its range.
void vmm_shrink_all(DevicePool::Impl& m, std::unique_lock<SpinMutex>& lk, std::size_t keep) noexcept;
void vmm_destroy(Backend& be, Segment* s) noexcept;
// At pool destruction: tries once more to unmap quarantined ranges, then releases their
// virtual ranges.
void vmm_destroy_quarantine(DevicePool::Impl& m) noexcept;
}  // namespace detail

}  // namespace pypool
