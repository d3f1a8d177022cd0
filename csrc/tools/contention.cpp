// Contention driver for the growth/release protocol and record_stream (issue 13), run
// under ASan+UBSan and TSan by `make sanitize`. Exit code 0 = clean.
//
//   pypool_contention rounds N [US] two threads, malloc(2 MiB)+free right after
//                                   empty_cache, cap 20 MiB: counts spurious OOMs (bug 1);
//                                   US: a delay in every allocate (default 0)
//   pypool_contention release N     a release in flight (slow free) while another thread
//                                   grows: the device never holds more than the cap (bug 2)
//   pypool_contention kernels MS    "kernel" threads keep writing into blocks whose events
//                                   are pending for MS milliseconds: any early reuse of a
//                                   block shows up as corruption (exit 3)
//   pypool_contention bench         wait of a cache hit while another thread empties the
//                                   cache against a 300 ms event, and while
//                                   check_invariants walks 30k free blocks (figures only)
//   pypool_contention device_free   a free the backend refuses is not counted in
//                                   num_device_free
//   pypool_contention all           rounds 10000, rounds 1000 100, release 3, kernels 1500,
//                                   device_free (make sanitize)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "pypool/device_pool.h"
#include "pypool/host_backend.h"

using namespace pypool;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t MiB = std::size_t(1) << 20;

// Two threads meet here every round (C++17 has no std::barrier). It spins, so both
// leave it within a few cycles of each other: the race it sets up is a tight one.
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    const long gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_release);
    } else {
      while (gen_.load(std::memory_order_acquire) == gen) std::this_thread::yield();
    }
  }

 private:
  const int n_;
  std::atomic<int> count_{0};
  std::atomic<long> gen_{0};
};

// ------------------------------------------------------------------ bug 1
long contention_rounds(long rounds, long alloc_delay_us) {
  Config c;
  c.max_pool_size = 20 * MiB;
  auto be = make_host_backend(HostBackendOptions{});
  be->set_delays(static_cast<std::uint64_t>(alloc_delay_us), 0, 0);
  DevicePool pool(c, be);
  Barrier bar(2);
  std::atomic<long> ooms{0};
  auto worker = [&](int k) {
    for (long r = 0; r < rounds; ++r) {
      if (k == 0) pool.empty_cache();
      bar.wait();
      try {
        pool.free(pool.malloc(2 * MiB, 0));
      } catch (const OutOfMemoryError&) {
        ooms.fetch_add(1);
      }
      bar.wait();
    }
  };
  std::thread a(worker, 0), b(worker, 1);
  a.join();
  b.join();
  pool.check_invariants();
  std::printf("contention: %ld rounds (allocate delay %ld us), %ld spurious OOMs\n", rounds,
              alloc_delay_us, ooms.load());
  return ooms.load();
}

// ------------------------------------------------------------------ bug 2
// Returns the most the device held, over `rounds` of: a thread releases a cached
// 64 MiB segment with a slow free while another allocates 64 MiB, under a 64 MiB cap.
std::size_t release_rounds(int rounds) {
  auto be = make_host_backend(HostBackendOptions{});
  Config c;
  c.max_pool_size = 64 * MiB;
  DevicePool pool(c, be);
  std::size_t peak = 0;
  for (int r = 0; r < rounds; ++r) {
    be->set_delays(0, 0, 0);
    pool.free(pool.malloc(64 * MiB, 0));
    be->set_delays(0, 50000, 0);
    be->reset_calls();
    std::atomic<bool> stop{false};
    std::thread watch([&] {
      while (!stop.load()) {
        peak = std::max(peak, be->used());
        std::this_thread::yield();
      }
    });
    std::thread rel([&] { pool.empty_cache(); });
    std::thread grow([&] {
      while (be->calls().deallocate == 0) std::this_thread::yield();
      pool.free(pool.malloc(64 * MiB, 0));
    });
    rel.join();
    grow.join();
    stop = true;
    watch.join();
  }
  be->set_delays(0, 0, 0);
  pool.release_all_cached();
  pool.check_invariants();
  std::printf("release: %d rounds, device peak %zu MiB under a 64 MiB cap\n", rounds, peak / MiB);
  return peak;
}

// ------------------------------------------------------------------ kernel stress
// Note [Kernel stress]: a backend whose streams are real threads. A "kernel" enqueued on
// a stream writes its tag into a block and keeps checking it for a while; an event
// recorded on a stream completes when every kernel enqueued before it has finished.
// Workers free blocks while kernels still use them (after record_stream), so a block the
// pool hands out before its events complete is written by two owners at once, which
// either side sees as a changed tag. Memory comes from a HostBackend.
class KernelBackend final : public Backend {
 public:
  explicit KernelBackend(int streams) : host_(make_host_backend(HostBackendOptions{})) {
    for (int i = 0; i < streams; ++i) streams_.emplace_back(new StreamQ());
    for (int i = 0; i < streams; ++i) threads_.emplace_back([this, i] { run(*streams_[i]); });
  }
  ~KernelBackend() override {
    for (auto& s : streams_) {
      std::lock_guard<std::mutex> g(s->mu);
      s->stop = true;
      s->cv.notify_all();
    }
    for (auto& t : threads_) t.join();
  }
  // Enqueues a kernel on stream s (1-based) that owns [p, p+n) for `us` microseconds.
  void launch(Stream s, unsigned char* p, std::size_t n, unsigned char tag, int us) {
    StreamQ& q = *streams_[s - 1];
    std::lock_guard<std::mutex> g(q.mu);
    q.work.push_back(Kernel{p, n, tag, us});
    ++q.enqueued;
    q.cv.notify_all();
  }
  long corruptions() const { return corruptions_.load(); }

 private:
  struct Kernel {
    unsigned char* p;
    std::size_t n;
    unsigned char tag;
    int us;
  };
  struct StreamQ {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Kernel> work;
    std::uint64_t enqueued = 0, done = 0;
    bool stop = false;
  };
  void run(StreamQ& q) {
    for (;;) {
      Kernel k;
      {
        std::unique_lock<std::mutex> g(q.mu);
        q.cv.wait(g, [&] { return q.stop || !q.work.empty(); });
        if (q.work.empty()) return;
        k = q.work.front();
      }
      const auto end = Clock::now() + std::chrono::microseconds(k.us);
      std::memset(k.p, k.tag, k.n);
      do {
        std::this_thread::yield();
        for (std::size_t i = 0; i < k.n; ++i)
          if (k.p[i] != k.tag) {
            corruptions_.fetch_add(1);
            break;
          }
        std::memset(k.p, k.tag, k.n);
      } while (Clock::now() < end);
      std::lock_guard<std::mutex> g(q.mu);
      q.work.pop_front();
      ++q.done;
      q.cv.notify_all();
    }
  }
  StreamQ* q_of(Stream s) {
    if (s == 0 || s > streams_.size()) return nullptr;
    return streams_[s - 1].get();
  }

  void* do_allocate(std::size_t size) override { return host_->allocate(size); }
  void do_deallocate(void* p, std::size_t size) override { host_->deallocate(p, size); }
  Event do_record_event(Stream s) override {
    std::lock_guard<std::mutex> g(ev_mu_);
    const Event e = next_++;
    std::uint64_t ticket = 0;
    if (StreamQ* q = q_of(s)) {
      std::lock_guard<std::mutex> gq(q->mu);
      ticket = q->enqueued;
    }
    events_[e] = {s, ticket};
    return e;
  }
  bool done(Event e) {
    std::pair<Stream, std::uint64_t> st;
    {
      std::lock_guard<std::mutex> g(ev_mu_);
      st = events_.at(e);
    }
    StreamQ* q = q_of(st.first);
    if (q == nullptr) return true;
    std::lock_guard<std::mutex> gq(q->mu);
    return q->done >= st.second;
  }
  bool do_query_event(Event e) override { return done(e); }
  void do_synchronize_event(Event e) override {
    std::pair<Stream, std::uint64_t> st;
    {
      std::lock_guard<std::mutex> g(ev_mu_);
      st = events_.at(e);
    }
    StreamQ* q = q_of(st.first);
    if (q == nullptr) return;
    std::unique_lock<std::mutex> gq(q->mu);
    q->cv.wait(gq, [&] { return q->done >= st.second; });
  }
  void do_release_event(Event e) override {
    std::lock_guard<std::mutex> g(ev_mu_);
    events_.erase(e);
  }
  MemInfo do_mem_info() override { return host_->mem_info(); }
  const char* do_name() const noexcept override { return "kernels"; }

  std::shared_ptr<HostBackend> host_;
  std::vector<std::unique_ptr<StreamQ>> streams_;
  std::vector<std::thread> threads_;
  std::mutex ev_mu_;
  std::map<Event, std::pair<Stream, std::uint64_t>> events_;
  Event next_ = 1;
  std::atomic<long> corruptions_{0};
};

long kernel_stress(int ms) {
  constexpr int kWorkers = 4, kKernelStreams = 3;
  // Streams 1..3 run kernels; workers allocate on streams 11.. (not kernel streams: their
  // own work is "done" at once, as if synchronous).
  auto be = std::make_shared<KernelBackend>(kKernelStreams);
  Config c;
  c.max_pool_size = 256 * MiB;
  DevicePool pool(c, be);
  std::atomic<long> worker_corruptions{0}, ooms{0}, kernels{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> ws;
  for (int t = 0; t < kWorkers; ++t) {
    ws.emplace_back([&, t] {
      std::mt19937_64 rng(99 + t);
      const Stream mine = Stream(11 + t % 2);
      while (!stop.load(std::memory_order_relaxed)) {
        const std::size_t size = std::size_t(512) << (rng() % 12);  // 512 B .. 1 MiB
        unsigned char* p;
        try {
          p = static_cast<unsigned char*>(pool.malloc(size, mine));
        } catch (const OutOfMemoryError&) {
          ooms.fetch_add(1);
          continue;
        }
        const std::size_t n = std::min<std::size_t>(size, 256);
        const auto tag = static_cast<unsigned char>(1 + (rng() % 250));
        std::memset(p, tag, n);
        std::this_thread::yield();
        for (std::size_t i = 0; i < n; ++i)
          if (p[i] != tag) {
            worker_corruptions.fetch_add(1);
            break;
          }
        if (rng() % 2 == 0) {
          // Hand the block to a kernel on another stream, then free it at once: the
          // pool must keep it until that kernel is done.
          const Stream ks = Stream(1 + rng() % kKernelStreams);
          pool.record_stream(p, ks);
          be->launch(ks, p, n, static_cast<unsigned char>(tag ^ 0x80), 20 + int(rng() % 200));
          kernels.fetch_add(1);
        }
        pool.free(p);
        if (rng() % 997 == 0) pool.empty_cache();
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  stop = true;
  for (auto& w : ws) w.join();
  pool.release_all_cached();  // waits for every kernel's event
  pool.check_invariants();
  const long bad = worker_corruptions.load() + be->corruptions();
  std::printf("kernels: %ld kernels on blocks freed while in use, %ld OOMs, %ld corruptions "
              "(%ld seen by workers, %ld by kernels)\n",
              kernels.load(), ooms.load(), bad, worker_corruptions.load(), be->corruptions());
  return bad;
}

// ------------------------------------------------------------------ num_device_free
// A free the backend refuses (it throws) is not counted as a device free.
class RefusingFree final : public Backend {
 public:
  std::shared_ptr<HostBackend> h = make_host_backend(HostBackendOptions{});
  std::vector<std::pair<void*, std::size_t>> kept;
  ~RefusingFree() override {
    for (auto& [p, n] : kept) h->deallocate(p, n);
  }

 private:
  void* do_allocate(std::size_t n) override { return h->allocate(n); }
  void do_deallocate(void* p, std::size_t n) override {
    kept.emplace_back(p, n);
    throw BackendError("refused");
  }
  Event do_record_event(Stream s) override { return h->record_event(s); }
  bool do_query_event(Event e) override { return h->query_event(e); }
  void do_synchronize_event(Event e) override { h->synchronize_event(e); }
  void do_release_event(Event e) override { h->release_event(e); }
  MemInfo do_mem_info() override { return h->mem_info(); }
  const char* do_name() const noexcept override { return "refusing-free"; }
};

bool device_free_counts() {
  auto be = std::make_shared<RefusingFree>();
  std::int64_t n = -1;
  {
    DevicePool pool(Config{}, be);
    pool.free(pool.malloc(4 * MiB, 0));
    pool.empty_cache();
    pool.check_invariants();
    n = pool.stats().num_device_free;
  }
  std::printf("num_device_free after a refused free: %lld (expect 0)\n", static_cast<long long>(n));
  return n == 0;
}

// ------------------------------------------------------------------ bench
// Times cache-hit malloc+free pairs on stream s while `busy`; prints p50 / p99 / max.
// On a loaded machine the max includes this thread being descheduled mid-pair.
std::string hit_waits(std::atomic<bool>& busy, DevicePool& pool, Stream s) {
  std::vector<double> us;
  while (!busy.load()) std::this_thread::yield();
  while (busy.load()) {
    const auto t0 = Clock::now();
    pool.free(pool.malloc(4096, s));
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  if (us.empty()) return "no hit completed";
  std::sort(us.begin(), us.end());
  char buf[160];
  std::snprintf(buf, sizeof buf, "%zu hits, p50 %.1f us, p99 %.1f us, max %.1f us", us.size(),
                us[us.size() / 2], us[us.size() * 99 / 100], us.back());
  return buf;
}

void bench() {
  {
    // A cache hit on stream 1 while empty_cache waits for a 300 ms event on stream 3.
    auto be = make_host_backend(HostBackendOptions{});
    DevicePool pool(Config{}, be);
    pool.free(pool.malloc(4096, 1));
    be->set_event_latency(300000);
    void* p = pool.malloc(4096, 2);
    pool.record_stream(p, 3);
    pool.free(p);
    std::atomic<bool> busy{false};
    std::thread t([&] {
      busy = true;
      const auto t0 = Clock::now();
      pool.empty_cache();
      std::printf("bench: empty_cache waited %.0f ms for the event\n",
                  std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      busy = false;
    });
    const std::string w = hit_waits(busy, pool, 1);
    t.join();
    std::printf("bench: cache-hit malloc+free on another stream during it: %s\n", w.c_str());
  }
  {
    // check_invariants over 30k free blocks in one bin, and a cache hit meanwhile.
    Config c;
    DevicePool pool(c, make_host_backend(HostBackendOptions{}));
    std::vector<void*> ps;
    for (int i = 0; i < 60000; ++i) ps.push_back(pool.malloc(4096 + 512, 0));
    for (std::size_t i = 0; i < ps.size(); i += 2) pool.free(ps[i]);  // 30k free, not coalesced
    pool.free(pool.malloc(4096, 1));
    std::atomic<bool> busy{false};
    std::thread t([&] {
      busy = true;
      const auto t0 = Clock::now();
      pool.check_invariants();
      std::printf("bench: check_invariants with 30k free blocks in one bin: %.1f ms\n",
                  std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      busy = false;
    });
    const std::string w = hit_waits(busy, pool, 1);
    t.join();
    std::printf("bench: cache-hit malloc+free during it: %s\n", w.c_str());
    for (std::size_t i = 1; i < ps.size(); i += 2) pool.free(ps[i]);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "all";
  const long n = argc > 2 ? std::atol(argv[2]) : 0;
  const long us = argc > 3 ? std::atol(argv[3]) : 0;
  int rc = 0;
  if (mode == "rounds")
    if (contention_rounds(n > 0 ? n : 20000, us) != 0) rc = 1;
  if (mode == "all")
    if (contention_rounds(10000, 0) + contention_rounds(1000, 100) != 0) rc = 1;
  if (mode == "release" || mode == "all")
    if (release_rounds(n > 0 ? int(n) : 3) > 64 * MiB) rc = 1;
  if (mode == "kernels" || mode == "all")
    if (kernel_stress(n > 0 ? int(n) : 1500) != 0) rc = 3;
  if (mode == "device_free" || mode == "all")
    if (!device_free_counts()) rc = 1;
  if (mode == "bench") bench();
  if (rc != 0) std::printf("FAILED\n");
  return rc;
}
