// DevicePool: blocks inside segments, free indexes per (stream, kind), the malloc
// fallback chain, release, statistics, tracing and the invariant checker.
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <sstream>
#include <utility>

#include "pool_impl.h"

namespace pypool {


const char* trace_action_name(TraceAction a) noexcept {
  switch (a) {
    case TraceAction::kAlloc: return "alloc";
    case TraceAction::kFreeRequested: return "free_requested";
    case TraceAction::kFreeCompleted: return "free_completed";
    case TraceAction::kSegmentAlloc: return "segment_alloc";
    case TraceAction::kSegmentFree: return "segment_free";
    case TraceAction::kSegmentMap: return "segment_map";
    case TraceAction::kSegmentUnmap: return "segment_unmap";
    case TraceAction::kOom: return "oom";
  }
  return "unknown";
}

// ============================================================================ public

DevicePool::DevicePool(const Config& cfg, std::shared_ptr<Backend> backend, int device)
    : cfg_(cfg), backend_(std::move(backend)), device_(device) {
  cfg_.validate();
  if (!backend_) throw std::invalid_argument("DevicePool: backend is null");
  if (cfg_.expandable_segments && !backend_->supports_vmm())
    throw std::invalid_argument(std::string("PoolConfig.expandable_segments: backend '") +
                                backend_->name() + "' has no virtual memory support");
  impl_ = std::make_unique<Impl>(cfg_, *backend_, device_);
  impl_->cap = cfg_.max_pool_size;
  // Note [Memory fraction at creation]: a fraction of device memory can only be turned
  // into bytes once the device is known, so each pool applies it when it is made (the
  // registry makes a device's pool at its first allocation).
  if (cfg_.memory_fraction > 0) set_memory_fraction(cfg_.memory_fraction);
  if (cfg_.initial_pool_size > 0) {
    // Preallocate one large segment on the default stream so the first steps never pay
    // for a device allocation. Freed by empty_cache like any cached segment, unless
    // release_threshold keeps it.
    void* p = malloc(cfg_.initial_pool_size, 0);
    free(p);
  }
}

DevicePool::~DevicePool() {
  // Hand every segment back, live blocks or not: the pool owns its memory.
  Impl& m = *impl_;
  for (auto& [ev, b] : m.pending) {
    (void)b;
    try {
      m.be.release_event(ev);
    } catch (...) {
    }
  }
  Segment* s = m.segs;
  while (s != nullptr) {
    Segment* next = s->next;
    try {
      if (s->expandable)
        detail::vmm_destroy(m.be, s);
      else
        m.be.deallocate(reinterpret_cast<void*>(s->addr), s->size);
    } catch (...) {
    }
    for (Block* b = s->first; b != nullptr;) {
      Block* bn = b->next;
      m.arena.put(b);
      b = bn;
    }
    delete s;
    s = next;
  }
}

namespace {

// A request beyond any device is out of memory, as in PyTorch (whose own limit is 1 EiB),
// not a bad argument: code that shrinks its batch on OOM then shrinks it.
[[noreturn]] __attribute__((noinline, cold)) void throw_too_large(const DevicePool::Impl& m,
                                                                  std::size_t size) {
  throw OutOfMemoryError(m.too_large_message(size));
}

// Context id and time of an allocation while history or context capture is on.
struct Annotation {
  std::uint64_t context = 0;
  double time_us = 0;
};
__attribute__((noinline)) Annotation annotate(DevicePool::Impl& m) {
  Annotation a;
  a.time_us = now_us();
  ContextHook hook;
  void* user;
  {
    std::lock_guard<SpinMutex> g(m.mu);
    hook = m.capture_context ? m.hook : nullptr;
    user = m.hook_user;
  }
  if (hook != nullptr) a.context = hook(user);
  return a;
}

}  // namespace

void* DevicePool::malloc(std::size_t size, Stream stream) {
  if (size == 0) return nullptr;
  Impl& m = *impl_;
  if (size > policy::kMaxRequest) throw_too_large(m, size);
  const Annotation an = m.annotate.load(std::memory_order_relaxed) ? annotate(m) : Annotation{};
  const std::size_t rounded = policy::round_size(cfg_, size);
  const PoolKind kind = policy::pool_for(cfg_, rounded);

  std::unique_lock<SpinMutex> lk(m.mu);
  if (!m.pending.empty()) m.process_events();
  FreeIndex* idx = m.index_for(stream, kind);
  Block* b = idx->find(rounded, [&](std::size_t s) { return policy::can_use(cfg_, s, rounded); });
  if (b != nullptr)
    m.take_free(idx, b);
  else
    b = fallback_locked(lk, idx, size, rounded, stream, an.context);
  return m.finish_alloc(b, rounded, size, stream, an.context, an.time_us);
}

// Inlined into its one caller; a function of its own for reading.
__attribute__((always_inline)) inline Block* DevicePool::fallback_locked(
    std::unique_lock<SpinMutex>& lk, FreeIndex* idx, std::size_t size, std::size_t rounded,
    Stream stream, std::uint64_t context) {
  Impl& m = *impl_;
  const PoolKind kind = idx->kind;
  auto ok = [&](std::size_t s) { return policy::can_use(cfg_, s, rounded); };
  auto take = [&](bool exhaustive) {
    Block* f = idx->find(rounded, ok, exhaustive);
    if (f != nullptr) m.take_free(idx, f);
    return f;
  };

  // Fallback chain (Note [Locking rule] for the lock drops inside): exhaustive search ->
  // garbage collection -> reclaim -> grow -> wait for pending frees, release everything
  // cached and retry (free list, then grow) -> out of memory.
  Block* b = take(true);
  if (b == nullptr && cfg_.garbage_collection_threshold > 0 && m.cap != Config::kUnlimited &&
      double(m.reserved() + policy::segment_size(cfg_, rounded)) >
          cfg_.garbage_collection_threshold * double(m.cap)) {
    release_cached_locked(lk, /*respect_threshold=*/false);
    b = take(false);
  }
  if (b == nullptr && cfg_.reclaim_before_grow && kind == PoolKind::kLarge &&
      !cfg_.expandable_segments) {
    // Note [Reclaim before grow]: this stream's cached segments sized for earlier shapes
    // that cannot serve this request are given back before the pool grows, when they
    // cover the growth: reserved memory then stays flat instead of ratcheting up with
    // every new shape (the bundled variable-length workloads reserve 1.3-2x their live
    // peak without this). Costs a device free (a sync on CUDA) only when the pool would
    // grow.
    release_cached_locked(lk, /*respect_threshold=*/false, m.want_segment(rounded, kind), idx);
    b = take(false);
  }
  if (b != nullptr) return b;
  DeviceRoom room;
  b = grow_locked(lk, idx, rounded, room);
  // A growth beyond the whole device is refused without the retry: releasing the cache
  // cannot help it (Note [Device pre-check]).
  if (b == nullptr && !room.never) {
    ++m.st.num_alloc_retries;
    // Memory that only waits for another stream is not "out of memory".
    sync_pending_locked();
    release_cached_locked(lk, /*respect_threshold=*/false);
    b = take(true);
    if (b == nullptr) b = grow_locked(lk, idx, rounded, room);
  }
  if (b == nullptr) {
    ++m.st.num_ooms;
    // torch's snapshots put the device's free bytes in an oom entry's address field.
    m.trace(TraceAction::kOom, room.mem.free, size, stream, context);
    throw OutOfMemoryError(m.oom_message(size, rounded, stream, room));
  }
  return b;
}

void DevicePool::free(void* p) {
  if (p == nullptr) return;
  Impl& m = *impl_;
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  std::lock_guard<SpinMutex> g(m.mu);
  detail::PtrMap::Entry* e = m.live.lookup(addr);
  Block* b = e != nullptr ? e->block : nullptr;
  if (b == nullptr || b->state != BlockState::kAllocated) throw_bad_pointer_locked("free", addr);
  if (b->uses != nullptr && !b->uses->empty()) {
    // Note [record_stream]: record every event first, so a throwing backend leaves the
    // pool unchanged (as documented).
    m.pending.reserve(m.pending.size() + b->uses->size());
    const std::size_t first = m.pending.size();
    try {
      for (Stream s : *b->uses) m.pending.emplace_back(m.be.record_event(s), b);
    } catch (...) {
      for (std::size_t i = first; i < m.pending.size(); ++i) m.be.release_event(m.pending[i].first);
      m.pending.resize(first);
      throw;
    }
    b->pending_events = static_cast<std::uint16_t>(m.pending.size() - first);
  }
  const PoolKind k = b->seg->index->kind;
  Impl::sub(m.st.allocation, k, 1);
  Impl::sub(m.st.allocated_bytes, k, static_cast<std::int64_t>(b->size));
  Impl::sub(m.st.requested_bytes, k, static_cast<std::int64_t>(b->requested));
  m.trace(TraceAction::kFreeRequested, b->addr, b->requested, b->stream, b->context, b->seq);
  if (b->pending_events > 0) {
    b->state = BlockState::kPendingFree;
    return;
  }
  m.live.erase(e);  // the entry found above: one probe per free (Note [Pointer map])
  m.return_block(b);
}

void DevicePool::record_stream(void* p, Stream stream) {
  Impl& m = *impl_;
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  std::lock_guard<SpinMutex> g(m.mu);
  Block* b = m.live.find(addr);
  if (b == nullptr || b->state != BlockState::kAllocated)
    throw_bad_pointer_locked("record_stream", addr);
  if (stream == b->stream) return;
  if (b->uses == nullptr) b->uses = new std::vector<Stream>();
  if (std::find(b->uses->begin(), b->uses->end(), stream) == b->uses->end())
    b->uses->push_back(stream);
}

void DevicePool::throw_bad_pointer_locked(const char* op, std::uintptr_t addr) const {
  const Impl& m = *impl_;
  std::string what;
  if (const Block* b = m.live.find(addr); b != nullptr) {
    what = "double free: the block is already freed and waits for stream events (record_stream)";
  } else {
    const Segment* in = nullptr;
    for (const Segment* s = m.segs; s != nullptr; s = s->next)
      if (addr >= s->addr && addr < s->addr + s->size) in = s;
    if (in == nullptr) {
      what = "foreign pointer: not allocated by this pool";
    } else {
      const Block* at = nullptr;
      for (const Block* b = in->first; b != nullptr; b = b->next)
        if (addr >= b->addr && addr < b->addr + b->size) at = b;
      if (at != nullptr && at->addr == addr && at->state == BlockState::kFree)
        what = "double free: the block at this address is already free";
      else
        what = "not an address returned by malloc (it points inside a block)";
    }
  }
  throw InvalidPointerError(std::string("pypool: ") + op + "(" + hex(addr) + ") on device " +
                            std::to_string(device_) + ": " + what + "; the pool is unchanged");
}

Block* DevicePool::grow_locked(std::unique_lock<SpinMutex>& lk, FreeIndex* idx,
                               std::size_t rounded, DeviceRoom& room) {
  Impl& m = *impl_;
  if (cfg_.expandable_segments && idx->kind == PoolKind::kLarge)
    return detail::vmm_grow(m, lk, idx, rounded, room);
  lk.unlock();
  room = DeviceRoom::ask(m.be);  // Note [Device pre-check]
  lk.lock();
  const std::size_t want = m.want_segment(rounded, idx->kind);
  const std::size_t minimal = policy::min_segment_size(cfg_, rounded);
  if (room.beyond_total(minimal)) {
    room.never = true;
    return nullptr;
  }
  // The preferred size first; if the cap or the device refuses it, the smallest segment
  // that still holds the request.
  const std::size_t tries[2] = {want, minimal};
  for (int i = 0; i < (want == minimal ? 1 : 2); ++i) {
    const std::size_t n = tries[i];
    if (!m.fits_cap(n) || !room.fits_free(n)) continue;
    m.inflight += n;
    void* p = nullptr;
    lk.unlock();
    try {
      p = m.be.allocate(n);
    } catch (...) {
      lk.lock();
      m.inflight -= n;
      throw;
    }
    lk.lock();
    m.inflight -= n;
    if (p == nullptr) continue;
    Segment* seg = m.add_segment(p, n, idx);
    return seg->first;  // not in the index: the caller serves from it directly
  }
  return nullptr;
}

void DevicePool::release_cached_locked(std::unique_lock<SpinMutex>& lk, bool respect_threshold,
                                       std::size_t reclaim, const FreeIndex* only) {
  Impl& m = *impl_;
  if (!m.pending.empty()) m.process_events();
  std::size_t cached = m.free_summary().second;
  std::vector<Segment*> out;
  for (Segment* s = m.segs; s != nullptr; s = s->next) {
    Block* b = s->first;
    if (s->expandable || b->state != BlockState::kFree || b->next != nullptr) continue;
    if (reclaim > 0 && (s->kind != PoolKind::kLarge || s->index != only)) continue;
    if (respect_threshold && cached - s->size < cfg_.release_threshold) continue;
    cached -= s->size;
    out.push_back(s);
  }
  if (reclaim > 0) {
    // Largest first, only as many as cover the growth, and none if they cannot.
    std::sort(out.begin(), out.end(), [](Segment* a, Segment* b) { return a->size > b->size; });
    std::size_t got = 0, n = 0;
    while (n < out.size() && got < reclaim) got += out[n++]->size;
    out.resize(got >= reclaim ? n : 0);
  }
  for (Segment* s : out) {
    m.take_free(s->index, s->first);
    m.arena.put(s->first);
    s->first = nullptr;
    m.unlink_segment(s);
    Impl::sub(m.st.segment, s->kind, 1);
    Impl::sub(m.st.reserved_bytes, s->kind, static_cast<std::int64_t>(s->size));
    ++m.st.num_device_free;
    m.trace(TraceAction::kSegmentFree, s->addr, s->size, s->stream);
  }
  // Expandable segments give back their free tail instead (Note [VMM segments]).
  if (cfg_.expandable_segments && reclaim == 0)
    detail::vmm_shrink_all(m, lk, respect_threshold ? cfg_.release_threshold : 0);
  if (out.empty()) return;
  lk.unlock();
  for (Segment* s : out) {
    try {
      m.be.deallocate(reinterpret_cast<void*>(s->addr), s->size);
    } catch (...) {
      // The segment is gone from the pool either way; a failing free means a broken
      // device, which the next allocation will report.
    }
    delete s;
  }
  lk.lock();
}

void DevicePool::sync_pending_locked() {
  Impl& m = *impl_;
  if (m.pending.empty()) return;
  // Wait for the events of blocks freed after record_stream, as PyTorch's
  // release_cached_blocks does. Done under the lock, unlike other blocking calls, so
  // that no other thread releases the events meanwhile: this runs only on the way to
  // out-of-memory and in empty_cache, never on the hot path.
  for (auto& [ev, blk] : m.pending) backend_->synchronize_event(ev);
  ++m.st.num_sync_all_streams;
  m.process_events();
}

void DevicePool::empty_cache() {
  std::unique_lock<SpinMutex> lk(impl_->mu);
  sync_pending_locked();
  release_cached_locked(lk, /*respect_threshold=*/true);
}

void DevicePool::release_all_cached() {
  std::unique_lock<SpinMutex> lk(impl_->mu);
  sync_pending_locked();
  release_cached_locked(lk, /*respect_threshold=*/false);
}

Stats DevicePool::stats() const {
  std::lock_guard<SpinMutex> g(impl_->mu);
  Stats s = impl_->st.snapshot();
  s.max_pool_size = impl_->cap == Config::kUnlimited ? -1 : static_cast<std::int64_t>(impl_->cap);
  return s;
}

void DevicePool::reset_peak_stats() {
  std::lock_guard<SpinMutex> g(impl_->mu);
  PoolStats& s = impl_->st;
#define PYPOOL_RESET_PEAK(name) s.name.reset_peak();
  PYPOOL_ARRAY_STATS(PYPOOL_RESET_PEAK)
#undef PYPOOL_RESET_PEAK
}

void DevicePool::reset_accumulated_stats() {
  std::lock_guard<SpinMutex> g(impl_->mu);
  PoolStats& s = impl_->st;
#define PYPOOL_RESET_ACC(name) s.name.reset_accumulated();
  PYPOOL_ARRAY_STATS(PYPOOL_RESET_ACC)
#undef PYPOOL_RESET_ACC
#define PYPOOL_RESET_SCALAR(name) s.name = 0;
  PYPOOL_SCALAR_STATS(PYPOOL_RESET_SCALAR)
#undef PYPOOL_RESET_SCALAR
}

namespace {
BlockInfo info_of(const Block* b) {
  return BlockInfo{b->addr, b->size, b->requested, b->state, b->stream, b->seq, b->context, b->time_us};
}
}  // namespace

std::vector<SegmentInfo> DevicePool::segments() const {
  std::lock_guard<SpinMutex> g(impl_->mu);
  std::vector<SegmentInfo> out;
  for (const Segment* s = impl_->segs; s != nullptr; s = s->next) {
    SegmentInfo si{s->addr, s->size, s->kind, s->stream, s->expandable, s->reserved_va, {}};
    for (const Block* b = s->first; b != nullptr; b = b->next) si.blocks.push_back(info_of(b));
    out.push_back(std::move(si));
  }
  std::sort(out.begin(), out.end(),
            [](const SegmentInfo& a, const SegmentInfo& b) { return a.address < b.address; });
  return out;
}

std::vector<BlockInfo> DevicePool::live_blocks(std::uint64_t min_seq) const {
  std::lock_guard<SpinMutex> g(impl_->mu);
  std::vector<BlockInfo> out;
  impl_->live.for_each([&](std::uintptr_t, const Block* b) {
    if (b->state == BlockState::kAllocated && b->seq >= min_seq) out.push_back(info_of(b));
  });
  std::sort(out.begin(), out.end(), [](const BlockInfo& a, const BlockInfo& b) { return a.seq < b.seq; });
  return out;
}

std::size_t DevicePool::size_of(void* p) const {
  std::lock_guard<SpinMutex> g(impl_->mu);
  const Block* b = impl_->live.find(reinterpret_cast<std::uintptr_t>(p));
  if (b == nullptr || b->state != BlockState::kAllocated)
    throw_bad_pointer_locked("size_of", reinterpret_cast<std::uintptr_t>(p));
  return b->size;
}

void DevicePool::set_memory_fraction(double fraction) {
  if (!(fraction <= 1.0)) throw std::invalid_argument("memory fraction must be in (0, 1]");
  std::size_t total = 0;
  if (fraction > 0) total = backend_->mem_info().total;
  std::lock_guard<SpinMutex> g(impl_->mu);
  impl_->fraction = fraction > 0 ? fraction : 0.0;
  std::size_t c = cfg_.max_pool_size;
  if (fraction > 0) c = std::min(c, static_cast<std::size_t>(fraction * double(total)));
  impl_->cap = c;
}

double DevicePool::memory_fraction() const {
  std::lock_guard<SpinMutex> g(impl_->mu);
  return impl_->fraction;
}

std::size_t DevicePool::cap() const {
  std::lock_guard<SpinMutex> g(impl_->mu);
  return impl_->cap;
}

std::uint64_t DevicePool::next_seq() const {
  std::lock_guard<SpinMutex> g(impl_->mu);
  return impl_->seq + 1;
}

void DevicePool::set_history(bool enabled, std::size_t max_entries) {
  std::lock_guard<SpinMutex> g(impl_->mu);
  Impl& m = *impl_;
  if (enabled && max_entries == 0) throw std::invalid_argument("max_entries must be > 0");
  m.history_on = enabled;
  if (enabled && m.ring.size() != max_entries) {
    m.ring.assign(max_entries, TraceEntry{});
    m.ring_next = m.ring_count = 0;
  }
  if (!enabled) {
    m.ring.clear();
    m.ring.shrink_to_fit();
    m.ring_next = m.ring_count = 0;
  }
  m.annotate.store(m.history_on || m.capture_context, std::memory_order_relaxed);
}

std::vector<TraceEntry> DevicePool::history() const {
  std::lock_guard<SpinMutex> g(impl_->mu);
  const Impl& m = *impl_;
  std::vector<TraceEntry> out;
  out.reserve(m.ring_count);
  const std::size_t start = (m.ring_next + m.ring.size() - m.ring_count) % std::max<std::size_t>(1, m.ring.size());
  for (std::size_t i = 0; i < m.ring_count; ++i) out.push_back(m.ring[(start + i) % m.ring.size()]);
  return out;
}

void DevicePool::set_context_hook(ContextHook hook, void* user) {
  std::lock_guard<SpinMutex> g(impl_->mu);
  impl_->hook = hook;
  impl_->hook_user = user;
}

void DevicePool::set_capture_context(bool on) {
  std::lock_guard<SpinMutex> g(impl_->mu);
  impl_->capture_context = on;
  impl_->annotate.store(impl_->history_on || on, std::memory_order_relaxed);
}

// ============================================================================ invariants

void DevicePool::check_invariants() const {
  std::lock_guard<SpinMutex> g(impl_->mu);
  const Impl& m = *impl_;
  auto fail = [](const std::string& why) { throw InvariantError("pypool invariant violated: " + why); };
  // Recomputed from a walk into torch's [all, small, large] arrays, independently of the
  // per-kind bookkeeping (Note [Stats by kind]), and compared with its snapshot.
  auto add = [](StatArray& a, PoolKind k, std::int64_t n) {
    a[0].add(n);
    a[kind_index(k)].add(n);
  };
  const Stats st = m.st.snapshot();
  Stats calc;
  std::size_t free_blocks = 0, live_blocks = 0;
  for (const Segment* s = m.segs; s != nullptr; s = s->next) {
    if (s->next != nullptr && s->next->prev != s) fail("segment list links broken");
    if (s->first == nullptr || s->first->addr != s->addr || s->first->prev != nullptr)
      fail("segment " + hex(s->addr) + " does not start with its first block");
    if (s->index == nullptr || s->index->stream != s->stream || s->index->kind != s->kind)
      fail("segment " + hex(s->addr) + " has the wrong free index");
    const PoolKind k = s->kind;
    add(calc.segment, k, 1);
    add(calc.reserved_bytes, k, static_cast<std::int64_t>(s->size));
    std::uintptr_t at = s->addr;
    for (const Block* b = s->first; b != nullptr; b = b->next) {
      const std::string where = "block " + hex(b->addr) + " in segment " + hex(s->addr);
      if (b->seg != s) fail(where + ": wrong segment pointer");
      if (b->addr != at) fail(where + ": blocks do not tile the segment (gap or overlap)");
      if (b->size == 0 || b->size % m.cfg.min_block_size != 0) fail(where + ": bad size");
      if (b->next != nullptr && b->next->prev != b) fail(where + ": neighbour links broken");
      if (b->stream != s->stream) fail(where + ": stream differs from its segment's");
      at += b->size;
      const auto bs = static_cast<std::int64_t>(b->size);
      if (b->state == BlockState::kFree) {
        ++free_blocks;
        if (b->next != nullptr && b->next->state == BlockState::kFree)
          fail(where + ": two adjacent free blocks (not coalesced)");
        if (m.live.find(b->addr) == b) fail(where + ": free block in the live map");
        if (b->bin != FreeIndex::bin_of(b->size) || !s->index->contains(b))
          fail(where + ": free block not findable in its free index");
        if (b->is_split()) {
          add(calc.inactive_split, k, 1);
          add(calc.inactive_split_bytes, k, bs);
        }
      } else {
        ++live_blocks;
        if (m.live.find(b->addr) != b) fail(where + ": live block missing from the live map");
        if (b->state == BlockState::kAllocated) {
          if (b->requested == 0 || b->requested > b->size) fail(where + ": bad requested size");
          add(calc.allocation, k, 1);
          add(calc.allocated_bytes, k, bs);
          add(calc.requested_bytes, k, static_cast<std::int64_t>(b->requested));
        } else if (b->pending_events == 0) {
          fail(where + ": pending-free block with no pending event");
        }
        add(calc.active, k, 1);
        add(calc.active_bytes, k, bs);
      }
    }
    if (at != s->addr + s->size) fail("segment " + hex(s->addr) + ": blocks do not add up to its size");
  }
  std::size_t indexed = 0;
  for (const auto& idx : m.indexes) {
    if (!idx->bitmaps_consistent()) fail("free index bitmaps disagree with its bins");
    std::size_t n = 0, bytes = 0;
    idx->for_each([&](const Block* b) {
      ++n;
      bytes += b->size;
      if (b->state != BlockState::kFree) fail("a non-free block sits in a free index");
      if (b->seg->index != idx.get()) fail("a free block sits in another stream's index");
    });
    if (bytes != idx->bytes) fail("free index byte count disagrees with its bins");
    indexed += n;
  }
  if (indexed != free_blocks) fail("free blocks in segments and in free indexes differ");
  if (m.live.size() != live_blocks) fail("live map holds blocks that are in no segment");
  for (int i = 0; i < 3; ++i) {
#define PYPOOL_CHECK_STAT(name)                                                           \
  if (calc.name[i].current != st.name[i].current)                                         \
    fail(std::string("stat " #name "[") + std::to_string(i) + "] is " +                   \
         std::to_string(st.name[i].current) + ", a walk gives " +                         \
         std::to_string(calc.name[i].current));                                           \
  if (st.name[i].peak < st.name[i].current || st.name[i].current < 0)                     \
    fail(std::string("stat " #name " peak/current out of order"));
    PYPOOL_ARRAY_STATS(PYPOOL_CHECK_STAT)
#undef PYPOOL_CHECK_STAT
  }
}

}  // namespace pypool
