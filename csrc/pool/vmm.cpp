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
// Mapping changes are serialized by vmm_mu, taken before the pool mutex (never while
// holding it), so a grower can drop the pool mutex across the backend calls (which may
// block) without another thread mapping the same addresses.
#include "pool_impl.h"

namespace pypool::detail {

namespace {

Block* last_block(Segment* s) {
  Block* b = s->first;
  if (b == nullptr) return nullptr;
  while (b->next != nullptr) b = b->next;
  return b;
}

// Maps [addr, addr + n) granule by granule into `out`; on failure unmaps what it mapped
// and returns false. Called without the pool mutex.
bool map_range(Backend& be, std::uintptr_t addr, std::size_t n, std::size_t g,
               std::vector<PhysHandle>& out) {
  for (std::size_t done = 0; done < n; done += g) {
    PhysHandle h = 0;
    try {
      h = be.vmm_map(reinterpret_cast<void*>(addr + done), g);
    } catch (...) {
      h = 0;
    }
    if (h == 0) {
      for (std::size_t i = 0; i < out.size(); ++i)
        be.vmm_unmap(reinterpret_cast<void*>(addr + i * g), g, out[i]);
      out.clear();
      return false;
    }
    out.push_back(h);
  }
  return true;
}

void wait_for_stream(Backend& be, Stream s) {
  const Event ev = be.record_event(s);
  be.synchronize_event(ev);
  be.release_event(ev);
}

}  // namespace

Block* vmm_grow(DevicePool::Impl& m, std::unique_lock<SpinMutex>& lk, FreeIndex* idx,
                std::size_t rounded, DeviceRoom& room) {
  const std::size_t g = m.be.vmm_granularity();
  lk.unlock();
  std::lock_guard<std::mutex> vg(m.vmm_mu);
  // Asked before `need` is computed below, so a growth is never judged on pool state
  // older than the snapshot (Note [Device pre-check]).
  room = DeviceRoom::ask(m.be);
  lk.lock();
  auto fits = [&](std::size_t s) { return s >= rounded; };
  // Another thread may have grown the segment while we waited for vmm_mu.
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

  m.inflight += need;
  lk.unlock();
  void* range = nullptr;
  std::uintptr_t at = 0;
  std::vector<PhysHandle> handles;
  bool mapped = false;
  try {
    if (s == nullptr) range = m.be.vmm_reserve(va);
    if (s != nullptr || range != nullptr) {
      at = s != nullptr ? s->addr + s->size : reinterpret_cast<std::uintptr_t>(range);
      mapped = map_range(m.be, at, need, g, handles);
      if (!mapped && range != nullptr) m.be.vmm_release_range(range, va);
    }
  } catch (...) {
    lk.lock();
    m.inflight -= need;
    throw;
  }
  lk.lock();
  m.inflight -= need;
  if (!mapped) return nullptr;

  if (s == nullptr) {
    s = new Segment();
    s->addr = at;
    s->size = 0;
    s->index = idx;
    s->kind = idx->kind;
    s->stream = idx->stream;
    s->expandable = true;
    s->reserved_va = va;
    s->chunks = new std::vector<PhysHandle>();
    s->next = m.segs;
    if (m.segs != nullptr) m.segs->prev = s;
    m.segs = s;
    idx->vmm_seg = s;
    DevicePool::Impl::add(m.st.segment, s->kind, 1);
    ++m.st.num_device_alloc;
    m.trace(TraceAction::kSegmentAlloc, s->addr, va, s->stream);
  }
  s->chunks->insert(s->chunks->end(), handles.begin(), handles.end());
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
    Block* nb = m.arena.get();
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

void vmm_shrink_all(DevicePool::Impl& m, std::unique_lock<SpinMutex>& lk, std::size_t keep) {
  const std::size_t g = m.be.vmm_granularity();
  lk.unlock();
  std::lock_guard<std::mutex> vg(m.vmm_mu);
  lk.lock();
  struct Cut {
    Segment* seg;
    std::uintptr_t addr;
    std::size_t size;
    std::vector<PhysHandle> handles;
    bool whole;
  };
  std::vector<Cut> cuts;
  std::size_t cached = m.free_summary().second;
  for (Segment* s = m.segs; s != nullptr;) {
    Segment* next = s->next;
    Block* last = s->expandable ? last_block(s) : nullptr;
    if (last == nullptr || last->state != BlockState::kFree) {
      s = next;
      continue;
    }
    const std::uintptr_t end = s->addr + s->size;
    std::uintptr_t cut = s->addr + policy::round_up(last->addr - s->addr, g);
    if (keep > 0) {
      const std::size_t spare = cached > keep ? (cached - keep) / g * g : 0;
      cut = std::max(cut, end - std::min(spare, end - cut));
    }
    if (cut >= end) {
      s = next;
      continue;
    }
    const std::size_t n = end - cut;
    FreeIndex* idx = s->index;
    m.take_free(idx, last);
    if (cut == last->addr) {
      if (last->prev != nullptr) last->prev->next = nullptr;
      else s->first = nullptr;
      m.arena.put(last);
    } else {
      last->size = cut - last->addr;
      m.put_free(idx, last);
    }
    const std::size_t k = n / g;
    Cut c{s, cut, n, std::vector<PhysHandle>(s->chunks->end() - k, s->chunks->end()), false};
    s->chunks->resize(s->chunks->size() - k);
    s->size -= n;
    cached -= n;
    DevicePool::Impl::sub(m.st.reserved_bytes, s->kind, static_cast<std::int64_t>(n));
    ++m.st.num_segment_unmap;
    m.trace(TraceAction::kSegmentUnmap, cut, n, s->stream);
    if (s->size == 0) {
      m.unlink_segment(s);
      idx->vmm_seg = nullptr;
      DevicePool::Impl::sub(m.st.segment, s->kind, 1);
      ++m.st.num_device_free;
      m.trace(TraceAction::kSegmentFree, s->addr, s->reserved_va, s->stream);
      c.whole = true;
    }
    cuts.push_back(std::move(c));
    s = next;
  }
  if (cuts.empty()) return;
  lk.unlock();
  for (Cut& c : cuts) {
    try {
      // Unlike cuMemFree, cuMemUnmap/cuMemRelease do not synchronize: kernels queued on
      // the segment's stream may still use the freed tail, so wait for that stream (other
      // streams' uses are covered by record_stream events).
      wait_for_stream(m.be, c.seg->stream);
      for (std::size_t i = 0; i < c.handles.size(); ++i)
        m.be.vmm_unmap(reinterpret_cast<void*>(c.addr + i * g), g, c.handles[i]);
      if (c.whole) m.be.vmm_release_range(reinterpret_cast<void*>(c.seg->addr), c.seg->reserved_va);
    } catch (...) {
      // Gone from the pool either way; a broken device shows on the next allocation.
    }
    if (c.whole) {
      delete c.seg->chunks;
      delete c.seg;
    }
  }
  lk.lock();
}

void vmm_destroy(Backend& be, Segment* s) {
  const std::size_t g = be.vmm_granularity();
  wait_for_stream(be, s->stream);
  for (std::size_t i = 0; i < s->chunks->size(); ++i)
    be.vmm_unmap(reinterpret_cast<void*>(s->addr + i * g), g, (*s->chunks)[i]);
  be.vmm_release_range(reinterpret_cast<void*>(s->addr), s->reserved_va);
  delete s->chunks;
  s->chunks = nullptr;
}

}  // namespace pypool::detail
