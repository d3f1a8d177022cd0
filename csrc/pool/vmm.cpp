// Expandable segments on virtual memory.
//
// Note [VMM segments]: with expandable_segments, each (stream, large pool) owns one
// segment: a large reserved virtual range whose prefix [addr, addr + size) is mapped to
// physical memory granule by granule. Growing maps more granules at the end (the free
// tail block grows in place, so blocks coalesce across everything ever mapped); release
// unmaps the granule-aligned part of a free tail. A segment that is reserved for one
// batch shape therefore never leaves unusable slivers when the next batch differs, which
// is where fixed segments lose memory.
//
// Mapping changes of one index's segment are serialized by FreeIndex::vmm_busy: a grow or
// shrink claims it under the pool lock, drops the lock for the backend calls (which may
// block), and gives it back under the lock; another thread that wants to change the same
// segment waits on vmm_cv (parked, not spinning), so no two threads map the same
// addresses. The claim is per (stream, large) index, not per pool, and a shrink holds it
// without grow_mu (Note [Shrink outside grow_mu]): a shrink waiting for its stream's
// kernels (below) holds up growth on that stream only, and a grower that finds its
// segment claimed waits with grow_mu dropped (fallback_locked), so no other stream's
// growth waits behind it (the per-pool lock this replaced made every stream wait: 250 ms
// seen). empty_cache skips a segment whose claim is held instead of waiting for it.
//
// Note [Unmap failure]: a tail being unmapped leaves its segment at once but stays in
// reserved_bytes (Impl::detached) until the device has it back, so it keeps counting
// against the cap meanwhile. Granules are unmapped from the end backwards, so what is
// still mapped after a failure (a failed wait for the stream, or a failed unmap) is one
// range starting at the old cut. That range is quarantined: it stays counted as reserved
// (the device holds it), it is never mapped again, and the segment is sealed: it keeps
// serving its blocks but no longer grows; the stream's next growth starts a new segment,
// and the old virtual range is released only at pool destruction, after one more try to
// unmap the quarantined granules. Before, a failure skipped every remaining unmap after
// the pool had stopped counting the bytes, and the next growth mapped the same addresses
// again ("pool reserved 4 MiB, device holds 24 MiB", then 10 double maps).
#include "pool_impl.h"

namespace pypool::detail {

namespace {

Block* last_block(Segment* s) {
  Block* b = s->first;
  if (b == nullptr) return nullptr;
  while (b->next != nullptr) b = b->next;
  return b;
}

// Maps [addr, addr + n) granule by granule into `out`, whose capacity the caller
// reserved. On failure unmaps what it mapped, last first, and returns false; if an unmap
// fails too, `out` keeps the granules still mapped (a range from addr) for the caller to
// quarantine. Called without the pool lock.
bool map_range(Backend& be, std::uintptr_t addr, std::size_t n, std::size_t g,
               std::vector<PhysHandle>& out) noexcept {
  for (std::size_t done = 0; done < n; done += g) {
    PhysHandle h = 0;
    try {
      h = be.vmm_map(reinterpret_cast<void*>(addr + done), g);
    } catch (...) {
      h = 0;
    }
    if (h == 0) {
      while (!out.empty()) {
        try {
          be.vmm_unmap(reinterpret_cast<void*>(addr + (out.size() - 1) * g), g, out.back());
        } catch (...) {
          return false;
        }
        out.pop_back();
      }
      return false;
    }
    out.push_back(h);  // capacity reserved: cannot throw
  }
  return true;
}

void wait_for_stream(Backend& be, Stream s) {
  const Event ev = be.record_event(s);
  try {
    be.synchronize_event(ev);
  } catch (...) {
    try {
      be.release_event(ev);
    } catch (...) {
    }
    throw;
  }
  be.release_event(ev);
}

// Holds idx->vmm_busy (Note [VMM segments]) from construction (lock held) to destruction,
// which retakes the lock if it was dropped.
class VmmClaim {
 public:
  VmmClaim(DevicePool::Impl& m, FreeIndex* idx, std::unique_lock<SpinMutex>& lk)
      : m_(m), idx_(idx), lk_(lk) {
    m_.vmm_cv.wait(lk_, [&] { return !idx_->vmm_busy; });
    idx_->vmm_busy = true;
  }
  ~VmmClaim() {
    if (!lk_.owns_lock()) lk_.lock();
    idx_->vmm_busy = false;
    m_.vmm_cv.notify_all();
  }
  VmmClaim(const VmmClaim&) = delete;
  VmmClaim& operator=(const VmmClaim&) = delete;

 private:
  DevicePool::Impl& m_;
  FreeIndex* idx_;
  std::unique_lock<SpinMutex>& lk_;
};

// Note [Quarantine room]: every grow or shrink in flight may add one quarantine entry
// when it finishes, inside noexcept code, so each reserves room for all of them before it
// drops the lock: the entries there are, one per shrink in flight (Impl::shrinking, which
// does not count the caller yet), one for a growth in flight (at most one, under
// grow_mu), and one for the caller. Shrinks run outside grow_mu (Note [Shrink outside
// grow_mu]), so two can be in flight; with room for one each, the second entry's
// push_back reallocated and a std::bad_alloc there was std::terminate.
std::size_t quarantine_room(const DevicePool::Impl& m) noexcept {
  return m.quarantine.size() + m.shrinking + 1 + 1;
}

// Lock held; capacity for one more entry in m.quarantine reserved (quarantine_room).
// `handles`: granules still mapped from `addr` on, already counted in reserved_bytes
// and in detached.
// `seg`: the segment the range was cut from (sealed here), or nullptr with the virtual
// range [va, va + va_size) it lies in, which the entry then owns.
void quarantine_locked(DevicePool::Impl& m, Segment* seg, std::uintptr_t addr,
                       std::vector<PhysHandle>&& handles, std::uintptr_t va,
                       std::size_t va_size) noexcept {
  Quarantined q;
  q.addr = addr;
  q.handles = std::move(handles);
  if (seg != nullptr) {
    if (!seg->sealed) {
      q.va = seg->addr;
      q.va_size = seg->reserved_va;
      seg->sealed = true;
    }
    if (seg->index->vmm_seg == seg) seg->index->vmm_seg = nullptr;
  } else {
    q.va = va;
    q.va_size = va_size;
  }
  m.quarantine.push_back(std::move(q));
}

}  // namespace

Block* vmm_grow(DevicePool::Impl& m, std::unique_lock<SpinMutex>& lk, FreeIndex* idx,
                std::size_t rounded, DeviceRoom& room) {
  const std::size_t g = m.be.vmm_granularity();
  VmmClaim claim(m, idx, lk);
  lk.unlock();
  // Asked before `need` is computed below, so a growth is never judged on pool state
  // older than the snapshot (Note [Device pre-check]).
  room = DeviceRoom::ask(m.be);
  lk.lock();
  auto fits = [&](std::size_t s) { return s >= rounded; };
  // Another thread may have grown the segment while we waited for the claim.
  if (Block* b = idx->find(rounded, fits)) {
    m.take_free(idx, b);
    return b;
  }
  Segment* s = idx->vmm_seg;
  Block* last = s != nullptr ? last_block(s) : nullptr;
  const std::size_t tail_free = (last != nullptr && last->state == BlockState::kFree) ? last->size : 0;
  const std::size_t need = policy::round_up(rounded - std::min(tail_free, rounded), g);
  const std::size_t va = s != nullptr ? s->reserved_va : policy::round_up(m.cfg.expandable_reserve, g);
  if (room.beyond_total(need)) {
    room.never = true;
    return nullptr;
  }
  if ((s != nullptr && s->size + need > s->reserved_va) || (s == nullptr && need > va)) {
    room.reserve_full = true;
    room.reserve_mapped = s != nullptr ? s->size : 0;
    room.reserve_total = va;
    room.reserve_need = need;
    return nullptr;
  }
  if (!m.fits_cap(need) || !room.fits_free(need)) return nullptr;

  // Every bookkeeping allocation before anything is mapped (Note [Exception safety]).
  const std::size_t k = need / g;
  std::unique_ptr<Segment> fresh;
  std::unique_ptr<std::vector<PhysHandle>> fresh_chunks;
  if (s == nullptr) {
    fresh = std::make_unique<Segment>();
    fresh_chunks = std::make_unique<std::vector<PhysHandle>>();
    fresh_chunks->reserve(k);
  } else {
    s->chunks->reserve(s->chunks->size() + k);
  }
  m.arena.reserve();
  m.quarantine.reserve(quarantine_room(m));
  std::vector<PhysHandle> handles;
  handles.reserve(k);

  lk.unlock();
  void* range = nullptr;
  std::uintptr_t at = 0;
  bool mapped = false;
  try {
    if (s == nullptr) range = m.be.vmm_reserve(va);
  } catch (...) {
    lk.lock();
    throw;
  }
  if (s != nullptr || range != nullptr) {
    at = s != nullptr ? s->addr + s->size : reinterpret_cast<std::uintptr_t>(range);
    mapped = map_range(m.be, at, need, g, handles);
    if (!mapped && range != nullptr && handles.empty()) {
      try {
        m.be.vmm_release_range(range, va);
      } catch (...) {
        // Address space only: nothing of the device's memory is lost.
      }
    }
  }
  lk.lock();
  if (!mapped) {
    if (!handles.empty()) {
      // The rollback of a failed growth could not unmap these (Note [Unmap failure]).
      const PoolKind kind = idx->kind;
      const auto bytes = static_cast<std::int64_t>(handles.size() * g);
      DevicePool::Impl::add(m.st.reserved_bytes, kind, bytes);
      m.detached[static_cast<int>(kind)] += handles.size() * g;
      quarantine_locked(m, s, at, std::move(handles), reinterpret_cast<std::uintptr_t>(range), va);
    }
    return nullptr;
  }

  if (s == nullptr) {
    s = fresh.release();
    s->addr = at;
    s->size = 0;
    s->index = idx;
    s->kind = idx->kind;
    s->stream = idx->stream;
    s->expandable = true;
    s->reserved_va = va;
    s->chunks = fresh_chunks.release();
    s->next = m.segs;
    if (m.segs != nullptr) m.segs->prev = s;
    m.segs = s;
    idx->vmm_seg = s;
    DevicePool::Impl::add(m.st.segment, s->kind, 1);
    ++m.st.num_device_alloc;
    m.trace(TraceAction::kSegmentAlloc, s->addr, va, s->stream);
  }
  s->chunks->insert(s->chunks->end(), handles.begin(), handles.end());  // reserved above
  s->size += need;
  DevicePool::Impl::add(m.st.reserved_bytes, s->kind, static_cast<std::int64_t>(need));
  ++m.st.num_segment_map;
  m.trace(TraceAction::kSegmentMap, at, need, s->stream);

  last = last_block(s);
  if (last != nullptr && last->state == BlockState::kFree) {
    m.take_free(idx, last);
    last->size += need;
    m.put_free(idx, last);
  } else {
    Block* nb = m.arena.get();  // reserved above
    nb->addr = at;
    nb->size = need;
    nb->seg = s;
    nb->stream = s->stream;
    nb->prev = last;
    if (last != nullptr) last->next = nb;
    else s->first = nb;
    m.put_free(idx, nb);
  }
  Block* b = idx->find(rounded, fits);
  if (b != nullptr) m.take_free(idx, b);
  return b;
}

namespace {

bool in_list(const DevicePool::Impl& m, const Segment* target) {
  for (const Segment* s = m.segs; s != nullptr; s = s->next)
    if (s == target) return true;
  return false;
}

// Unmaps the free tail of s beyond what `keep` bytes of cache allow. Lock held on entry
// and on return; dropped while the backend works. Does nothing if the tail is not free, a
// grow or shrink of s's index is in flight, or a bookkeeping allocation fails.
void shrink_one(DevicePool::Impl& m, std::unique_lock<SpinMutex>& lk, Segment* s, std::size_t g,
                std::size_t keep) noexcept {
  Block* last = last_block(s);
  FreeIndex* idx = s->index;
  if (last == nullptr || last->state != BlockState::kFree || idx->vmm_busy) return;
  const std::uintptr_t end = s->addr + s->size;
  std::uintptr_t cut = s->addr + policy::round_up(last->addr - s->addr, g);
  if (keep > 0) {
    const std::size_t cached = m.free_summary().second;
    const std::size_t spare = cached > keep ? (cached - keep) / g * g : 0;
    cut = std::max(cut, end - std::min(spare, end - cut));
  }
  if (cut >= end) return;
  const std::size_t n = end - cut;
  const std::size_t k = n / g;
  std::vector<PhysHandle> handles;  // granules from cut on, still mapped
  try {
    handles.assign(s->chunks->end() - static_cast<std::ptrdiff_t>(k), s->chunks->end());
    m.quarantine.reserve(quarantine_room(m));
  } catch (...) {
    return;  // s stays as it is (Note [Exception safety])
  }
  // Detach the tail; nothing below allocates.
  idx->vmm_busy = true;
  ++m.shrinking;
  m.take_free(idx, last);
  if (cut == last->addr) {
    if (last->prev != nullptr) last->prev->next = nullptr;
    else s->first = nullptr;
    m.arena.put(last);
  } else {
    last->size = cut - last->addr;
    m.put_free(idx, last);
  }
  s->chunks->resize(s->chunks->size() - k);
  s->size -= n;
  m.detached[static_cast<int>(s->kind)] += n;  // still reserved (Note [Unmap failure])
  m.trace(TraceAction::kSegmentUnmap, cut, n, s->stream);
  const bool whole = s->size == 0;
  if (whole) {
    m.unlink_segment(s);
    if (idx->vmm_seg == s) idx->vmm_seg = nullptr;
    DevicePool::Impl::sub(m.st.segment, s->kind, 1);
    m.trace(TraceAction::kSegmentFree, s->addr, s->reserved_va, s->stream);
  }

  lk.unlock();
  bool failed = false;
  std::size_t unmapped = 0;
  try {
    // Unlike cuMemFree, cuMemUnmap/cuMemRelease do not synchronize: kernels queued on
    // the segment's stream may still use the freed tail, so wait for that stream (other
    // streams' uses are covered by record_stream events).
    wait_for_stream(m.be, s->stream);
  } catch (...) {
    failed = true;
  }
  while (!failed && !handles.empty()) {
    const std::size_t i = handles.size() - 1;
    try {
      m.be.vmm_unmap(reinterpret_cast<void*>(cut + i * g), g, handles[i]);
      handles.pop_back();
      unmapped += g;
    } catch (...) {
      failed = true;
    }
  }
  // s->sealed changes only under idx's claim, which this thread holds.
  if (whole && !failed && !s->sealed) {
    try {
      m.be.vmm_release_range(reinterpret_cast<void*>(s->addr), s->reserved_va);
    } catch (...) {
      // Address space only: nothing of the device's memory is lost.
    }
  }
  lk.lock();
  DevicePool::Impl::sub(m.st.reserved_bytes, s->kind, static_cast<std::int64_t>(unmapped));
  m.detached[static_cast<int>(s->kind)] -= unmapped;
  if (unmapped > 0) ++m.st.num_segment_unmap;
  if (failed) quarantine_locked(m, s, cut, std::move(handles), 0, 0);
  if (whole) {
    if (!failed) ++m.st.num_device_free;
    delete s->chunks;
    delete s;
  }
  idx->vmm_busy = false;
  --m.shrinking;
  m.released();  // notifies vmm_cv
}

}  // namespace

void vmm_shrink_all(DevicePool::Impl& m, std::unique_lock<SpinMutex>& lk, std::size_t keep) noexcept {
  std::size_t g = 0;
  std::vector<Segment*> candidates;
  try {
    g = m.be.vmm_granularity();
    for (Segment* s = m.segs; s != nullptr; s = s->next)
      if (s->expandable) candidates.push_back(s);
  } catch (...) {
    return;
  }
  // One segment at a time, each claimed only while its own tail is unmapped: waiting for
  // one stream's kernels holds up no other stream's growth (Note [VMM segments]). The
  // lock is dropped in between, so each candidate is looked up again (another thread may
  // have released it).
  for (Segment* s : candidates)
    if (in_list(m, s)) shrink_one(m, lk, s, g, keep);
}

void vmm_destroy(Backend& be, Segment* s) noexcept {
  std::size_t g = 0;
  try {
    g = be.vmm_granularity();
    wait_for_stream(be, s->stream);
  } catch (...) {
  }
  for (std::size_t i = g == 0 ? 0 : s->chunks->size(); i-- > 0;) {
    try {
      be.vmm_unmap(reinterpret_cast<void*>(s->addr + i * g), g, (*s->chunks)[i]);
    } catch (...) {
    }
  }
  // A sealed segment's range is released with its quarantine, after those granules.
  if (!s->sealed) {
    try {
      be.vmm_release_range(reinterpret_cast<void*>(s->addr), s->reserved_va);
    } catch (...) {
    }
  }
  delete s->chunks;
  s->chunks = nullptr;
}

void vmm_destroy_quarantine(DevicePool::Impl& m) noexcept {
  std::size_t g = 0;
  try {
    g = m.be.vmm_granularity();
  } catch (...) {
    return;
  }
  bool all = true;
  for (Quarantined& q : m.quarantine) {
    for (std::size_t i = q.handles.size(); i-- > 0;) {
      try {
        m.be.vmm_unmap(reinterpret_cast<void*>(q.addr + i * g), g, q.handles[i]);
      } catch (...) {
        all = false;
      }
    }
  }
  // Unmapping memory that is still mapped inside a range it releases is an error on
  // CUDA: release the ranges only when every granule went.
  for (Quarantined& q : m.quarantine) {
    if (!all || q.va_size == 0) continue;
    try {
      m.be.vmm_release_range(reinterpret_cast<void*>(q.va), q.va_size);
    } catch (...) {
    }
  }
  m.quarantine.clear();
}

}  // namespace pypool::detail
