// DevicePool: blocks inside segments, free indexes per (stream, kind), the malloc
// fallback chain, release, statistics, tracing and the invariant checker.
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <exception>
#include <mutex>
#include <pthread.h>
#include <sstream>
#include <utility>

#include "pool_impl.h"
#include "pypool/registry.h"

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

// ============================================================================ fork

// Note [Fork safety]: a child process starts with one thread and a copy of every lock as
// it was at fork time. A pool lock held by another thread then stays held in the child
// for ever (a malloc there spins or parks for good). So every live pool is listed, and
// pthread_atfork handlers take all the pools' locks before fork (grow_mu, then mu:
// Note [Growth and release protocol]'s order, so fork waits for a growth or release in
// flight to finish) and release them after it, in parent and child. The child can then
// use a pool whose state is whole; device memory itself is not usable across fork on
// CUDA, as with PyTorch, but a host pool (and the bookkeeping) is.
namespace {
std::mutex g_pools_mu;
std::vector<DevicePool::Impl*>* g_pools = new std::vector<DevicePool::Impl*>();  // never freed

// The registry's mutex comes first: make_pool holds it while it constructs a pool, which
// takes g_pools_mu.
void fork_prepare() {
  Registry::instance().lock_for_fork();
  g_pools_mu.lock();
  for (DevicePool::Impl* m : *g_pools) {
    m->grow_mu.lock();
    m->mu.lock();
    // A shrink runs without grow_mu (Note [Shrink outside grow_mu]): let it finish, so
    // the child never inherits a segment claimed by a thread it does not have. (Not
    // empty_cache's synchronize of pending frees, which waits for events the forking
    // thread itself may be due to complete; a child forked meanwhile keeps those blocks
    // pending: memory it does not reuse, never memory reused early.)
    while (m->shrinking != 0) m->vmm_cv.wait(m->mu);
  }
}
void fork_after() {
  for (DevicePool::Impl* m : *g_pools) {
    m->mu.unlock();
    m->grow_mu.unlock();
  }
  g_pools_mu.unlock();
  Registry::instance().unlock_after_fork();
}

void list_pool(DevicePool::Impl* m) {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(fork_prepare, fork_after, fork_after); });
  std::lock_guard<std::mutex> g(g_pools_mu);
  g_pools->push_back(m);
}
void unlist_pool(DevicePool::Impl* m) noexcept {
  std::lock_guard<std::mutex> g(g_pools_mu);
  auto it = std::find(g_pools->begin(), g_pools->end(), m);
  if (it != g_pools->end()) g_pools->erase(it);
}
}  // namespace

// ============================================================================ public

DevicePool::DevicePool(const Config& cfg, std::shared_ptr<Backend> backend, int device)
    : cfg_(cfg), backend_(std::move(backend)), device_(device) {
  cfg_.validate_new();
  if (!backend_) throw std::invalid_argument("DevicePool: backend is null");
  if (cfg_.expandable_segments && !backend_->supports_vmm())
    throw std::invalid_argument(std::string("PoolConfig.expandable_segments: backend '") +
                                backend_->name() + "' has no virtual memory support");
  impl_ = std::make_unique<Impl>(cfg_, *backend_, device_);
  list_pool(impl_.get());  // Note [Fork safety]
  impl_->cap = cfg_.max_pool_size;
  try {
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
  } catch (...) {
    unlist_pool(impl_.get());  // no destructor runs for a constructor that throws
    throw;
  }
}

DevicePool::~DevicePool() {
  // Hand every segment back, live blocks or not: the pool owns its memory.
  Impl& m = *impl_;
  unlist_pool(&m);
  for (auto& f : m.fifos) {
    for (std::size_t i = f.head; i < f.q.size(); ++i) {
      try {
        m.be.release_event(f.q[i].first);
      } catch (...) {
      }
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
  detail::vmm_destroy_quarantine(m);
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

// The context id of a free or a release while free-context capture is on (Note [Free
// stacks]); 0 otherwise. Called without the lock: the hook may take the GIL.
std::uint64_t free_context(DevicePool::Impl& m) {
  if (!m.annotate_free.load(std::memory_order_relaxed)) return 0;
  ContextHook hook;
  void* user;
  {
    std::lock_guard<SpinMutex> g(m.mu);
    hook = m.capture_free_context ? m.hook : nullptr;
    user = m.hook_user;
  }
  return hook != nullptr ? hook(user) : 0;
}

}  // namespace

void* DevicePool::malloc(std::size_t size, Stream stream) {
  if (size == 0) return nullptr;
  Impl& m = *impl_;
  if (size > policy::kMaxRequest) throw_too_large(m, size);
  const Annotation an = m.annotate.load(std::memory_order_relaxed) ? annotate(m) : Annotation{};
  const std::uint64_t round_word = m.round_word.load(std::memory_order_relaxed);
  const std::size_t rounded = policy::round_size(
      cfg_, size, round_word, round_word == 0 ? 0 : m.round_gate.load(std::memory_order_relaxed));
  const PoolKind kind = policy::pool_for(cfg_, rounded);

  std::unique_lock<SpinMutex> lk(m.mu);
  if (m.npending != 0) m.process_events();
  FreeIndex* idx = m.index_for(stream, kind);
  Block* b = idx->find(rounded, [&](std::size_t s) { return policy::can_use(cfg_, s, rounded); });
  if (b != nullptr)
    m.take_free(idx, b);
  else
    b = fallback_locked(lk, idx, size, rounded, stream, an.context);
  return m.finish_alloc(b, rounded, size, stream, an.context, an.time_us);
}

// Note [Reclaim under pressure]: reclaiming before every growth (Note [Reclaim before
// grow]) kept reserved memory flat, but made a device synchronization per growth in
// steady state: 72 per 1,000 allocations on the recorded growing-batch CNN on a roomy
// device, where PyTorch makes none. Reclaiming only when the growth would fail (the
// retry path) costs smallest capacity instead (1.047 -> 1.077 x floor on transformer,
// 1.054 -> 1.086 on growing_batch): by then the stale segments have been split by
// later allocations and pin memory. The middle way: reclaim once reserved + the growth
// would pass reclaim_threshold of the room the pool can have, min(cap, reserved + the
// device's free bytes). A roomy device never gets there (no synchronization at all); a
// capped pool starts reclaiming early enough that old shapes do not ratchet up. 0 =
// before every growth, as before. Under pressure every stale segment of the stream goes
// at once, not just enough for this growth: fewer growths then find the pool near its
// limit, and the segments go before later allocations split them (smallest capacity
// x floor at 0.8, just-enough -> all at once: transformer 1.047 -> 1.043, growing_batch
// 1.052 -> 1.035, random 1.092 -> 1.090; always reclaiming, before: 1.047, 1.054,
// 1.091). Measured per threshold in benchmarks/results/2026-12-02-cpu-reclaim-threshold.txt.
bool DevicePool::reclaim_pressure_locked(std::unique_lock<SpinMutex>& lk, std::size_t growth,
                                         DeviceRoom& room) {
  Impl& m = *impl_;
  const double t = cfg_.reclaim_threshold;
  if (t <= 0) return true;
  const double need = double(m.reserved()) + double(growth);
  if (m.cap != Config::kUnlimited && need > t * double(m.cap)) return true;
  // The device's room: other processes (and other pools) may hold part of it. This is
  // the growth's one mem_info call (Note [Device pre-check]): grow_locked takes `room`
  // from here (DeviceRoom::fresh) instead of asking again.
  lk.unlock();
  room = DeviceRoom::ask(m.be);
  lk.lock();
  room.fresh = true;
  if (!room.known()) return m.cap == Config::kUnlimited;  // nothing to measure against: as before
  return need > t * (double(m.reserved()) + double(room.mem.free));
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
  // [growth mutex, search again] -> garbage collection -> reclaim -> grow -> wait for
  // pending frees, release everything cached and retry (free list, then grow) -> out of
  // memory.
  DeviceRoom room;
  std::unique_lock<std::mutex> gk(m.grow_mu, std::defer_lock);
  // A shrink of this stream's expandable segment runs without grow_mu and holds its claim
  // while it waits for the stream (Note [Shrink outside grow_mu]). Waiting for the claim
  // with grow_mu held (in vmm_grow) would make every other stream's growth wait for this
  // stream's kernels, so the wait happens with grow_mu dropped, and the cache is searched
  // again after it. From the check to vmm_grow's claim mu stays held.
  auto grow = [&]() -> Block* {
    if (cfg_.expandable_segments && kind == PoolKind::kLarge) {
      while (idx->vmm_busy) {
        gk.unlock();  // never blocks: fine with mu held
        m.vmm_cv.wait(lk, [&] { return !idx->vmm_busy; });
        lk.unlock();
        gk.lock();
        lk.lock();
        if (m.npending != 0) m.process_events();
        if (Block* f = take(true)) return f;
      }
    }
    return grow_locked(lk, idx, rounded, room);
  };
  Block* b = take(true);
  if (b != nullptr) return b;
  // From here on this thread may change the pool's device footprint, so it holds grow_mu
  // (Note [Growth and release protocol]). Waiting for it means another thread is growing
  // or releasing; what that thread did may serve this request, so search again before
  // growing. (try_lock first: no lock drop when nobody else is growing.)
  if (!gk.try_lock()) {
    lk.unlock();
    gk.lock();
    lk.lock();
    if (m.npending != 0) m.process_events();
    b = take(true);
    if (b != nullptr) return b;
  }
  if (cfg_.garbage_collection_threshold > 0 && m.cap != Config::kUnlimited &&
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
    // peak without this). Each reclaim is a device free, a device synchronization on
    // CUDA, so it runs only under pressure (Note [Reclaim under pressure]).
    const std::size_t want = m.want_segment(rounded, kind);
    if (reclaim_pressure_locked(lk, want, room)) {
      const std::size_t before = m.reserved();
      release_cached_locked(lk, /*respect_threshold=*/false, want, idx);
      // The device has them back: the room asked before counts them as free now.
      if (room.fresh && room.known()) room.mem.free += before - m.reserved();
      b = take(false);
    }
  }
  if (b != nullptr) return b;
  b = grow();
  // A growth beyond the whole device is refused without the retry: releasing the cache
  // cannot help it (Note [Device pre-check]).
  if (b == nullptr && !room.never) {
    ++m.st.num_alloc_retries;
    // An expandable tail being unmapped by another thread still counts in reserved(), and
    // blocks whose events another thread's empty_cache is synchronizing are neither free
    // nor pending in a FIFO. Either comes back without grow_mu
    // (Note [Shrink outside grow_mu]), so a retry that fails while one is in flight, or
    // after one finished since the retry began (the device snapshot of the growth may
    // predate it), waits for it and goes round again. Each round needs another thread to
    // have finished a release (this thread's own releases, made before it looked, do not
    // count).
    for (;;) {
      const std::uint64_t epoch = m.release_epoch, own = Impl::own_releases;
      // Memory that only waits for another stream is not "out of memory".
      sync_pending_locked(lk);
      release_cached_locked(lk, /*respect_threshold=*/false);
      b = take(true);
      if (b == nullptr) b = grow();
      if (b != nullptr || room.never) break;
      while (m.shrinking != 0 || m.syncing != 0) m.vmm_cv.wait(lk);
      if (m.release_epoch - epoch == Impl::own_releases - own) break;  // nothing new came back
    }
  }
  if (b == nullptr) {
    ++m.st.num_ooms;
    // torch's snapshots put the device's free bytes in an oom entry's address field.
    m.trace(TraceAction::kOom, room.mem.free, size, stream, context);
    throw OutOfMemoryError(m.oom_message(size, rounded, stream, room));
  }
  return b;
}

namespace {
// free() of a block used on other streams (record_stream): records one event per stream.
// Out of line and cold, so that the common free() keeps a small frame (inlined here it
// cost the cache-hit malloc+free pair ~10 ns, 43 -> 54 ns).
__attribute__((noinline, cold)) void record_free_events(DevicePool::Impl& m, Block* b) {
  // Note [record_stream]: make room in every FIFO, then record every event, so a
  // throwing backend (or bad_alloc) leaves the pool unchanged (as documented).
  // One pending_events count per stream; more than fit would wrap it to 0 and hand the
  // block out while still in use (its streams are distinct, so this is only reachable
  // with billions of them).
  if (b->uses->size() > UINT32_MAX)
    throw std::length_error("pypool: free(): more record_stream streams on one block than it can count");
  for (Stream s : *b->uses) {
    DevicePool::Impl::EventFifo& f = m.fifo_for(s);
    f.q.reserve(f.q.size() + 1);
  }
  std::size_t n = 0;
  try {
    for (Stream s : *b->uses) {
      const Event ev = m.be.record_event(s);
      m.fifo_for(s).q.emplace_back(ev, b);  // no allocation: reserved above
      ++n;
    }
  } catch (...) {
    for (std::size_t i = 0; i < n; ++i) {
      DevicePool::Impl::EventFifo& f = m.fifo_for((*b->uses)[i]);
      m.be.release_event(f.q.back().first);
      f.q.pop_back();
    }
    throw;
  }
  m.npending += n;
  b->pending_events = static_cast<decltype(b->pending_events)>(n);
}
}  // namespace

void DevicePool::free(void* p) {
  if (p == nullptr) return;
  Impl& m = *impl_;
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  const std::uint64_t fctx = free_context(m);
  std::lock_guard<SpinMutex> g(m.mu);
  detail::PtrMap::Entry* e = m.live.lookup(addr);
  Block* b = e != nullptr ? e->block : nullptr;
  if (b == nullptr || b->state != BlockState::kAllocated) throw_bad_pointer_locked("free", addr);
  if (b->uses != nullptr && !b->uses->empty()) record_free_events(m, b);
  const PoolKind k = b->seg->index->kind;
  Impl::sub(m.st.allocation, k, 1);
  Impl::sub(m.st.allocated_bytes, k, static_cast<std::int64_t>(b->size));
  Impl::sub(m.st.requested_bytes, k, static_cast<std::int64_t>(b->requested));
  if (b->oversize) m.st.oversize_allocations.sub(1);  // Note [Oversize stats]
  m.trace(TraceAction::kFreeRequested, b->addr, b->requested, b->stream, fctx != 0 ? fctx : b->context,
          b->seq);
  if (b->pending_events > 0) {
    b->state = BlockState::kPendingFree;
    return;
  }
  if (fctx != 0) b->context = fctx;  // for the free_completed entry return_block makes
  m.live.erase(e);  // the entry found above: one probe per free (Note [Pointer map])
  m.return_block(b);
}

void DevicePool::record_stream(void* p, Stream stream) {
  if (!record_stream_if_owned(p, stream)) {
    std::lock_guard<SpinMutex> g(impl_->mu);
    throw_bad_pointer_locked("record_stream", reinterpret_cast<std::uintptr_t>(p));
  }
}

bool DevicePool::record_stream_if_owned(void* p, Stream stream) {
  Impl& m = *impl_;
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  std::lock_guard<SpinMutex> g(m.mu);
  Block* b = m.live.find(addr);
  if (b == nullptr) {
    // Not live here: a foreign pointer unless it lies in one of our segments.
    for (const Segment* s = m.segs; s != nullptr; s = s->next)
      if (addr >= s->addr && addr < s->addr + s->size) throw_bad_pointer_locked("record_stream", addr);
    return false;
  }
  if (b->state != BlockState::kAllocated) throw_bad_pointer_locked("record_stream", addr);
  if (stream == b->stream) return true;
  if (b->uses == nullptr) b->uses = new std::vector<Stream>();
  if (std::find(b->uses->begin(), b->uses->end(), stream) == b->uses->end())
    b->uses->push_back(stream);
  return true;
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

// Note [Growth and release protocol]: every change of the pool's device footprint (a
// segment allocated or freed, granules mapped or unmapped) but two releases (below)
// happens under grow_mu, a blocking std::mutex held across the backend call, as PyTorch
// holds its allocator mutex across cudaMalloc/cudaFree. The spin lock `mu` is dropped
// for the backend call itself, so cache hits, frees and stats on every stream go on
// meanwhile; only threads that want to grow or release wait, and they park in the
// kernel instead of spinning. Consequences:
//   * a cap check (fits_cap) is only made under grow_mu, when no other growth is in
//     flight, and bytes being released still count in reserved() until the backend has
//     them back: a segment being released counts against the cap until then, because
//     no grower can look before grow_mu is released, and a tail being unmapped outside
//     grow_mu stays in Impl::detached;
//   * a thread that misses the cache and finds grow_mu taken waits for it, then
//     searches the cache again before it grows: the growth it waited for may serve it,
//     and it never declares out-of-memory while another thread's growth or release is
//     in flight (the retry, sync included, runs under grow_mu too);
//   * the release paths (empty_cache, release_all_cached, garbage collection, reclaim,
//     the OOM retry) all run with grow_mu held; waiting for record_stream events
//     (sync_pending_locked) needs neither lock held while it blocks. Two exceptions,
//     both from empty_cache and both waiting for a stream: its sync_pending_locked and
//     its shrink of expandable tails run without grow_mu
//     (Note [Shrink outside grow_mu]); they are counted (Impl::syncing,
//     Impl::shrinking, Impl::release_epoch) and the OOM retry waits for them and goes
//     round again.
// Lock order: grow_mu, then mu (a VMM claim, FreeIndex::vmm_busy, is taken under mu). mu
// is never held while blocking on grow_mu (malloc only try_locks it with mu held).
Block* DevicePool::grow_locked(std::unique_lock<SpinMutex>& lk, FreeIndex* idx,
                               std::size_t rounded, DeviceRoom& room) {
  Impl& m = *impl_;
  if (cfg_.expandable_segments && idx->kind == PoolKind::kLarge)
    return detail::vmm_grow(m, lk, idx, rounded, room);
  if (!room.fresh) {
    lk.unlock();
    room = DeviceRoom::ask(m.be);  // Note [Device pre-check]
    lk.lock();
  }
  room.fresh = false;  // the OOM retry's growth asks again
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
    // Exact under grow_mu: no other growth or release is in flight (Note [Growth and
    // release protocol]), so reserved() is what the device holds for this pool.
    if (!m.fits_cap(n) || !room.fits_free(n)) continue;
    void* p = nullptr;
    lk.unlock();
    try {
      p = m.be.allocate(n);
    } catch (...) {
      lk.lock();
      throw;
    }
    lk.lock();
    if (p == nullptr) continue;
    Segment* seg = m.add_segment(p, n, idx);
    return seg->first;  // not in the index: the caller serves from it directly
  }
  return nullptr;
}

void DevicePool::release_cached_locked(std::unique_lock<SpinMutex>& lk, bool respect_threshold,
                                       std::size_t reclaim, const FreeIndex* only,
                                       bool shrink_vmm) {
  // Caller holds grow_mu (Note [Growth and release protocol]): the segments detached
  // below stop counting in reserved() before the backend has them back, which is only
  // safe because no grower can check the cap until grow_mu is released.
  Impl& m = *impl_;
  if (m.npending != 0) m.process_events();
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
    // All of them in one go, and none if together they cannot cover the growth (Note
    // [Reclaim under pressure]: once under pressure, the next growths would reclaim the
    // rest one by one).
    std::size_t got = 0;
    for (const Segment* s : out) got += s->size;
    if (got < reclaim) out.clear();
  }
  for (Segment* s : out) {
    m.take_free(s->index, s->first);
    m.arena.put(s->first);
    s->first = nullptr;
    m.unlink_segment(s);
    Impl::sub(m.st.segment, s->kind, 1);
    Impl::sub(m.st.reserved_bytes, s->kind, static_cast<std::int64_t>(s->size));
    if (s->oversize) m.st.oversize_segments.sub(1);
    m.trace(TraceAction::kSegmentFree, s->addr, s->size, s->stream);
  }
  // Expandable segments unmap the granules inside their free blocks instead (Note [VMM holes]).
  if (cfg_.expandable_segments && reclaim == 0 && shrink_vmm)
    detail::vmm_shrink_all(m, lk, respect_threshold ? cfg_.release_threshold : 0);
  if (out.empty()) return;
  lk.unlock();
  std::int64_t freed = 0;
  for (Segment* s : out) {
    try {
      m.be.deallocate(reinterpret_cast<void*>(s->addr), s->size);
      ++freed;  // num_device_free counts frees the device did
    } catch (...) {
      // The segment is gone from the pool either way; a failing free means a broken
      // device, which the next allocation will report.
    }
    delete s;
  }
  lk.lock();
  m.st.num_device_free += freed;
}

void DevicePool::sync_pending_locked(std::unique_lock<SpinMutex>& lk) {
  Impl& m = *impl_;
  if (m.npending == 0) return;
  // Wait for the events of blocks freed after record_stream, as PyTorch's
  // release_cached_blocks does, without holding mu (Note [Locking rule]): the entries
  // are taken out of the FIFOs first, so no other thread's process_events queries or
  // releases these events meanwhile, and their blocks stay pending-free (untouchable)
  // until they are processed here with mu held again.
  struct Taken {
    Stream stream;
    Event ev;
    Block* b;
  };
  std::vector<Taken> taken;
  taken.reserve(m.npending);  // may throw bad_alloc: nothing has changed yet
  for (auto& f : m.fifos) {
    for (std::size_t i = f.head; i < f.q.size(); ++i)
      taken.push_back(Taken{f.stream, f.q[i].first, f.q[i].second});
    f.q.clear();
    f.head = 0;
  }
  m.npending = 0;
  ++m.st.num_sync_all_streams;
  ++m.syncing;  // a grower that finds no room waits for these (fallback_locked)
  lk.unlock();
  std::size_t synced = 0;
  std::exception_ptr err;
  try {
    for (; synced < taken.size(); ++synced) backend_->synchronize_event(taken[synced].ev);
  } catch (...) {
    err = std::current_exception();
  }
  lk.lock();
  for (std::size_t i = 0; i < synced; ++i) {
    Block* b = taken[i].b;
    if (--b->pending_events == 0) m.free_block(b);
    try {
      m.be.release_event(taken[i].ev);
    } catch (...) {
      if (!err) err = std::current_exception();
    }
  }
  if (synced < taken.size()) {
    // A synchronize failed (a broken device): the rest go back to their FIFOs. A
    // bad_alloc here leaves those blocks pending for good: memory not reused, never
    // memory reused early.
    try {
      for (std::size_t i = synced; i < taken.size(); ++i) {
        m.fifo_for(taken[i].stream).q.emplace_back(taken[i].ev, taken[i].b);
        ++m.npending;
      }
    } catch (...) {
    }
  }
  --m.syncing;
  m.released();  // notifies vmm_cv
  if (err) std::rethrow_exception(err);
}

void DevicePool::empty_cache() { release_cached(/*respect_threshold=*/true); }

void DevicePool::release_all_cached() { release_cached(/*respect_threshold=*/false); }

void DevicePool::release_cached(bool respect_threshold) {
  Impl& m = *impl_;
  // This thread's segment frees and unmaps carry the caller's stack (Note [Free stacks]).
  struct ReleaseContext {
    explicit ReleaseContext(std::uint64_t c) { Impl::release_context = c; }
    ~ReleaseContext() { Impl::release_context = 0; }
  } release_context(free_context(m));
  {
    std::unique_lock<SpinMutex> lk(m.mu);
    sync_pending_locked(lk);
  }
  // grow_mu before mu, held across the backend frees (Note [Growth and release protocol]).
  std::unique_lock<std::mutex> gk(m.grow_mu);
  std::unique_lock<SpinMutex> lk(m.mu);
  release_cached_locked(lk, respect_threshold, 0, nullptr, /*shrink_vmm=*/false);
  if (!cfg_.expandable_segments) return;
  // Note [Shrink outside grow_mu]: unmapping an expandable segment's tail first waits for
  // its stream's kernels (cuMemUnmap does not synchronize). Under grow_mu that wait
  // would hold up growth on every stream (bug: 250 ms seen). So the shrink runs with
  // grow_mu released: the per-index claim (FreeIndex::vmm_busy) keeps it apart from a
  // growth of the same segment, the tail keeps counting in reserved() until the device
  // has it back (Impl::detached), and a grower that finds no room while a shrink is in
  // flight waits for it before it declares out of memory (fallback_locked). A grower that
  // needs the claimed segment waits for the claim with grow_mu dropped, so other streams
  // grow meanwhile. empty_cache's wait for record_stream events (sync_pending_locked,
  // above) runs without grow_mu too, for the same reason. Both are counted
  // (Impl::shrinking, Impl::syncing) and bump Impl::release_epoch when they finish, so an
  // OOM retry that fails while one is in flight, or after one finished since it looked,
  // waits for it and goes round again.
  lk.unlock();
  gk.unlock();
  lk.lock();
  detail::vmm_shrink_all(m, lk, respect_threshold ? cfg_.release_threshold : 0);
}

Stats DevicePool::stats() const {
  std::lock_guard<SpinMutex> g(impl_->mu);
  Stats s = impl_->st.snapshot();
  s.max_pool_size = impl_->cap == Config::kUnlimited ? -1 : static_cast<std::int64_t>(impl_->cap);
  s.max_split_size = cfg_.max_split_size == Config::kUnlimited
                         ? -1
                         : static_cast<std::int64_t>(cfg_.max_split_size);
  return s;
}

void DevicePool::reset_peak_stats() {
  std::lock_guard<SpinMutex> g(impl_->mu);
  PoolStats& s = impl_->st;
#define PYPOOL_RESET_PEAK(name) s.name.reset_peak();
  PYPOOL_ARRAY_STATS(PYPOOL_RESET_PEAK)
  PYPOOL_SINGLE_STATS(PYPOOL_RESET_PEAK)
#undef PYPOOL_RESET_PEAK
}

void DevicePool::reset_accumulated_stats() {
  std::lock_guard<SpinMutex> g(impl_->mu);
  PoolStats& s = impl_->st;
#define PYPOOL_RESET_ACC(name) s.name.reset_accumulated();
  PYPOOL_ARRAY_STATS(PYPOOL_RESET_ACC)
  PYPOOL_SINGLE_STATS(PYPOOL_RESET_ACC)
#undef PYPOOL_RESET_ACC
#define PYPOOL_RESET_SCALAR(name) s.name = 0;
  PYPOOL_SCALAR_STATS(PYPOOL_RESET_SCALAR)
#undef PYPOOL_RESET_SCALAR
}

namespace {
BlockInfo info_of(const Block* b) {
  const bool is_free = b->state == BlockState::kFree;
  // A free block keeps the size last asked of it (Note [Last requested size]).
  return BlockInfo{b->addr,   b->size,        is_free ? 0 : b->requested, b->state,
                   b->stream, b->seq,         b->context,                 b->time_us,
                   is_free ? std::min(b->requested, b->size) : b->requested};
}
}  // namespace

std::vector<SegmentInfo> DevicePool::segments() const {
  std::lock_guard<SpinMutex> g(impl_->mu);
  std::vector<SegmentInfo> out;
  for (const Segment* s = impl_->segs; s != nullptr; s = s->next) {
    // Each mapped run of an expandable segment is listed on its own and holes are left
    // out, as PyTorch's snapshot does (Note [VMM holes]): every listed segment is tiled by
    // its blocks, and the sizes add up to the mapped bytes.
    SegmentInfo si{s->addr, 0, s->kind, s->stream, s->expandable, s->reserved_va, {}};
    for (const Block* b = s->first; b != nullptr; b = b->next) {
      if (b->state == detail::kHole) {
        if (!si.blocks.empty()) out.push_back(std::move(si));
        si = SegmentInfo{b->addr + b->size, 0, s->kind, s->stream, s->expandable, s->reserved_va, {}};
        continue;
      }
      si.size += b->size;
      si.blocks.push_back(info_of(b));
    }
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

Config DevicePool::config() const {
  std::lock_guard<SpinMutex> g(impl_->mu);
  return cfg_;
}

void DevicePool::check_update(const Config& next) const {
  next.validate();
  // Fixed fields are never written, so they are read here without a lock.
  const std::string fixed = cfg_.first_fixed_difference(next);
  if (!fixed.empty())
    throw std::invalid_argument("PoolConfig." + fixed +
                                ": cannot change while the pool is in use; it is fixed when a "
                                "pool is made");
}

void DevicePool::update_config(const Config& next) {
  Impl& m = *impl_;
  // The device total, asked before the locks are taken (as set_memory_fraction does) and
  // every time (whether a fraction applies is known only under them): the fraction is
  // applied under the locks, so concurrent updates cannot leave the cap of one and the
  // config of another.
  const std::size_t total = backend_->mem_info().total;
  // Both locks: a reader holds one or the other (grow paths may hold only grow_mu).
  std::lock_guard<std::mutex> gk(m.grow_mu);
  check_update(next);
  std::lock_guard<SpinMutex> g(m.mu);
  // A changed memory_fraction replaces the one in effect (0 clears it); a changed
  // max_pool_size keeps it (a fraction set by set_memory_fraction survives).
  double fraction = -1.0;
  if (next.memory_fraction != cfg_.memory_fraction)
    fraction = next.memory_fraction;
  else if (next.max_pool_size != cfg_.max_pool_size)
    fraction = m.fraction;
#define PYPOOL_TAKE_LIVE(f) cfg_.f = next.f;
  PYPOOL_LIVE_CONFIG_FIELDS(PYPOOL_TAKE_LIVE)
#undef PYPOOL_TAKE_LIVE
  m.set_rounding(cfg_);
  if (fraction >= 0.0) {
    // The cap as set_memory_fraction computes it.
    m.fraction = fraction > 0 ? fraction : 0.0;
    std::size_t c = cfg_.max_pool_size;
    if (fraction > 0) c = std::min(c, static_cast<std::size_t>(fraction * double(total)));
    m.cap = c;
  }
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
  Impl& m = *impl_;
  if (enabled && max_entries == 0) throw std::invalid_argument("max_entries must be > 0");
  if (enabled && max_entries > std::vector<TraceEntry>().max_size())
    throw std::invalid_argument("max_entries: " + std::to_string(max_entries) +
                                " entries are more than memory can hold");
  {
    std::lock_guard<SpinMutex> g(m.mu);
    if (enabled && m.history_on && m.ring.size() == max_entries) return;  // keep its events
  }
  // The new ring exists before history turns on, and is made without the lock: a
  // failure (std::bad_alloc) leaves history as it was. (History used to turn on first,
  // and the next allocation wrote into a ring that did not exist: SIGSEGV.)
  std::vector<TraceEntry> ring;
  if (enabled) ring.assign(max_entries, TraceEntry{});
  std::lock_guard<SpinMutex> g(m.mu);
  m.ring.swap(ring);  // the old ring is freed after the lock is dropped
  m.ring_next = m.ring_count = 0;
  m.history_on = enabled;
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

void DevicePool::set_capture_free_context(bool on) {
  std::lock_guard<SpinMutex> g(impl_->mu);
  impl_->capture_free_context = on;
  impl_->annotate_free.store(on, std::memory_order_relaxed);
}

// ============================================================================ invariants

void DevicePool::check_invariants() const {
  const Impl& m = *impl_;
  // The walk is O(B + F log F) for B blocks, F of them free: every free index is listed
  // once into a sorted vector that membership is looked up in (a scan of the block's bin
  // per free block was O(F^2): 617 ms under the spin lock with 30k free blocks in one
  // bin). grow_mu keeps growth and release out meanwhile; the vector is sized from the
  // free-block count with the spin lock released, and the walk retries if it grew.
  std::lock_guard<std::mutex> gk(m.grow_mu);
  std::vector<const Block*> indexed_blocks;
  std::unique_lock<SpinMutex> g(m.mu);
  for (;;) {
    std::size_t want = 0;
    for (const auto& idx : m.indexes) idx->for_each([&](const Block*) { ++want; });
    if (indexed_blocks.capacity() >= want) break;
    g.unlock();
    indexed_blocks.reserve(want + want / 4 + 16);
    g.lock();
  }
  for (const auto& idx : m.indexes) idx->for_each([&](const Block* b) { indexed_blocks.push_back(b); });
  std::sort(indexed_blocks.begin(), indexed_blocks.end());
  auto in_an_index = [&](const Block* b) {
    return std::binary_search(indexed_blocks.begin(), indexed_blocks.end(), b);
  };
  auto fail = [](const std::string& why) { throw InvariantError("pypool invariant violated: " + why); };
  // Recomputed from a walk into torch's [all, small, large] arrays, independently of the
  // per-kind bookkeeping (Note [Stats by kind]), and compared with its snapshot.
  auto add = [](StatArray& a, PoolKind k, std::int64_t n) {
    a[kStatAll].add(n);
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
    if (s->oversize) {
      if (s->expandable) fail("segment " + hex(s->addr) + ": expandable but counted as oversize");
      calc.oversize_segments.add(1);
    }
    add(calc.reserved_bytes, k, static_cast<std::int64_t>(s->mapped()));
    // Expandable: one handle per granule of the extent, 0 exactly in holes
    // (Note [VMM holes] in vmm.cpp).
    const std::size_t g = s->expandable ? m.be.vmm_granularity() : 0;
    if (s->expandable && (s->chunks == nullptr || s->size % g != 0 || s->chunks->size() != s->size / g))
      fail("expandable segment " + hex(s->addr) + ": handles do not cover its extent");
    std::size_t holes = 0;
    std::uintptr_t at = s->addr;
    for (const Block* b = s->first; b != nullptr; b = b->next) {
      // Formatted only on failure: a string per block was most of the walk's time.
      auto bad = [&](const char* why) {
        fail("block " + hex(b->addr) + " in segment " + hex(s->addr) + ": " + why);
      };
      if (b->seg != s) bad("wrong segment pointer");
      if (b->addr != at) bad("blocks do not tile the segment (gap or overlap)");
      if (b->size == 0 || b->size % m.cfg.min_block_size != 0) bad("bad size");
      if (b->next != nullptr && b->next->prev != b) bad("neighbour links broken");
      if (b->stream != s->stream) bad("stream differs from its segment's");
      at += b->size;
      const auto bs = static_cast<std::int64_t>(b->size);
      if (s->expandable) {
        // Every granule a block touches is mapped; none of a hole's is.
        const std::size_t i0 = (b->addr - s->addr) / g, i1 = (b->addr + b->size - s->addr + g - 1) / g;
        const bool hole = b->state == detail::kHole;
        for (std::size_t i = i0; i < std::min(i1, s->chunks->size()); ++i)
          if (((*s->chunks)[i] == 0) != hole) bad(hole ? "a granule of a hole is mapped" : "a granule of a block is not mapped");
      }
      if (b->state == detail::kHole) {
        if (!s->expandable) bad("a hole in a fixed segment");
        if ((b->addr - s->addr) % g != 0 || b->size % g != 0) bad("hole not granule aligned");
        if (b->next == nullptr) bad("a hole at the end of its segment (the extent should end before it)");
        if (b->next->state == detail::kHole) bad("two adjacent holes (not merged)");
        if (m.live.find(b->addr) == b || in_an_index(b)) bad("a hole in the live map or a free index");
        holes += b->size;
        continue;
      }
      if (b->state == BlockState::kFree) {
        ++free_blocks;
        if (b->next != nullptr && b->next->state == BlockState::kFree)
          bad("two adjacent free blocks (not coalesced)");
        if (m.live.find(b->addr) == b) bad("free block in the live map");
        if (b->bin != FreeIndex::bin_of(b->size) || !in_an_index(b))
          bad("free block not findable in its free index");
        if (b->is_split()) {
          add(calc.inactive_split, k, 1);
          add(calc.inactive_split_bytes, k, bs);
        }
      } else {
        ++live_blocks;
        if (m.live.find(b->addr) != b) bad("live block missing from the live map");
        if (b->state == BlockState::kAllocated) {
          if (b->requested == 0 || b->requested > b->size) bad("bad requested size");
          add(calc.allocation, k, 1);
          add(calc.allocated_bytes, k, bs);
          add(calc.requested_bytes, k, static_cast<std::int64_t>(b->requested));
          if (b->oversize) calc.oversize_allocations.add(1);
        } else if (b->pending_events == 0) {
          bad("pending-free block with no pending event");
        }
        add(calc.active, k, 1);
        add(calc.active_bytes, k, bs);
      }
    }
    if (at != s->addr + s->size) fail("segment " + hex(s->addr) + ": blocks do not add up to its size");
    if (holes != s->holes) fail("segment " + hex(s->addr) + ": its hole bytes disagree with its holes");
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
  // Reserved bytes that belong to no segment: unmaps in flight, quarantined ranges
  // (Note [Unmap failure] in vmm.cpp).
  for (int k = 0; k < kNumPoolKinds; ++k)
    add(calc.reserved_bytes, static_cast<PoolKind>(k), static_cast<std::int64_t>(m.detached[k]));
  if (m.live.size() != live_blocks) fail("live map holds blocks that are in no segment");
  for (int i = 0; i < kNumStatTypes; ++i) {
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
#define PYPOOL_CHECK_SINGLE(name)                                                         \
  if (calc.name.current != st.name.current)                                               \
    fail(std::string("stat " #name " is ") + std::to_string(st.name.current) +            \
         ", a walk gives " + std::to_string(calc.name.current));                          \
  if (st.name.peak < st.name.current || st.name.current < 0)                              \
    fail(std::string("stat " #name " peak/current out of order"));
  PYPOOL_SINGLE_STATS(PYPOOL_CHECK_SINGLE)
#undef PYPOOL_CHECK_SINGLE
}

}  // namespace pypool
