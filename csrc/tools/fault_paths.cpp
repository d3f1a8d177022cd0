// Pool state after something fails: a backend call throws (record_event / query_event,
// as the CUDA backend does on a sticky device error; unmap, synchronize, deallocate), or
// a bookkeeping allocation throws std::bad_alloc. The pool must stay consistent, never
// free a block early, never lose or double-map memory, and hold on the device exactly
// what it reports. Built with PYPOOL_BUILD_TOOLS; run by 'make sanitize' (ASan+UBSan with
// leak checking, and TSan).
//
// Note [Fault sweep]: this binary replaces the global operator new with one that can be
// told to throw std::bad_alloc at its k-th call. Release builds and the Python module
// never contain it: the injection costs nothing outside this driver. SweepBackend turns
// injection off inside backend calls, so the k-th allocation is always one of the pool's
// own (map slots, arena nodes, Segments, vectors); a sweep runs a scenario once to count
// them, then once per k, and checks after each run that the invariants hold, that the
// device holds exactly the reserved bytes the pool reports, and that freeing everything
// leaves 0 bytes on the device (LeakSanitizer checks the host side at exit).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "pypool/device_pool.h"
#include "pypool/backends.h"
#include "pypool/host_backend.h"

using namespace pypool;

// ------------------------------------------------------------ operator new with a countdown
namespace fault {
std::atomic<bool> armed{false};
std::atomic<long> calls{0};    // allocations seen while armed
std::atomic<long> fail_at{0};  // the call that throws (1-based); 0 = count only
thread_local int suspended = 0;

inline void maybe_fail() {
  if (!armed.load(std::memory_order_relaxed) || suspended != 0) return;
  const long n = calls.fetch_add(1, std::memory_order_relaxed) + 1;
  if (n == fail_at.load(std::memory_order_relaxed)) throw std::bad_alloc();
}
void arm(long k) {
  calls = 0;
  fail_at = k;
  armed = true;
}
long disarm() {
  armed = false;
  return calls.load();
}
struct Suspend {
  Suspend() { ++suspended; }
  ~Suspend() { --suspended; }
};
}  // namespace fault

void* operator new(std::size_t n) {
  fault::maybe_fail();
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try { return ::operator new(n); } catch (...) { return nullptr; }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try { return ::operator new(n); } catch (...) { return nullptr; }
}
void* operator new(std::size_t n, std::align_val_t a) {
  fault::maybe_fail();
  const std::size_t al = static_cast<std::size_t>(a);
  if (void* p = std::aligned_alloc(al, (n + al - 1) / al * al)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) { return ::operator new(n, a); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

// Delegates to a HostBackend; can be told to throw from record_event / query_event.
class FlakyBackend final : public Backend {
 public:
  std::shared_ptr<HostBackend> h = make_host_backend(HostBackendOptions{});
  int throw_record_at = 0;  // k-th record_event from now throws (1-based); 0 = never
  Event throw_query_of = 0; // query_event of this event throws once
  std::unordered_set<Event> released;
  int double_release = 0;
  int mem_info_mode = 0;    // 1: mem_info throws; 2: it reports {0, 0} (cannot tell)
  int allocate_calls = 0;

 private:
  void* do_allocate(std::size_t n) override {
    ++allocate_calls;
    return h->allocate(n);
  }
  void do_deallocate(void* p, std::size_t n) override { h->deallocate(p, n); }
  Event do_record_event(Stream s) override {
    if (throw_record_at > 0 && --throw_record_at == 0) throw BackendError("cuEventRecord: CUDA_ERROR_LAUNCH_FAILED");
    Event e = h->record_event(s);
    released.erase(e);
    return e;
  }
  bool do_query_event(Event e) override {
    if (released.count(e)) { ++double_release; return true; }  // a real CUDA event pool would hand it to someone else
    if (e == throw_query_of) { throw_query_of = 0; throw BackendError("cuEventQuery: CUDA_ERROR_LAUNCH_FAILED"); }
    return h->query_event(e);
  }
  void do_synchronize_event(Event e) override { h->synchronize_event(e); }
  void do_release_event(Event e) override {
    if (!released.insert(e).second) ++double_release;
    h->release_event(e);
  }
  MemInfo do_mem_info() override {
    if (mem_info_mode == 1) throw BackendError("cuMemGetInfo: CUDA_ERROR_UNKNOWN");
    if (mem_info_mode == 2) return MemInfo{};
    return h->mem_info();
  }
  const char* do_name() const noexcept override { return "flaky"; }
};

static int failures = 0;
#define EXPECT(c, msg)                                              \
  do {                                                              \
    if (!(c)) { std::printf("  FAIL: %s\n", msg); ++failures; }     \
    else std::printf("  ok: %s\n", msg);                            \
  } while (0)

static bool invariants_ok(DevicePool& p, std::string* why) {
  try { p.check_invariants(); return true; } catch (const std::exception& e) { *why = e.what(); return false; }
}

// free() of a block used on another stream; record_event throws. The header promises
// "Throws ... the pool is left unchanged"; stats must still match a walk.
static void test_free_record_event_throws() {
  std::printf("free(): record_event throws\n");
  auto be = std::make_shared<FlakyBackend>();
  DevicePool pool(Config{}, be);
  void* p = pool.malloc(4096, 1);
  pool.record_stream(p, 2);
  be->throw_record_at = 1;
  bool threw = false;
  try { pool.free(p); } catch (const BackendError&) { threw = true; }
  EXPECT(threw, "free rethrows the BackendError");
  std::string why;
  const bool ok = invariants_ok(pool, &why);
  EXPECT(ok, ("invariants hold after the throw" + (ok ? std::string() : (": " + why))).c_str());
  // The caller retries the free (the pool said it is unchanged):
  try { pool.free(p); } catch (const std::exception& e) { std::printf("  (retry free threw: %s)\n", e.what()); }
  const Stats s = pool.stats();
  std::printf("  allocated_bytes.current after retry = %lld (expect 0)\n", (long long)s.allocated_bytes[kStatAll].current);
  EXPECT(s.allocated_bytes[kStatAll].current == 0, "allocated_bytes returns to 0, not negative");
}

// process_events(): query_event throws mid-scan. The single vector of pending events the
// pool once kept (one FIFO per stream now, Note [Event FIFOs]) was left with stale entries
// (events already released, blocks already freed) that the next scan processed again.
static void test_process_events_query_throws() {
  std::printf("process_events(): query_event throws mid-scan\n");
  auto be = std::make_shared<FlakyBackend>();
  DevicePool pool(Config{}, be);
  void* a = pool.malloc(4096, 1);
  void* b = pool.malloc(4096, 1);
  pool.record_stream(a, 2);
  pool.record_stream(b, 3);
  be->h->hold_stream(3);
  pool.free(a);  // event e1 on stream 2: complete
  pool.free(b);  // event e2 on stream 3: pending
  // e2 is the second event handed out.
  be->throw_query_of = 2;
  try { (void)pool.malloc(512, 1); } catch (const std::exception& e) { std::printf("  malloc threw: %s\n", e.what()); }
  be->h->release_stream(3);
  try { (void)pool.malloc(512, 1); } catch (const std::exception& e) { std::printf("  malloc threw: %s\n", e.what()); }
  std::string why;
  const bool ok = invariants_ok(pool, &why);
  EXPECT(be->double_release == 0, "no event is released or queried after its release");
  EXPECT(ok, ("invariants hold" + (ok ? std::string() : (": " + why))).c_str());
}


// Worse, in that vector: a not-ready entry compacted to the front before the throw was
// left there twice; when its event completed it was counted twice and a block with another
// event still pending went back to the free list early (device use-after-free on CUDA).
static void test_process_events_premature_free() {
  std::printf("process_events(): duplicate entry frees a block before its other event\n");
  auto be = std::make_shared<FlakyBackend>();
  DevicePool pool(Config{}, be);
  void* a = pool.malloc(4096, 1);
  void* c = pool.malloc(4096, 1);
  void* b = pool.malloc(4096, 1);
  pool.record_stream(a, 2);
  pool.record_stream(c, 4);
  pool.record_stream(c, 5);
  pool.record_stream(b, 3);
  be->h->hold_stream(3);
  be->h->hold_stream(4);
  be->h->hold_stream(5);
  be->h->release_stream(2);
  pool.free(a);  // e1 (stream 2, done)
  pool.free(c);  // e2 (stream 4, held), e3 (stream 5, held)
  pool.free(b);  // e4 (stream 3, held)
  be->throw_query_of = 4;
  try { (void)pool.malloc(512, 1); } catch (const std::exception& e) { std::printf("  malloc threw: %s\n", e.what()); }
  be->h->release_stream(5);  // e3 done; stream 4 still running kernels that use c
  (void)pool.malloc(512, 1);
  bool c_still_pending = false;
  for (const SegmentInfo& s : pool.segments())
    for (const BlockInfo& bi : s.blocks)
      if (bi.address == reinterpret_cast<std::uintptr_t>(c)) c_still_pending = bi.state == BlockState::kPendingFree;
  EXPECT(c_still_pending, "c stays pending while its stream-4 event is not complete");
}

// When mem_info throws or reports nothing, the pool grows and fails exactly as without
// the pre-check: the backend call decides (Note [Device pre-check]).
static void test_mem_info_cannot_tell() {
  for (int mode : {1, 2}) {
    std::printf("malloc(): mem_info %s\n", mode == 1 ? "throws" : "reports {0, 0}");
    auto be = std::make_shared<FlakyBackend>();  // an 80 GiB host device
    be->mem_info_mode = mode;
    DevicePool pool(Config{}, be);
    void* p = nullptr;
    try { p = pool.malloc(std::size_t(5) << 20, 0); } catch (const std::exception& e) { std::printf("  malloc threw: %s\n", e.what()); }
    EXPECT(p != nullptr, "a request that fits is served");
    be->allocate_calls = 0;
    std::string msg;
    try { (void)pool.malloc(std::size_t(200) << 30, 0); } catch (const OutOfMemoryError& e) { msg = e.what(); }
    EXPECT(!msg.empty(), "200 GiB on 80 GiB is out of memory");
    EXPECT(be->allocate_calls == 2, "the backend was asked (once per attempt), not the snapshot");
    EXPECT(msg.find("did not report its capacity") != std::string::npos, "the message says the device could not tell");
    EXPECT(pool.stats().num_alloc_retries == 1, "the release-and-retry ran");
    pool.free(p);
    std::string why;
    const bool ok = invariants_ok(pool, &why);
    EXPECT(ok, ("invariants hold" + (ok ? std::string() : (": " + why))).c_str());
  }
}


// ============================================================ fault sweep and VMM failures

// A HostBackend with injection suspended inside every call (the sweep targets the pool's
// own allocations), a record of mapped granules (a second map of a mapped address is a
// double map), and switches that make unmap / synchronize / deallocate throw, or make
// synchronize block until a gate opens (a stream whose kernels still run).
class SweepBackend final : public Backend {
 public:
  std::shared_ptr<HostBackend> h = make_host_backend(HostBackendOptions{});
  int throw_unmap_at = 0;    // k-th vmm_unmap from now throws (1-based); 0 = never
  int throw_sync_at = 0;     // k-th synchronize_event from now throws
  int throw_dealloc_at = 0;  // k-th deallocate from now throws
  std::atomic<int> double_maps{0};
  std::atomic<std::size_t> peak_used{0};
  std::function<void()> after_mem_info;  // runs inside mem_info, after the snapshot

  // Gate: while closed, synchronize_event of an event on `stream` (0: any) blocks
  // (wait_entered() says a caller is waiting).
  void close_gate(Stream stream = 0) {
    std::lock_guard<std::mutex> g(gate_mu_);
    gate_open_ = false;
    gate_stream_ = stream;
  }
  void open_gate() {
    {
      std::lock_guard<std::mutex> g(gate_mu_);
      gate_open_ = true;
    }
    gate_cv_.notify_all();
  }
  bool wait_entered(std::chrono::milliseconds limit) {
    std::unique_lock<std::mutex> g(gate_mu_);
    return gate_cv_.wait_for(g, limit, [&] { return waiting_ > 0; });
  }

 private:
  void note_used() {
    const std::size_t u = h->used();
    std::size_t p = peak_used.load();
    while (u > p && !peak_used.compare_exchange_weak(p, u)) {}
  }
  void* do_allocate(std::size_t n) override {
    fault::Suspend s;
    void* p = h->allocate(n);
    note_used();
    return p;
  }
  void do_deallocate(void* p, std::size_t n) override {
    fault::Suspend s;
    if (throw_dealloc_at > 0 && --throw_dealloc_at == 0) throw BackendError("cuMemFree: CUDA_ERROR_LAUNCH_FAILED");
    h->deallocate(p, n);
  }
  Event do_record_event(Stream st) override {
    fault::Suspend s;
    const Event e = h->record_event(st);
    std::lock_guard<std::mutex> g(gate_mu_);
    event_stream_[e] = st;
    return e;
  }
  bool do_query_event(Event e) override {
    fault::Suspend s;
    return h->query_event(e);
  }
  void do_synchronize_event(Event e) override {
    fault::Suspend s;
    if (throw_sync_at > 0 && --throw_sync_at == 0) throw BackendError("cuEventSynchronize: CUDA_ERROR_LAUNCH_FAILED");
    {
      std::unique_lock<std::mutex> g(gate_mu_);
      if (!gate_open_ && (gate_stream_ == 0 || event_stream_[e] == gate_stream_)) {
        ++waiting_;
        gate_cv_.notify_all();
        gate_cv_.wait(g, [&] { return gate_open_; });
        --waiting_;
      }
    }
    h->synchronize_event(e);
  }
  void do_release_event(Event e) override {
    fault::Suspend s;
    h->release_event(e);
  }
  MemInfo do_mem_info() override {
    fault::Suspend s;
    const MemInfo mi = h->mem_info();
    if (after_mem_info) after_mem_info();  // a test's hook: the snapshot is taken, not yet used
    return mi;
  }
  const char* do_name() const noexcept override { return "sweep"; }
  bool do_supports_vmm() const noexcept override { return true; }
  std::size_t do_vmm_granularity() const override { return std::size_t(2) << 20; }
  void* do_vmm_reserve(std::size_t n) override {
    fault::Suspend s;
    return h->vmm_reserve(n);
  }
  void do_vmm_release_range(void* b, std::size_t n) override {
    fault::Suspend s;
    h->vmm_release_range(b, n);
  }
  PhysHandle do_vmm_map(void* a, std::size_t n) override {
    fault::Suspend s;
    const PhysHandle ph = h->vmm_map(a, n);
    if (ph != 0) {
      std::lock_guard<std::mutex> g(map_mu_);
      if (!mapped_.insert(reinterpret_cast<std::uintptr_t>(a)).second) ++double_maps;
    }
    note_used();
    return ph;
  }
  void do_vmm_unmap(void* a, std::size_t n, PhysHandle ph) override {
    fault::Suspend s;
    if (throw_unmap_at > 0 && --throw_unmap_at == 0) throw BackendError("cuMemUnmap: CUDA_ERROR_LAUNCH_FAILED");
    h->vmm_unmap(a, n, ph);
    std::lock_guard<std::mutex> g(map_mu_);
    mapped_.erase(reinterpret_cast<std::uintptr_t>(a));
  }

  std::mutex map_mu_;
  std::set<std::uintptr_t> mapped_;
  std::mutex gate_mu_;
  std::condition_variable gate_cv_;
  bool gate_open_ = true;
  Stream gate_stream_ = 0;
  std::unordered_map<Event, Stream> event_stream_;
  int waiting_ = 0;
};

static std::int64_t reserved_of(DevicePool& p) { return p.stats().reserved_bytes[kStatAll].current; }

// What the device holds equals what the pool reports, and the invariants hold.
static bool consistent(DevicePool& pool, SweepBackend& be, std::string* why) {
  if (!invariants_ok(pool, why)) return false;
  const auto used = static_cast<std::int64_t>(be.h->used());
  if (used != reserved_of(pool)) {
    *why = "device holds " + std::to_string(used) + " B, pool reports " +
           std::to_string(reserved_of(pool)) + " B reserved";
    return false;
  }
  if (be.double_maps != 0) {
    *why = std::to_string(be.double_maps.load()) + " granules mapped twice";
    return false;
  }
  return true;
}

constexpr std::size_t MiB = std::size_t(1) << 20;

// One scenario: pool operations on a fresh pool; a failed operation (bad_alloc, out of
// memory) is skipped like a caller would. `live` holds what is allocated.
struct Run {
  DevicePool& pool;
  std::vector<void*> live;
  std::string problem;
  void malloc(std::size_t n, Stream s = 0) {
    try {
      if (void* p = pool.malloc(n, s)) {
        fault::Suspend off;  // the harness's own bookkeeping is not under test
        live.push_back(p);
      }
    } catch (const std::bad_alloc&) {
    } catch (const OutOfMemoryError&) {
    } catch (const BackendError&) {  // a backend fault sweep's injected failure
    }
  }
  void free_at(std::size_t i) {
    if (i >= live.size()) return;
    void* p = live[i];
    try {
      pool.free(p);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    } catch (const std::bad_alloc&) {
      // "the pool is left unchanged": p must still be a live allocation.
      fault::Suspend s;
      try { (void)pool.size_of(p); } catch (const std::exception& e) {
        if (problem.empty()) problem = std::string("free threw bad_alloc and changed the pool: ") + e.what();
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      }
    }
  }
  void record_stream(std::size_t i, Stream s) {
    if (i >= live.size()) return;
    try { pool.record_stream(live[i], s); } catch (const std::bad_alloc&) {}
  }
  void empty_cache() {
    try { pool.empty_cache(); } catch (const std::bad_alloc&) {} catch (const BackendError&) {}
  }
};

static void scenario_fixed(Run& r) {
  // Over 512 live blocks: the pointer map grows and the block arena refills.
  for (int i = 0; i < 600; ++i) r.malloc(512 + (i % 7) * 512, Stream(i % 3 == 0 ? 1 : 0));
  r.malloc(3 * MiB);
  r.malloc(25 * MiB, 2);
  r.malloc(700 * 1024, 4);
  r.record_stream(0, 9);
  r.record_stream(1, 9);
  r.record_stream(1, 10);
  for (std::size_t i = r.live.size(); i-- > 0;) if (i % 2 == 0) r.free_at(i);
  r.empty_cache();
  r.malloc(6 * MiB, 3);
  r.malloc(40 * MiB, 2);
  while (!r.live.empty()) r.free_at(r.live.size() - 1);
  r.empty_cache();
  r.malloc(1000);
}

static void scenario_vmm(Run& r) {
  r.malloc(30 * MiB, 1);
  r.malloc(5 * MiB, 1);
  r.malloc(50 * MiB, 1);
  r.malloc(30 * MiB, 2);
  r.malloc(4 * MiB, 2);
  r.free_at(2);
  r.free_at(3);
  r.empty_cache();  // unmaps the free tails
  r.malloc(40 * MiB, 1);
  r.malloc(12 * MiB, 2);
  r.record_stream(0, 5);
  r.free_at(0);
  r.free_at(0);
  r.empty_cache();
  r.malloc(64 * MiB, 1);
  while (!r.live.empty()) r.free_at(r.live.size() - 1);
  r.empty_cache();
}

// Interior holes (Note [VMM holes]): free blocks between live ones are unmapped, served
// again by mapping the hole in place (from either side, or whole), coalesced with free
// neighbours, and a hole at the end cuts the segment's extent.
static void scenario_vmm_holes(Run& r) {
  r.malloc(9 * MiB, 1);   // 0
  r.malloc(7 * MiB, 1);   // 1
  r.malloc(11 * MiB, 1);  // 2
  r.malloc(5 * MiB, 1);   // 3
  r.malloc(13 * MiB, 1);  // 4
  r.malloc(6 * MiB, 2);   // 5
  r.free_at(3);
  r.free_at(1);
  r.empty_cache();        // two interior holes on stream 1
  r.malloc(3 * MiB, 1);   // maps part of a hole
  r.malloc(10 * MiB, 1);  // a hole whole, or the tail
  r.free_at(0);           // a free block at the segment's start, next to a hole
  r.malloc(12 * MiB, 1);
  r.record_stream(1, 7);
  r.free_at(1);
  r.free_at(r.live.size() - 1);
  r.empty_cache();
  r.malloc(30 * MiB, 1);
  while (!r.live.empty()) r.free_at(0);
  r.empty_cache();
  r.malloc(4 * MiB, 1);
}

static void sweep(const char* name, const Config& cfg, void (*scenario)(Run&)) {
  std::printf("fault sweep: %s\n", name);
  long total = -1;
  int bad = 0;
  for (long k = 0; bad < 5; ++k) {
    auto be = std::make_shared<SweepBackend>();
    std::string why;
    {
      DevicePool pool(cfg, be);
      Run r{pool, {}, {}};
      fault::arm(k);  // k == 0: count only
      scenario(r);
      const long seen = fault::disarm();
      if (k == 0) total = seen;
      bool ok = r.problem.empty() && consistent(pool, *be, &why);
      if (!r.problem.empty()) why = r.problem;
      if (ok) {
        // Everything frees and goes back to the device.
        for (void* p : r.live) {
          try { pool.free(p); } catch (const std::exception& e) { why = std::string("free: ") + e.what(); ok = false; }
        }
        pool.release_all_cached();
        if (ok) ok = consistent(pool, *be, &why);
        if (ok && be->h->used() != 0) {
          why = std::to_string(be->h->used()) + " B still on the device after everything was freed";
          ok = false;
        }
      }
      if (!ok) {
        ++bad;
        std::printf("  FAIL: bad_alloc at allocation %ld of %ld: %s\n", k, total, why.c_str());
      }
    }
    if (be->h->live_allocations() != 0 && bad < 5) {
      ++bad;
      std::printf("  FAIL: bad_alloc at allocation %ld: %zu device allocations left after the pool is gone\n",
                  k, be->h->live_allocations());
    }
    if (k >= total) break;
  }
  failures += bad;
  std::printf("  %s: %ld allocation points swept\n", bad ? "FAIL" : "ok", total);
}

static Config vmm_config() {
  Config c;
  c.expandable_segments = true;
  // 1 GiB of address space per segment, not 1 TiB: quarantined ranges keep theirs until
  // the pool goes, and TSan's shadow mapping leaves room for few 1 TiB reservations.
  c.expandable_reserve = std::size_t(1) << 30;
  return c;
}

// Backend failures along the same VMM scenario: the k-th vmm_unmap (kind 0) or
// synchronize_event (kind 1) throws, for every k. What could not be unmapped is
// quarantined: the device must hold exactly what the pool reports at every check, no
// granule may be mapped twice, and the pool's destructor must hand everything back.
static void sweep_vmm_backend_faults(int kind, void (*scenario)(Run&) = scenario_vmm) {
  const char* what = kind == 0 ? "vmm_unmap" : "synchronize_event";
  std::printf("backend fault sweep: %s throws, VMM grow / shrink%s\n", what,
              scenario == scenario_vmm ? "" : " with interior holes");
  int bad = 0;
  long points = 0;
  for (int k = 1; bad < 5; ++k) {
    auto be = std::make_shared<SweepBackend>();
    std::string why;
    BackendCalls calls;
    {
      DevicePool pool(vmm_config(), be);
      if (kind == 0) be->throw_unmap_at = k; else be->throw_sync_at = k;
      Run r{pool, {}, {}};
      scenario(r);
      const bool fired = (kind == 0 ? be->throw_unmap_at : be->throw_sync_at) == 0;
      if (!fired) break;  // past the last call: every k was swept
      ++points;
      bool ok = r.problem.empty() && consistent(pool, *be, &why);
      if (!r.problem.empty()) why = r.problem;
      for (void* p : r.live) pool.free(p);
      try { pool.release_all_cached(); } catch (const BackendError&) {}
      if (ok) ok = consistent(pool, *be, &why);
      if (!ok) {
        ++bad;
        std::printf("  FAIL: %s #%d throws: %s\n", what, k, why.c_str());
      }
    }
    if (be->h->live_allocations() != 0 && bad < 5) {
      ++bad;
      std::printf("  FAIL: %s #%d throws: %zu device allocations left after the pool is gone\n", what, k,
                  be->h->live_allocations());
    }
  }
  failures += bad;
  std::printf("  %s: %ld failure points swept\n", bad ? "FAIL" : "ok", points);
}

// The k-th vmm_map fails (the device is out of memory), for every k: a growth in a hole
// or at the tail rolls back what it mapped, and the pool stays exact.
static void sweep_vmm_map_faults(void (*scenario)(Run&)) {
  std::printf("backend fault sweep: vmm_map fails, VMM grow / shrink%s\n",
              scenario == scenario_vmm ? "" : " with interior holes");
  int bad = 0;
  long points = 0;
  for (int k = 1; bad < 5; ++k) {
    auto be = std::make_shared<SweepBackend>();
    std::string why;
    {
      DevicePool pool(vmm_config(), be);
      const std::uint64_t before = be->h->calls().vmm_map + be->h->calls().allocate;
      be->h->fail_allocation_at(static_cast<std::uint64_t>(k));
      Run r{pool, {}, {}};
      scenario(r);
      if (be->h->calls().vmm_map + be->h->calls().allocate - before < static_cast<std::uint64_t>(k)) break;
      ++points;
      bool ok = r.problem.empty() && consistent(pool, *be, &why);
      if (!r.problem.empty()) why = r.problem;
      for (void* p : r.live) pool.free(p);
      pool.release_all_cached();
      if (ok) ok = consistent(pool, *be, &why);
      if (ok && be->h->used() != 0) {
        why = std::to_string(be->h->used()) + " B still on the device after everything was freed";
        ok = false;
      }
      if (!ok) {
        ++bad;
        std::printf("  FAIL: map #%d fails: %s\n", k, why.c_str());
      }
    }
  }
  failures += bad;
  std::printf("  %s: %ld failure points swept\n", bad ? "FAIL" : "ok", points);
}

// Bug: a failed unmap (or a failed wait for the stream before it) skipped every remaining
// unmap after the pool had stopped counting the bytes; the range was then mapped again.
// Now the range that could not be unmapped is quarantined: it stays counted as reserved
// (the device holds it), and it is never mapped again.
static void test_unmap_failure_quarantines(int which, int at) {
  std::printf("vmm_shrink_all: %s #%d throws\n", which == 0 ? "vmm_unmap" : "synchronize_event", at);
  auto be = std::make_shared<SweepBackend>();
  std::string why;
  {
    DevicePool pool(vmm_config(), be);
    void* a = pool.malloc(4 * MiB, 1);
    void* b = pool.malloc(20 * MiB, 1);
    pool.free(b);
    if (which == 0) be->throw_unmap_at = at; else be->throw_sync_at = at;
    try { pool.empty_cache(); } catch (const std::exception& e) { std::printf("  (empty_cache threw: %s)\n", e.what()); }
    bool ok = consistent(pool, *be, &why);
    EXPECT(ok, ("after the failed unmap: " + (ok ? std::string("device == reserved") : why)).c_str());
    // Grow again on the same stream, several times: the quarantined range is not reused.
    std::vector<void*> ps;
    for (int i = 0; i < 4; ++i) ps.push_back(pool.malloc(12 * MiB, 1));
    ok = consistent(pool, *be, &why);
    EXPECT(ok, ("after growing again: " + (ok ? std::string("no double map, device == reserved") : why)).c_str());
    for (void* p : ps) pool.free(p);
    pool.free(a);
    pool.empty_cache();
    ok = consistent(pool, *be, &why);
    EXPECT(ok, ("after freeing everything: " + (ok ? std::string("device == reserved") : why)).c_str());
  }
  EXPECT(be->h->live_allocations() == 0 && be->h->used() == 0,
         "the pool's destructor hands the quarantined range back");
}

// Bug: num_device_free was counted for a free the device refused.
static void test_num_device_free_counts_only_frees() {
  std::printf("release: deallocate throws\n");
  auto be = std::make_shared<SweepBackend>();
  DevicePool pool(Config{}, be);
  void* p = pool.malloc(3 * MiB, 0);
  pool.free(p);
  be->throw_dealloc_at = 1;
  try { pool.empty_cache(); } catch (...) {}
  EXPECT(pool.stats().num_device_free == 0, "num_device_free counts only frees the device did");
}

// Bug: one vmm_mu per pool, held while the shrink waited for its stream, so expandable
// growth on every other stream waited for that stream too. The gate keeps stream 1's
// synchronize blocked until the growth on stream 2 has returned; a watchdog opens it
// after 20 s so a regression fails instead of hanging. Both streams have a free tail to
// unmap, so the shrink must not hold stream 2's segment while it waits for stream 1.
static void test_shrink_wait_does_not_block_other_streams() {
  std::printf("vmm: a shrink waiting for stream 1 does not block growth on stream 2\n");
  auto be = std::make_shared<SweepBackend>();
  DevicePool pool(vmm_config(), be);
  // Stream 2's segment first: the newer segment (stream 1's) heads the list, so a
  // shrink that walks the list meets stream 1 first.
  void* a2 = pool.malloc(4 * MiB, 2);
  void* a3 = pool.malloc(20 * MiB, 2);
  void* a = pool.malloc(20 * MiB, 1);
  pool.free(a);
  pool.free(a3);
  be->close_gate(1);
  std::thread shrinker([&] { pool.empty_cache(); });
  const bool entered = be->wait_entered(std::chrono::seconds(20));
  EXPECT(entered, "the shrink waits for stream 1");
  std::atomic<bool> grown{false}, watchdog_fired{false};
  std::thread watchdog([&] {
    for (int i = 0; i < 2000 && !grown; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!grown) { watchdog_fired = true; be->open_gate(); }
  });
  void* b = pool.malloc(40 * MiB, 2);  // more than its free tail: grows the segment
  grown = true;
  EXPECT(!watchdog_fired, "growth on stream 2 finished while stream 1's shrink was waiting");
  be->open_gate();
  shrinker.join();
  watchdog.join();
  pool.free(b);
  pool.free(a2);
  std::string why;
  const bool ok = consistent(pool, *be, &why);
  EXPECT(ok, ok ? "consistent afterwards" : why.c_str());
}

// Bug 2 on the VMM path: the bytes of a tail being unmapped stopped counting against the
// cap before the device had them back, so a growth on another stream went past the cap.
static void test_unmap_in_flight_counts_against_cap() {
  std::printf("vmm: bytes being unmapped still count against max_pool_size\n");
  auto be = std::make_shared<SweepBackend>();
  Config c = vmm_config();
  c.max_pool_size = 64 * MiB;
  DevicePool pool(c, be);
  void* a = pool.malloc(60 * MiB, 1);
  pool.free(a);
  be->close_gate();
  std::thread shrinker([&] { pool.empty_cache(); });
  be->wait_entered(std::chrono::seconds(20));
  std::thread opener([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    be->open_gate();  // whether or not the growth waits for the release
  });
  void* b = nullptr;
  try { b = pool.malloc(60 * MiB, 2); } catch (const OutOfMemoryError&) {}
  opener.join();
  shrinker.join();
  if (b != nullptr) pool.free(b);
  std::printf("  peak device use %zu MiB, cap 64 MiB\n", be->peak_used.load() / MiB);
  EXPECT(be->peak_used.load() <= 64 * MiB, "the device never held more than the cap");
}

// Bug (review of the merged protocol): empty_cache takes record_stream events out of their
// FIFOs and synchronizes them with no lock held. A grower that missed the cache then
// found nothing pending in its own retry (sync_pending_locked saw npending == 0),
// nothing to release, and declared out of memory while the only block it needed was a
// moment from free. Now a grower waits for another thread's synchronize to finish (as it
// waits for a shrink) and retries.
static void test_oom_retry_waits_for_other_sync() {
  std::printf("OOM retry: waits for pending frees another thread is synchronizing\n");
  auto be = std::make_shared<SweepBackend>();
  Config c;
  c.max_pool_size = 40 * MiB;
  DevicePool pool(c, be);
  void* a = pool.malloc(30 * MiB, 1);
  pool.record_stream(a, 9);
  be->h->hold_stream(9);  // stream 9's kernels still use a
  pool.free(a);           // pending free
  be->close_gate(9);
  std::thread releaser([&] { pool.empty_cache(); });
  const bool entered = be->wait_entered(std::chrono::seconds(20));
  EXPECT(entered, "empty_cache synchronizes stream 9's event");
  std::thread opener([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    be->h->release_stream(9);
    be->open_gate();  // whether or not the growth waits for it
  });
  void* b = nullptr;
  std::string err;
  try { b = pool.malloc(30 * MiB, 1); } catch (const OutOfMemoryError& e) { err = e.what(); }
  opener.join();
  releaser.join();
  EXPECT(b != nullptr, b != nullptr ? "no spurious OOM" : ("spurious OOM: " + err.substr(0, 160)).c_str());
  if (b != nullptr) pool.free(b);
  pool.empty_cache();
  std::string why;
  const bool ok = consistent(pool, *be, &why);
  EXPECT(ok, ok ? "consistent afterwards" : why.c_str());
}

// Bug (review): the fallback waited for a shrink only if one was still in flight when it
// looked. A grower whose device snapshot (mem_info) was taken while another thread's
// shrink still held the granules, and which looked after that shrink had finished, saw
// nothing in flight and declared out of memory with the memory back on the device. The
// hook finishes the shrink exactly in that window. Now any release that finished since
// the retry began sends the grower round once more.
static void test_oom_retry_after_shrink_finished() {
  std::printf("OOM retry: a shrink that finished after the device snapshot\n");
  auto be = std::make_shared<SweepBackend>();
  be->h->set_capacity(64 * MiB);
  DevicePool pool(vmm_config(), be);
  void* a = pool.malloc(60 * MiB, 1);
  pool.free(a);
  be->close_gate(1);
  std::atomic<bool> shrunk{false};
  std::thread shrinker([&] { pool.empty_cache(); shrunk = true; });
  const bool entered = be->wait_entered(std::chrono::seconds(20));
  EXPECT(entered, "the shrink waits for stream 1");
  // The growth on stream 2 asks mem_info twice (first try, then the retry after the
  // release): on the second, let the shrink finish before the grower looks again.
  int asked = 0;
  be->after_mem_info = [&] {
    if (++asked != 2) return;
    be->open_gate();
    for (int i = 0; i < 2000 && !shrunk; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  };
  void* b = nullptr;
  std::string err;
  try { b = pool.malloc(60 * MiB, 2); } catch (const OutOfMemoryError& e) { err = e.what(); }
  be->after_mem_info = nullptr;
  be->open_gate();
  shrinker.join();
  EXPECT(b != nullptr, b != nullptr ? "no spurious OOM" : ("spurious OOM: " + err.substr(0, 160)).c_str());
  if (b != nullptr) pool.free(b);
  pool.empty_cache();
  std::string why;
  const bool ok = consistent(pool, *be, &why);
  EXPECT(ok, ok ? "consistent afterwards" : why.c_str());
}

// Bug (review of Note [Shrink outside grow_mu]): a grower on stream 1 whose segment was
// being shrunk waited for the claim (FreeIndex::vmm_busy) while holding grow_mu, so a
// growth on stream 2 waited for grow_mu, that is for stream 1's kernels: the 250 ms of
// issue 13 bug 12a again, through a second thread. Now a grower drops grow_mu while it
// waits for a shrink of its own segment.
static void test_grower_waiting_for_shrink_does_not_hold_grow_mu() {
  std::printf("vmm: a grower waiting for its stream's shrink does not block growth on stream 2\n");
  auto be = std::make_shared<SweepBackend>();
  DevicePool pool(vmm_config(), be);
  void* a2 = pool.malloc(4 * MiB, 2);
  void* a = pool.malloc(20 * MiB, 1);
  pool.free(a);
  be->close_gate(1);
  std::thread shrinker([&] { pool.empty_cache(); });
  const bool entered = be->wait_entered(std::chrono::seconds(20));
  EXPECT(entered, "the shrink waits for stream 1");
  void* g1 = nullptr;
  std::thread grower1([&] { g1 = pool.malloc(40 * MiB, 1); });  // waits for stream 1's shrink
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::atomic<bool> grown{false}, watchdog_fired{false};
  std::thread watchdog([&] {
    for (int i = 0; i < 1000 && !grown; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!grown) { watchdog_fired = true; be->open_gate(); }
  });
  void* b = pool.malloc(40 * MiB, 2);  // more than its free tail: grows stream 2's segment
  grown = true;
  EXPECT(!watchdog_fired, "growth on stream 2 finished while a stream 1 grower waited for the shrink");
  be->open_gate();
  shrinker.join();
  grower1.join();
  watchdog.join();
  EXPECT(g1 != nullptr, "the stream 1 grower is served after the shrink");
  pool.free(g1);
  pool.free(b);
  pool.free(a2);
  pool.empty_cache();
  std::string why;
  const bool ok = consistent(pool, *be, &why);
  EXPECT(ok, ok ? "consistent afterwards" : why.c_str());
}

// Bug (review of Note [Shrink outside grow_mu]): each shrink reserved room for one more
// quarantine entry, but two shrinks can now be in flight at once (two empty_cache
// threads, or one beside the OOM retry), both counting on the same spare slot; when both
// unmaps failed the second entry's push_back reallocated inside a noexcept function, and
// a std::bad_alloc there was std::terminate. Each shrink now reserves a slot for every
// operation in flight.
static void test_two_failed_shrinks_have_quarantine_room() {
  std::printf("vmm: two shrinks in flight both fail to unmap, then bad_alloc\n");
  auto be = std::make_shared<SweepBackend>();
  {
    DevicePool pool(vmm_config(), be);
    // Stream 2's segment first: stream 1's (newer) heads the list, so r1 meets it first.
    void* a2 = pool.malloc(4 * MiB, 2);
    void* b2 = pool.malloc(20 * MiB, 2);
    void* a1 = pool.malloc(4 * MiB, 1);
    void* b1 = pool.malloc(20 * MiB, 1);
    pool.free(b2);
    pool.free(b1);
    be->close_gate(1);
    std::thread r1([&] { pool.empty_cache(); });  // waits for stream 1
    be->wait_entered(std::chrono::seconds(20));
    be->throw_unmap_at = 1;
    pool.empty_cache();  // skips stream 1 (claimed), stream 2's unmap fails: quarantined
    be->throw_unmap_at = 1;
    fault::arm(1);  // the next bookkeeping allocation anywhere throws
    be->open_gate();
    r1.join();  // stream 1's unmap fails: a second quarantine entry
    fault::disarm();
    std::string why;
    const bool ok = consistent(pool, *be, &why);
    EXPECT(ok, ok ? "both ranges quarantined, device == reserved" : why.c_str());
    pool.free(a1);
    pool.free(a2);
  }
  EXPECT(be->h->live_allocations() == 0 && be->h->used() == 0, "the destructor hands everything back");
}

// Bug: set_history turned history on before its ring existed; when making the ring
// failed (record_history(max_entries=1 << 58) in Python), the next allocation wrote into
// a ring that did not exist (SIGSEGV). Here the ring's allocation is made to fail.
static void test_history_ring_before_history() {
  std::printf("set_history: making the ring fails\n");
  auto be = std::make_shared<SweepBackend>();
  DevicePool pool(Config{}, be);
  bool threw = false;
  fault::arm(1);
  try { pool.set_history(true, 1000); } catch (const std::bad_alloc&) { threw = true; }
  fault::disarm();
  EXPECT(threw, "set_history reports the failed allocation");
  void* p = pool.malloc(4096, 0);  // crashed here
  pool.free(p);
  EXPECT(pool.history().empty(), "history stays off");
  threw = false;
  try { pool.set_history(true, std::size_t(1) << 62); } catch (const std::invalid_argument& e) {
    threw = true;
    std::printf("  (%s)\n", e.what());
  }
  EXPECT(threw, "an impossible max_entries is a clear invalid_argument");
  pool.set_history(true, 8);
  p = pool.malloc(4096, 0);
  pool.free(p);
  EXPECT(!pool.history().empty(), "history works afterwards");
}

// Bug: pending_events was 16 bits: a block used on 65,536 other streams counted 0
// pending events at free() and went back to the free list while still in use.
static void test_pending_events_do_not_wrap() {
  std::printf("free(): a block used on 65,536 streams\n");
  auto be = std::make_shared<SweepBackend>();
  DevicePool pool(Config{}, be);
  void* p = pool.malloc(4096, 0);
  for (Stream s = 1; s <= 65536; ++s) pool.record_stream(p, s);
  pool.free(p);  // 65,536 events, all complete but not yet seen by the pool
  BlockState st = BlockState::kFree;
  for (const SegmentInfo& si : pool.segments())
    for (const BlockInfo& bi : si.blocks)
      if (bi.address == reinterpret_cast<std::uintptr_t>(p)) st = bi.state;
  EXPECT(st == BlockState::kPendingFree, "the block waits for its 65,536 events");
  pool.free(pool.malloc(512, 0));  // processes them
  std::string why;
  const bool ok = invariants_ok(pool, &why) && pool.stats().active_bytes[kStatAll].current == 0;
  EXPECT(ok, ok ? "and is free once they completed" : why.c_str());
}

// With arguments, runs only the tests whose names contain one of them (for checking one
// regression test against an old build: some of the bugs crash the process).
int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::pair<const char*, std::function<void()>> tests[] = {
      {"mem_info_cannot_tell", test_mem_info_cannot_tell},
      {"process_events_premature_free", test_process_events_premature_free},
      {"free_record_event_throws", test_free_record_event_throws},
      {"process_events_query_throws", test_process_events_query_throws},
      {"num_device_free_counts_only_frees", test_num_device_free_counts_only_frees},
      {"history_ring_before_history", test_history_ring_before_history},
      {"pending_events_do_not_wrap", test_pending_events_do_not_wrap},
      {"unmap_failure_quarantines", [] {
         for (int at : {1, 2, 3}) test_unmap_failure_quarantines(0, at);
         test_unmap_failure_quarantines(1, 1);
       }},
      {"shrink_wait_does_not_block_other_streams", test_shrink_wait_does_not_block_other_streams},
      {"unmap_in_flight_counts_against_cap", test_unmap_in_flight_counts_against_cap},
      {"oom_retry_waits_for_other_sync", test_oom_retry_waits_for_other_sync},
      {"two_failed_shrinks", test_two_failed_shrinks_have_quarantine_room},
      {"grower_waiting_for_shrink", test_grower_waiting_for_shrink_does_not_hold_grow_mu},
      {"oom_retry_after_shrink_finished", test_oom_retry_after_shrink_finished},
      {"sweep_fixed", [] { sweep("malloc / free / record_stream / empty_cache, fixed segments", Config{}, scenario_fixed); }},
      {"sweep_vmm", [] { sweep("VMM grow / shrink, expandable segments", vmm_config(), scenario_vmm); }},
      {"sweep_vmm_holes", [] { sweep("VMM interior holes, expandable segments", vmm_config(), scenario_vmm_holes); }},
      {"sweep_vmm_backend_faults", [] {
         sweep_vmm_backend_faults(0);
         sweep_vmm_backend_faults(1);
         sweep_vmm_backend_faults(0, scenario_vmm_holes);
         sweep_vmm_backend_faults(1, scenario_vmm_holes);
         sweep_vmm_map_faults(scenario_vmm);
         sweep_vmm_map_faults(scenario_vmm_holes);
       }},
  };
  for (const auto& [name, fn] : tests) {
    bool run = argc < 2;
    for (int i = 1; i < argc; ++i) run = run || std::string(name).find(argv[i]) != std::string::npos;
    if (run) fn();
  }
  std::printf(failures ? "FAILED (%d)\n" : "all ok\n", failures);
  return failures ? 1 : 0;
}
