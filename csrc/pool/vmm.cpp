// Expandable segments on virtual memory.
//
// Note [VMM segments]: with expandable_segments, each (stream, large pool) owns one
// segment: a large reserved virtual range whose prefix [addr, addr + size) is tiled by
// its blocks and mapped to physical memory granule by granule, but for its holes
// (Note [VMM holes]). Growing maps more granules at the end (the free tail block grows in
// place, so blocks coalesce across everything ever mapped) or inside a hole; release
// unmaps the granule-aligned part of free blocks. A segment that is reserved for one
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
// Note [VMM holes]: a release (empty_cache with no release_threshold, release_all_cached,
// and malloc's release-and-retry when growth fails) unmaps the granule-aligned interior
// of EVERY free block of an expandable segment, not only of its free tail, as PyTorch's
// expandable segments do: before, a free range in the middle stayed mapped while the
// tail grew past it for a request it was a little too small for (recorded GPT training
// needed 1.093x its live peak in expandable mode, more than the default mode's 1.057x).
// An unmapped range is a block of its own, state kHole (block.h): it keeps its place in
// the segment's address-ordered block list, so blocks still tile [addr, addr + size),
// but it is in no free index and the live map, holes are never adjacent (they merge),
// and a hole at the end is cut off (the segment's size, its extent, shrinks). Its
// granules' entries in Segment::chunks are 0; Segment::holes counts its bytes, so mapped
// bytes are size - holes and reserved == the sum of mapped bytes + detached, exactly.
// Growth (vmm_grow) looks for the cheapest place for a request: the free tail plus new
// granules at the end, or a hole whose free neighbours together with (a part of) it
// hold the request; of a hole it maps only the granules needed next to the neighbour
// that makes up the rest (from its start or its end), or all of it, and the mapped part
// coalesces with the free neighbours. A shrink splits each free block into its mapped
// edges (which stay free) and the hole, all under the claim with the lock held, before
// it drops the lock to unmap; a growth maps a hole's granules with the claim held, so
// neither ever sees another thread's half-made hole. Snapshots (DevicePool::segments)
// leave holes out: a segment's total_size is its mapped bytes and its blocks are the
// mapped ones, as PyTorch's snapshot leaves unmapped pages out.
//
// Note [Unmap failure]: granules being unmapped leave their segment (a hole, or the cut
// tail) at once but stay in reserved_bytes (Impl::detached) until the device has them
// back, so they keep counting against the cap meanwhile. Each cut range is unmapped from
// its end backwards, and cuts one after the other, so what is still mapped after a
// failure (a failed wait for the stream, or a failed unmap) is, per cut, one range
// starting where the cut starts. Those ranges are quarantined: they stay counted as
// reserved (the device holds them), they are never mapped again, and the segment is
// sealed: it keeps serving its blocks but no longer grows (at the tail or in a hole);
// the stream's next growth starts a new segment, and the old virtual range is released
// only at pool destruction, after one more try to unmap the quarantined granules.
// Before, a failure skipped every remaining unmap after the pool had stopped counting
// the bytes, and the next growth mapped the same addresses again ("pool reserved 4 MiB,
// device holds 24 MiB", then 10 double maps).
//
// Note [Growth meets a cache hit]: a growth maps only what the free block it extends
// lacks (the free tail, or a hole's free neighbour), and it maps with the lock dropped,
// so another thread's cache hit (which needs neither the claim nor grow_mu) may take
// that block meanwhile. The new granules alone are then too small. vmm_grow goes round
// again, claim still held, and picks the cheapest place afresh: at the tail that extends
// the new granules; after a hole's neighbour was taken it may be the tail instead, and the
// granules just mapped stay as free cache (a release gives them back). Before, it
// returned nothing, and malloc went to the OOM retry, which flushed every stream's
// cache, and reported out of memory when the same race hit the retry's growth (CI: "Tried
// to allocate 11.01 MiB ... 79.42 GiB is free", 4 threads on one expandable segment).
// Making the hit wait for the mapping instead would put a cache hit behind a driver call.
// Each round maps at least one granule and nothing unmaps them while the claim is held, so
// the rounds end: the request fits, or the cap, the device, the reserved address range or
// a failed map refuses the next round as it would a first one.
#include "pool_impl.h"

namespace pypool::detail {

namespace {

Block* last_block(Segment* s) {
  Block* b = s->first;
  if (b == nullptr) return nullptr;
  while (b->next != nullptr) b = b->next;
  return b;
}

std::size_t granule_of(const Segment* s, std::uintptr_t a, std::size_t g) noexcept {
  return (a - s->addr) / g;
}

void link_before(Segment* s, Block* at, Block* nb) noexcept {
  nb->prev = at->prev;
  nb->next = at;
  if (at->prev != nullptr) at->prev->next = nb;
  else s->first = nb;
  at->prev = nb;
}

void link_after(Block* at, Block* nb) noexcept {
  nb->prev = at;
  nb->next = at->next;
  if (at->next != nullptr) at->next->prev = nb;
  at->next = nb;
}

// Unlinks b (no free-indexed block) and returns it to the arena. A free neighbour is
// indexed again, since it may stop being split (Impl::put_free's split stats).
void drop_block(DevicePool::Impl& m, Segment* s, Block* b) noexcept {
  FreeIndex* idx = s->index;
  Block* around[2] = {b->prev, b->next};
  for (Block* x : around)
    if (x != nullptr && x->state == BlockState::kFree) m.take_free(idx, x);
  if (b->prev != nullptr) b->prev->next = b->next;
  else s->first = b->next;
  if (b->next != nullptr) b->next->prev = b->prev;
  for (Block* x : around)
    if (x != nullptr && x->state == BlockState::kFree) m.put_free(idx, x);
  m.arena.put(b);
}

// b: free, linked, in no index. Coalesces it with its free neighbours and indexes the
// result.
void coalesce_and_put(DevicePool::Impl& m, FreeIndex* idx, Block* b) noexcept {
  if (b->prev != nullptr && b->prev->state == BlockState::kFree) {
    Block* p = b->prev;
    m.take_free(idx, p);
    p->size += b->size;
    p->next = b->next;
    if (b->next != nullptr) b->next->prev = p;
    m.arena.put(b);
    b = p;
  }
  if (b->next != nullptr && b->next->state == BlockState::kFree) {
    Block* n = b->next;
    m.take_free(idx, n);
    b->size += n->size;
    b->next = n->next;
    if (n->next != nullptr) n->next->prev = b;
    m.arena.put(n);
  }
  m.put_free(idx, b);
}

// h: a hole. Merges it with a hole neighbour on either side (holes are never adjacent
// otherwise); returns the merged hole.
Block* merge_holes(DevicePool::Impl& m, Block* h) noexcept {
  if (h->prev != nullptr && h->prev->state == kHole) {
    Block* q = h->prev;
    q->size += h->size;
    q->next = h->next;
    if (h->next != nullptr) h->next->prev = q;
    m.arena.put(h);
    h = q;
  }
  if (h->next != nullptr && h->next->state == kHole) {
    Block* q = h->next;
    h->size += q->size;
    h->next = q->next;
    if (q->next != nullptr) q->next->prev = h;
    m.arena.put(q);
  }
  return h;
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

// Note [Quarantine room]: every grow or shrink in flight may add quarantine entries when
// it finishes, inside noexcept code (a growth one, a shrink one per range it cuts), so
// each reserves room for all of them before it drops the lock: the entries there are,
// those the operations in flight may still add (Impl::quarantine_owed), and the caller's
// own, which it then adds to quarantine_owed until it finishes. Shrinks run outside
// grow_mu (Note [Shrink outside grow_mu]), so two can be in flight; with room for one
// each, the second entry's push_back reallocated and a std::bad_alloc there was
// std::terminate.
std::size_t quarantine_room(const DevicePool::Impl& m, std::size_t mine) noexcept {
  return m.quarantine.size() + m.quarantine_owed + mine;
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
  // Round again while a cache hit takes what the last mapping was to extend
  // (Note [Growth meets a cache hit]).
  for (;;) {
    // Another thread may have grown the segment while we waited for the claim, or freed a
    // block since the last round. Exhaustive: a free tail missed here would make `need` 0 below.
    if (Block* b = idx->find(rounded, fits, /*exhaustive=*/true)) {
      m.take_free(idx, b);
      return b;
    }
    Segment* s = idx->vmm_seg;
    Block* last = s != nullptr ? last_block(s) : nullptr;
    const std::size_t tail_free = (last != nullptr && last->state == BlockState::kFree) ? last->size : 0;
    const std::size_t tail_need = policy::round_up(rounded - std::min(tail_free, rounded), g);
    const std::size_t va = s != nullptr ? s->reserved_va : policy::round_up(m.cfg.expandable_reserve, g);
    const bool tail_fits_va = s != nullptr ? s->size + tail_need <= s->reserved_va : tail_need <= va;
    // The cheapest place (Note [VMM holes]): a hole if it needs no more granules than the
    // tail (a hole costs no address space), else the tail.
    Block* hole = nullptr;
    std::uintptr_t at = 0;
    std::size_t need = tail_fits_va ? tail_need : SIZE_MAX;
    // O(blocks of the segment), only on growth and only while it has holes.
    for (Block* h = s != nullptr && s->holes > 0 ? s->first : nullptr; h != nullptr; h = h->next) {
      if (h->state != kHole) continue;
      const std::size_t left = h->prev != nullptr && h->prev->state == BlockState::kFree ? h->prev->size : 0;
      const std::size_t right = h->next != nullptr && h->next->state == BlockState::kFree ? h->next->size : 0;
      if (left + h->size + right < rounded) continue;
      auto consider = [&](std::size_t n, std::uintptr_t a) {
        if (n > 0 && (n < need || (hole == nullptr && n == need))) {
          need = n;
          at = a;
          hole = h;
        }
      };
      const std::size_t from_start = policy::round_up(rounded - std::min(left, rounded), g);
      const std::size_t from_end = policy::round_up(rounded - std::min(right, rounded), g);
      if (from_start < h->size) consider(from_start, h->addr);
      if (from_end < h->size) consider(from_end, h->addr + h->size - from_end);
      consider(h->size, h->addr);
    }
    if (hole == nullptr) need = tail_need;
    if (need == 0) return nullptr;  // unreachable (the search above is exhaustive); never a loop
    if (room.beyond_total(need)) {
      room.never = true;
      return nullptr;
    }
    if (hole == nullptr && !tail_fits_va) {
      room.reserve_full = true;
      room.reserve_mapped = s != nullptr ? s->size : 0;  // its extent: holes included
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
    } else if (hole == nullptr) {
      s->chunks->reserve(s->chunks->size() + k);
    }
    m.arena.reserve();
    m.quarantine.reserve(quarantine_room(m, 1));
    std::vector<PhysHandle> handles;
    handles.reserve(k);

    ++m.quarantine_owed;
    lk.unlock();
    void* range = nullptr;
    bool mapped = false;
    try {
      if (s == nullptr) range = m.be.vmm_reserve(va);
    } catch (...) {
      lk.lock();
      --m.quarantine_owed;
      throw;
    }
    if (s != nullptr || range != nullptr) {
      if (hole == nullptr) at = s != nullptr ? s->addr + s->size : reinterpret_cast<std::uintptr_t>(range);
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
    --m.quarantine_owed;
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
    DevicePool::Impl::add(m.st.reserved_bytes, s->kind, static_cast<std::int64_t>(need));
    ++m.st.num_segment_map;
    m.trace(TraceAction::kSegmentMap, at, need, s->stream);

    if (hole != nullptr) {
      // The hole is as it was: holes change only under the claim, which this thread holds.
      std::copy(handles.begin(), handles.end(), s->chunks->begin() + static_cast<std::ptrdiff_t>(granule_of(s, at, g)));
      s->holes -= need;
      Block* nb = hole;
      if (need < hole->size) {
        nb = m.arena.get();  // reserved above
        nb->addr = at;
        nb->size = need;
        nb->seg = s;
        nb->stream = s->stream;
        if (at == hole->addr) {
          link_before(s, hole, nb);
          hole->addr += need;
        } else {
          link_after(hole, nb);
        }
        hole->size -= need;
      }
      nb->state = BlockState::kFree;
      coalesce_and_put(m, idx, nb);
    } else {
      s->chunks->insert(s->chunks->end(), handles.begin(), handles.end());  // reserved above
      s->size += need;
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
    }
    // The device has `need` fewer bytes free than when it was asked.
    room.mem.free -= std::min(room.mem.free, need);
  }  // for (;;)
}

namespace {

bool in_list(const DevicePool::Impl& m, const Segment* target) {
  for (const Segment* s = m.segs; s != nullptr; s = s->next)
    if (s == target) return true;
  return false;
}

// One range a shrink unmaps: granules from lo on, still mapped.
struct Cut {
  std::uintptr_t lo = 0;
  std::vector<PhysHandle> handles;
};

// Unmaps the granule-aligned interior of s's free blocks (Note [VMM holes]); with `keep`
// > 0 (release_threshold), only the free tail beyond what `keep` bytes of cache allow,
// walking back across holes (one call cuts what repeated calls would).
// Lock held on entry and on return; dropped while the backend works. Does nothing if a
// grow or shrink of s's index is in flight, or a bookkeeping allocation fails.
void shrink_one(DevicePool::Impl& m, std::unique_lock<SpinMutex>& lk, Segment* s, std::size_t g,
                std::size_t keep) noexcept {
  FreeIndex* idx = s->index;
  if (idx->vmm_busy) return;
  auto up = [&](std::uintptr_t a) { return s->addr + policy::round_up(a - s->addr, g); };
  auto down = [&](std::uintptr_t a) { return s->addr + (a - s->addr) / g * g; };
  struct Plan {
    Block* b;
    std::uintptr_t lo, hi;
  };
  std::vector<Plan> plan;
  std::vector<Cut> cuts;
  try {
    if (keep > 0) {
      // Cut the free tail; when a whole free block goes and a hole lies before it, the
      // free block before that hole becomes the tail once the trailing hole is dropped:
      // walk on while spare bytes remain, so one call reaches what a repeat would.
      const std::size_t cached = m.free_summary().second;
      std::size_t spare = cached > keep ? (cached - keep) / g * g : 0;
      Block* b = last_block(s);
      while (spare > 0 && b != nullptr && b->state == BlockState::kFree) {
        const std::uintptr_t end = b->addr + b->size;
        const std::uintptr_t hi = down(end);
        const std::uintptr_t lo = std::max(up(b->addr), hi - std::min(spare, hi - std::min(up(b->addr), hi)));
        if (lo >= hi) break;
        plan.push_back(Plan{b, lo, hi});
        spare -= hi - lo;
        // Go on only if nothing mapped stays behind this cut.
        if (lo != b->addr || hi != end || b->prev == nullptr || b->prev->state != kHole) break;
        b = b->prev->prev;
      }
    } else {
      for (Block* b = s->first; b != nullptr; b = b->next) {
        if (b->state != BlockState::kFree) continue;
        const std::uintptr_t lo = up(b->addr), hi = down(b->addr + b->size);
        if (lo < hi) plan.push_back(Plan{b, lo, hi});
      }
    }
    if (plan.empty()) return;
    cuts.resize(plan.size());
    for (std::size_t i = 0; i < plan.size(); ++i) {
      cuts[i].lo = plan[i].lo;
      cuts[i].handles.assign(s->chunks->begin() + static_cast<std::ptrdiff_t>(granule_of(s, plan[i].lo, g)),
                             s->chunks->begin() + static_cast<std::ptrdiff_t>(granule_of(s, plan[i].hi, g)));
    }
    m.arena.reserve(2 * plan.size());
    m.quarantine.reserve(quarantine_room(m, plan.size()));
  } catch (...) {
    return;  // s stays as it is (Note [Exception safety])
  }
  // Detach the cut ranges; nothing below allocates.
  idx->vmm_busy = true;
  ++m.shrinking;
  m.quarantine_owed += plan.size();
  std::size_t cut_bytes = 0;
  for (const Plan& p : plan) {
    Block* b = p.b;
    const std::uintptr_t end = b->addr + b->size;
    m.take_free(idx, b);
    if (p.hi < end) {  // the mapped right edge stays free
      Block* r = m.arena.get();  // reserved above
      r->addr = p.hi;
      r->size = end - p.hi;
      r->seg = s;
      r->stream = b->stream;
      link_after(b, r);
      b->size = p.hi - b->addr;
      m.put_free(idx, r);
    }
    Block* h = b;
    if (p.lo > b->addr) {  // so does the left edge
      h = m.arena.get();  // reserved above
      h->addr = p.lo;
      h->size = p.hi - p.lo;
      h->seg = s;
      h->stream = b->stream;
      link_after(b, h);
      b->size = p.lo - b->addr;
      m.put_free(idx, b);
    }
    h->state = kHole;
    merge_holes(m, h);
    std::fill(s->chunks->begin() + static_cast<std::ptrdiff_t>(granule_of(s, p.lo, g)),
              s->chunks->begin() + static_cast<std::ptrdiff_t>(granule_of(s, p.hi, g)), PhysHandle{0});
    s->holes += p.hi - p.lo;
    cut_bytes += p.hi - p.lo;
    m.trace(TraceAction::kSegmentUnmap, p.lo, p.hi - p.lo, s->stream);
  }
  // A hole at the end leaves the segment: its extent shrinks (holes never touch).
  if (Block* last = last_block(s); last->state == kHole) {
    s->size -= last->size;
    s->holes -= last->size;
    drop_block(m, s, last);
    s->chunks->resize(s->size / g);  // shrinks: no allocation
  }
  m.detached[static_cast<int>(s->kind)] += cut_bytes;  // still reserved (Note [Unmap failure])
  const bool whole = s->first == nullptr;
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
    // the segment's stream may still use the freed ranges, so wait for that stream
    // (other streams' uses are covered by record_stream events).
    wait_for_stream(m.be, s->stream);
  } catch (...) {
    failed = true;
  }
  for (Cut& c : cuts) {
    while (!failed && !c.handles.empty()) {
      const std::size_t i = c.handles.size() - 1;
      try {
        m.be.vmm_unmap(reinterpret_cast<void*>(c.lo + i * g), g, c.handles[i]);
        c.handles.pop_back();
        unmapped += g;
      } catch (...) {
        failed = true;
      }
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
  if (unmapped > 0) ++m.st.num_segment_unmap;  // one per shrink: one wait for the stream
  if (failed) {
    for (Cut& c : cuts)
      if (!c.handles.empty()) quarantine_locked(m, s, c.lo, std::move(c.handles), 0, 0);
  }
  m.quarantine_owed -= plan.size();
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
  // One segment at a time, each claimed only while its own ranges are unmapped: waiting for
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
    if ((*s->chunks)[i] == 0) continue;  // in a hole (Note [VMM holes])
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
