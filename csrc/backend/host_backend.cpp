#include "pypool/host_backend.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <thread>

namespace pypool {

namespace {
constexpr std::size_t kNoBudget = std::numeric_limits<std::size_t>::max();

void* os_map(std::size_t size, int prot) {
  void* p = ::mmap(nullptr, size, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}
// Note [Host backend delays]: the host backend's calls return at once, which hides every
// window where a pool thread is inside a blocking driver call. Tests widen those windows
// with set_delays / set_event_latency, so a race between a cache hit, a growth, a release
// and a synchronize shows up in a few rounds instead of never.
void sleep_us(std::uint64_t us) {
  if (us != 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
}
}  // namespace

std::shared_ptr<HostBackend> make_host_backend(const HostBackendOptions& opts) {
  return std::make_shared<HostBackend>(opts);
}

HostBackend::HostBackend(const HostBackendOptions& opts) : opts_(opts), budget_(kNoBudget) {
  if (opts.capacity == 0) throw std::invalid_argument("host backend: capacity must be > 0");
}

HostBackend::~HostBackend() {
  // A pool outliving its backend is a bug elsewhere; release what is left so tests that
  // drop everything do not leak address space.
  for (auto& [addr, size] : live_) ::munmap(reinterpret_cast<void*>(addr), size);
}

bool HostBackend::admit_locked(std::size_t size) {
  ++calls_;
  const bool injected = fail_at_ != 0 && calls_ == fail_at_;
  if (injected) fail_at_ = 0;
  if (injected || size > opts_.capacity - std::min(used_, opts_.capacity) ||
      (budget_ != kNoBudget && used_ + size > budget_)) {
    ++failures_;
    return false;
  }
  return true;
}

void* HostBackend::do_allocate(std::size_t size) {
  count(Op::allocate);
  sleep_us(alloc_delay_us_.load(std::memory_order_relaxed));
  {
    std::lock_guard<std::mutex> g(mu_);
    if (!admit_locked(size)) return nullptr;
    used_ += size;  // claim before the (slow) mmap so concurrent callers see it
  }
  void* p = os_map(size, PROT_READ | PROT_WRITE);
  std::lock_guard<std::mutex> g(mu_);
  if (p == nullptr) {
    used_ -= size;
    ++failures_;
    return nullptr;
  }
  if (opts_.touch) std::memset(p, 0xA5, size);
  live_.emplace(reinterpret_cast<std::uintptr_t>(p), size);
  ++ok_;
  return p;
}

void HostBackend::do_deallocate(void* p, std::size_t size) {
  count(Op::deallocate);
  sleep_us(dealloc_delay_us_.load(std::memory_order_relaxed));  // still counted in used_
  std::lock_guard<std::mutex> g(mu_);
  auto it = live_.find(reinterpret_cast<std::uintptr_t>(p));
  if (it == live_.end() || it->second != size)
    throw BackendError("host backend: deallocate of memory it did not hand out");
  live_.erase(it);
  used_ -= size;
  ::munmap(p, size);
}

Event HostBackend::do_record_event(Stream stream) {
  count(Op::record_event);
  std::lock_guard<std::mutex> g(mu_);
  const Event e = next_event_++;
  const auto lat = std::chrono::microseconds(event_latency_us_.load(std::memory_order_relaxed));
  events_.emplace(e, EventState{stream, held_.count(stream) == 0, Clock::now() + lat});
  return e;
}

bool HostBackend::do_query_event(Event e) {
  count(Op::query_event);
  std::lock_guard<std::mutex> g(mu_);
  auto it = events_.find(e);
  if (it == events_.end()) throw BackendError("host backend: query of an unknown event");
  return it->second.released && Clock::now() >= it->second.ready;
}

void HostBackend::do_synchronize_event(Event e) {
  count(Op::synchronize_event);
  sleep_us(sync_delay_us_.load(std::memory_order_relaxed));
  Clock::time_point ready;
  {
    std::unique_lock<std::mutex> g(mu_);
    auto it = events_.find(e);
    if (it == events_.end()) throw BackendError("host backend: sync of an unknown event");
    if (sync_waits_for_release_) {
      // Wait for release_stream, as a real wait lasts until the stream's kernels end.
      released_cv_.wait(g, [&] {
        auto i = events_.find(e);
        return i == events_.end() || i->second.released;
      });
      it = events_.find(e);
      if (it == events_.end()) throw BackendError("host backend: event released while synchronizing");
    } else {
      // Nobody may be there to release the stream: its "kernels" finish now.
      it->second.released = true;
    }
    ready = it->second.ready;
  }
  std::this_thread::sleep_until(ready);  // the event's latency: a real wait
}

void HostBackend::do_release_event(Event e) {
  count(Op::release_event);
  std::lock_guard<std::mutex> g(mu_);
  events_.erase(e);
}

MemInfo HostBackend::do_mem_info() {
  count(Op::mem_info);
  std::lock_guard<std::mutex> g(mu_);
  return MemInfo{opts_.capacity - std::min(used_, opts_.capacity), opts_.capacity};
}

void* HostBackend::do_vmm_reserve(std::size_t size) {
  count(Op::vmm_reserve);
  return os_map(size, PROT_NONE);
}

void HostBackend::do_vmm_release_range(void* base, std::size_t size) {
  count(Op::vmm_release_range);
  ::munmap(base, size);
}

PhysHandle HostBackend::do_vmm_map(void* addr, std::size_t size) {
  count(Op::vmm_map);
  sleep_us(alloc_delay_us_.load(std::memory_order_relaxed));
  std::lock_guard<std::mutex> g(mu_);
  if (!admit_locked(size)) return 0;
  // Map fresh pages in place of the PROT_NONE reservation (the analogue of cuMemCreate +
  // cuMemMap + cuMemSetAccess).
  void* p = ::mmap(addr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    ++failures_;
    return 0;
  }
  if (opts_.touch) std::memset(p, 0xA5, size);
  used_ += size;
  ++ok_;
  const PhysHandle h = next_phys_++;
  phys_.emplace(h, size);
  return h;
}

void HostBackend::do_vmm_unmap(void* addr, std::size_t size, PhysHandle h) {
  count(Op::vmm_unmap);
  sleep_us(dealloc_delay_us_.load(std::memory_order_relaxed));
  std::lock_guard<std::mutex> g(mu_);
  auto it = phys_.find(h);
  if (it == phys_.end() || it->second != size)
    throw BackendError("host backend: vmm_unmap of a handle it did not hand out");
  phys_.erase(it);
  used_ -= size;
  // Back to an inaccessible reservation: the pages are gone, the addresses stay ours.
  ::mmap(addr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
}

void HostBackend::fail_allocation_at(std::uint64_t k) {
  std::lock_guard<std::mutex> g(mu_);
  fail_at_ = k == 0 ? 0 : calls_ + k;
}

void HostBackend::set_byte_budget(std::size_t bytes) {
  std::lock_guard<std::mutex> g(mu_);
  budget_ = bytes;
}

void HostBackend::set_capacity(std::size_t bytes) {
  if (bytes == 0) throw std::invalid_argument("host backend: capacity must be > 0");
  std::lock_guard<std::mutex> g(mu_);
  opts_.capacity = bytes;
}

void HostBackend::hold_stream(Stream s) {
  std::lock_guard<std::mutex> g(mu_);
  held_.insert(s);
}

void HostBackend::release_stream(Stream s) {
  std::lock_guard<std::mutex> g(mu_);
  held_.erase(s);
  for (auto& [e, st] : events_)
    if (st.stream == s) st.released = true;
  released_cv_.notify_all();
}

void HostBackend::set_delays(std::uint64_t allocate_us, std::uint64_t deallocate_us,
                             std::uint64_t synchronize_us) {
  alloc_delay_us_.store(allocate_us, std::memory_order_relaxed);
  dealloc_delay_us_.store(deallocate_us, std::memory_order_relaxed);
  sync_delay_us_.store(synchronize_us, std::memory_order_relaxed);
}

void HostBackend::set_event_latency(std::uint64_t us) {
  event_latency_us_.store(us, std::memory_order_relaxed);
}

void HostBackend::set_sync_waits_for_release(bool on) {
  std::lock_guard<std::mutex> g(mu_);
  sync_waits_for_release_ = on;
}

std::size_t HostBackend::pending_events() const {
  std::lock_guard<std::mutex> g(mu_);
  std::size_t n = 0;
  const auto now = Clock::now();
  for (auto& [e, st] : events_) n += st.released && now >= st.ready ? 0 : 1;
  return n;
}

std::size_t HostBackend::used() const {
  std::lock_guard<std::mutex> g(mu_);
  return used_;
}
std::uint64_t HostBackend::num_allocations() const {
  std::lock_guard<std::mutex> g(mu_);
  return ok_;
}
std::uint64_t HostBackend::num_failures() const {
  std::lock_guard<std::mutex> g(mu_);
  return failures_;
}
std::size_t HostBackend::live_allocations() const {
  std::lock_guard<std::mutex> g(mu_);
  return live_.size() + phys_.size();
}
BackendCalls HostBackend::calls() const {
  BackendCalls c;
#define PYPOOL_READ_CALLS(name) \
  c.name = op_calls_[static_cast<int>(Op::name)].load(std::memory_order_relaxed);
  PYPOOL_BACKEND_OPS(PYPOOL_READ_CALLS)
#undef PYPOOL_READ_CALLS
  return c;
}
void HostBackend::reset_calls() {
  for (auto& n : op_calls_) n.store(0, std::memory_order_relaxed);
}

}  // namespace pypool
