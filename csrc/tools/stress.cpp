// Multithreaded stress driver for the core, run under ASan+UBSan and TSan by .ci/run.
// Threads malloc/free random sizes on shared pools (fixed and expandable segments, with
// record_stream and held streams) while another thread empties the cache, reads stats,
// checks invariants and changes the live settings. Exit code 0 = clean.
#include <atomic>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "pypool/device_pool.h"
#include "pypool/c_api.h"
#include "pypool/host_backend.h"

using namespace pypool;

namespace {

int run(bool expandable, int threads, int ops) {
  HostBackendOptions o;
  o.capacity = std::size_t(1) << 30;  // small cap so the out-of-memory path runs too
  auto be = make_host_backend(o);
  Config c;
  c.expandable_segments = expandable;
  // Above the 1 GiB device, far below TSan's room (run_roomy_expandable): with the
  // default 1 TiB a failed reservation made every expandable malloc an allowed OOM.
  c.expandable_reserve = std::size_t(4) << 30;
  c.max_pool_size = std::size_t(768) << 20;
  DevicePool pool(c, be);
  std::atomic<bool> stop{false};
  std::atomic<long> ooms{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      std::mt19937_64 rng(1234 + t);
      std::vector<std::pair<void*, std::size_t>> live;
      const Stream my = Stream(t % 2 + 1);
      for (int i = 0; i < ops; ++i) {
        const int r = static_cast<int>(rng() % 100);
        if (r < 50 || live.empty()) {
          std::size_t size = 1 + rng() % (rng() % 8 == 0 ? (std::size_t(48) << 20) : (std::size_t(1) << 20));
          try {
            void* p = pool.malloc(size, my);
            std::memset(p, t, std::min<std::size_t>(size, 64));  // touch: overlap shows as corruption
            if (rng() % 16 == 0) pool.record_stream(p, Stream(100 + t));
            live.emplace_back(p, size);
          } catch (const OutOfMemoryError&) {
            ooms.fetch_add(1);
          }
        } else {
          const std::size_t j = rng() % live.size();
          auto [p, size] = live[j];
          const unsigned char* bytes = static_cast<const unsigned char*>(p);
          for (std::size_t k = 0; k < std::min<std::size_t>(size, 64); ++k)
            if (bytes[k] != static_cast<unsigned char>(t)) {
              std::fprintf(stderr, "corruption: block %p overwritten\n", p);
              std::abort();
            }
          pool.free(p);
          live[j] = live.back();
          live.pop_back();
        }
        if (i % 512 == 0) {
          be->hold_stream(Stream(100 + t));
          be->release_stream(Stream(100 + t));
        }
      }
      for (auto& [p, s] : live) pool.free(p);
    });
  }
  std::thread checker([&] {
    for (unsigned n = 0; !stop.load(); ++n) {
      pool.check_invariants();
      (void)pool.stats();
      (void)pool.segments();
      pool.empty_cache();
      // Live settings change under the allocating threads (Note [Live settings]).
      Config next = pool.config();
      // Both rounding fields (at most one set): none, 4 divisions, or per interval.
      next.round_up_divisions = n % 3 == 0 ? 4 : 0;
      next.round_up_interval_divisions = n % 3 == 1 ? 0x1111111111222333ull : 0;
      next.max_split_size = n % 3 == 0 ? Config::kUnlimited : std::size_t(24) << 20;
      next.garbage_collection_threshold = n % 5 == 0 ? 0.5 : 0.0;
      next.release_threshold = n % 7 == 0 ? std::size_t(8) << 20 : 0;
      next.reclaim_threshold = n % 4 == 0 ? 0.0 : 0.8;
      next.memory_fraction = n % 11 == 0 ? 0.95 : 0.0;  // the cap, set under the locks
      pool.update_config(next);
      std::this_thread::yield();
    }
  });
  for (auto& th : ts) th.join();
  stop = true;
  checker.join();
  for (int t = 0; t < threads; ++t) be->release_stream(Stream(100 + t));
  (void)pool.malloc(0, 0);  // processes pending events
  void* p = pool.malloc(512, 0);
  pool.free(p);
  pool.check_invariants();
  pool.release_all_cached();
  pool.check_invariants();
  const Stats s = pool.stats();
  std::printf("stress expandable=%d: %ld ooms, %lld device allocs, reserved after release %lld\n",
              expandable, ooms.load(), static_cast<long long>(s.num_device_alloc),
              static_cast<long long>(s.reserved_bytes[kStatAll].current));
  if (s.allocation[kStatAll].current != 0 || s.active[kStatAll].current != 0 ||
      s.oversize_allocations.current != 0) {
    std::fprintf(stderr, "live blocks remain after all frees\n");
    return 1;
  }
  return 0;
}

// A roomy device, one stream, expandable segments and a slow vmm_map: growths race cache
// hits on the block they extend (Note [Growth meets a cache hit]). Live bytes stay far
// below the device, so any out-of-memory error is spurious.
int run_roomy_expandable(int threads, int ops) {
  HostBackendOptions o;
  o.capacity = std::size_t(16) << 30;  // MAP_NORESERVE: only touched pages cost
  auto be = make_host_backend(o);
  static_cast<HostBackend&>(*be).set_delays(20, 0, 0);
  Config c;
  c.expandable_segments = true;
  // 32 GiB of address space, not the default 1 TiB: under TSan, whose shadow leaves a
  // small application range, a 1 TiB reservation failed in about 1 run in 4 (ASLR), and
  // every malloc then reported out of memory.
  c.expandable_reserve = std::size_t(32) << 30;
  DevicePool pool(c, be);
  std::atomic<long> ooms{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      std::mt19937_64 rng(555 + t);
      std::vector<void*> live;
      for (int i = 0; i < ops; ++i) {
        if (live.size() < 32 && (rng() % 2 == 0 || live.empty())) {
          const std::size_t size = 1 + rng() % (std::size_t(12) << 20);
          try {
            live.push_back(pool.malloc(size, 0));
          } catch (const OutOfMemoryError& e) {
            if (ooms.fetch_add(1) == 0) std::fprintf(stderr, "spurious OOM: %s\n", e.what());
          }
        } else {
          const std::size_t k = rng() % live.size();
          pool.free(live[k]);
          live[k] = live.back();
          live.pop_back();
        }
        if (i % 997 == 0) pool.empty_cache();
      }
      for (void* p : live) pool.free(p);
    });
  for (auto& th : ts) th.join();
  pool.check_invariants();
  const Stats s = pool.stats();
  std::printf("stress roomy expandable: %ld ooms, %lld retries\n", ooms.load(),
              static_cast<long long>(s.num_alloc_retries));
  // No cap and a roomy device: a retry (which flushes the cache) is as spurious as an OOM.
  return ooms.load() == 0 && s.num_alloc_retries == 0 && s.allocation[kStatAll].current == 0 ? 0 : 1;
}

int run_c_api(int threads, int ops) {
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([=] {
      std::mt19937_64 rng(99 + t);
      std::vector<void*> live;
      for (int i = 0; i < ops; ++i) {
        if (rng() % 2 == 0 || live.empty()) {
          live.push_back(pypool_malloc(1 + rng() % 100000, 0, nullptr));
        } else {
          pypool_free(live.back(), 0, 0, nullptr);
          live.pop_back();
        }
      }
      for (void* p : live) pypool_free(p, 0, 0, nullptr);
    });
  for (auto& th : ts) th.join();
  pypool_empty_cache();
  return pypool_error_count() == 0 ? 0 : 1;
}

// torch's entry points (Note [Torch entry points]) while one thread keeps turning caching
// off and on: cached and uncached pointers mix in every thread's live set and are freed
// in whatever mode is on then; none may be lost, reported or freed twice.
int run_torch_modes(int threads, int ops) {
  std::atomic<bool> done{false};
  std::thread toggler([&] {
    for (int i = 0; !done.load(); ++i) {
      pypool_set_caching_enabled(i % 2);
      std::this_thread::yield();
    }
    pypool_set_caching_enabled(1);
  });
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([=] {
      std::mt19937_64 rng(7 + t);
      std::vector<void*> live;
      for (int i = 0; i < ops; ++i) {
        if (rng() % 2 == 0 || live.empty()) {
          live.push_back(pypool_torch_malloc(1 + rng() % 100000, 0, nullptr));
        } else {
          const std::size_t k = rng() % live.size();
          pypool_torch_free(live[k], 0, 0, nullptr);
          live[k] = live.back();
          live.pop_back();
        }
      }
      for (void* p : live) pypool_torch_free(p, 0, 0, nullptr);
    });
  for (auto& th : ts) th.join();
  done.store(true);
  toggler.join();
  pypool_empty_cache();
  const bool clean = pypool_error_count() == 0 && pypool_uncached_count() == 0;
  if (!clean)
    std::fprintf(stderr, "torch modes: %llu errors, %zu uncached left\n",
                 static_cast<unsigned long long>(pypool_error_count()), pypool_uncached_count());
  return clean ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const int ops = argc > 1 ? std::atoi(argv[1]) : 20000;
  int rc = run(false, 4, ops);
  rc |= run(true, 4, ops);
  rc |= run_roomy_expandable(4, ops / 4);
  rc |= run_c_api(4, ops);
  rc |= run_torch_modes(4, ops);
  std::printf(rc == 0 ? "stress: clean\n" : "stress: FAILED\n");
  return rc;
}
