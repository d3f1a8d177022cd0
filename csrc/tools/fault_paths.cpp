// Pool state after a backend call throws (record_event / query_event), as the CUDA
// backend does on a sticky device error: the pool must stay consistent and never free a
// block early; a mem_info that throws or cannot tell only turns off the pre-check.
// Built with PYPOOL_BUILD_TOOLS; run by 'make sanitize'.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "pypool/allocator.h"
#include "pypool/backends.h"
#include "pypool/host_backend.h"

using namespace pypool;

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
  std::printf("  allocated_bytes.current after retry = %lld (expect 0)\n", (long long)s.allocated_bytes[0].current);
  EXPECT(s.allocated_bytes[0].current == 0, "allocated_bytes returns to 0, not negative");
}

// process_events(): query_event throws mid-scan; the pending vector keeps stale entries
// (events already released, blocks already freed) that the next scan processes again.
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


// Worse: a not-ready entry compacted to the front before the throw is left twice in the
// vector; when its event completes it is counted twice and a block with another event
// still pending goes back to the free list early (device use-after-free on CUDA).
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

// Note [Device pre-check]: when mem_info throws or reports nothing, the pool grows and
// fails exactly as without the pre-check: the backend call decides.
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
    EXPECT(msg.find("device 0 B free of 0 B") != std::string::npos, "the message says the device could not tell");
    EXPECT(pool.stats().num_alloc_retries == 1, "the release-and-retry ran");
    pool.free(p);
    std::string why;
    const bool ok = invariants_ok(pool, &why);
    EXPECT(ok, ("invariants hold" + (ok ? std::string() : (": " + why))).c_str());
  }
}

int main() {
  test_mem_info_cannot_tell();
  test_process_events_premature_free();
  test_free_record_event_throws();
  test_process_events_query_throws();
  std::printf(failures ? "FAILED (%d)\n" : "all ok\n", failures);
  return failures ? 1 : 0;
}
