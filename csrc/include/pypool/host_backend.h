// Host backend: memory from the OS standing in for a device, with what tests need to
// drive every path of a pool on a CPU: a capacity, fault injection, controllable stream
// events, and an mmap analogue of CUDA's virtual memory management.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "pypool/backend.h"
#include "pypool/backends.h"

namespace pypool {

// Calls made to a HostBackend, one counter per Backend operation (PYPOOL_BACKEND_OPS),
// failed calls included: what a test needs to bound the work a pool does.
struct BackendCalls {
#define PYPOOL_DECLARE_CALLS(name) std::uint64_t name = 0;
  PYPOOL_BACKEND_OPS(PYPOOL_DECLARE_CALLS)
#undef PYPOOL_DECLARE_CALLS
};

class HostBackend final : public Backend {
 public:
  explicit HostBackend(const HostBackendOptions& opts);
  ~HostBackend() override;

  // ---- fault injection (both apply to allocate and vmm_map) ----
  // The k-th allocation from now (1-based) fails; 0 clears it.
  void fail_allocation_at(std::uint64_t k);
  // Allocations fail once `bytes` would be exceeded in total use; kUnlimited clears it.
  void set_byte_budget(std::size_t bytes);
  void set_capacity(std::size_t bytes);

  // ---- controllable events ----
  // While a stream is held, events recorded on it stay pending (its "kernels" run).
  void hold_stream(Stream s);
  // Completes every pending event of the stream and stops holding it.
  void release_stream(Stream s);
  std::size_t pending_events() const;

  // ---- blocking calls (Note [Host backend delays]) ----
  // Sleep this long (microseconds) in every allocate / vmm_map, deallocate / vmm_unmap,
  // and synchronize_event, standing in for cuMemAlloc, cuMemFree (which synchronizes
  // the device) and cuEventSynchronize. A deallocated range still counts as used
  // until its delay is over: the device has not got it back yet.
  void set_delays(std::uint64_t allocate_us, std::uint64_t deallocate_us,
                  std::uint64_t synchronize_us);
  // Events complete `us` after they are recorded (0: at once); query_event says false
  // until then and synchronize_event sleeps until then.
  void set_event_latency(std::uint64_t us);
  // Whether synchronize_event on an event of a held stream waits for release_stream
  // (true) or completes the event itself (false, the default: a single-threaded test
  // has nobody to release the stream).
  void set_sync_waits_for_release(bool on);

  // ---- counters ----
  std::size_t used() const;
  std::uint64_t num_allocations() const;  // successful allocate + vmm_map calls
  std::uint64_t num_failures() const;
  std::size_t live_allocations() const;
  BackendCalls calls() const;
  void reset_calls();

 private:
  void* do_allocate(std::size_t size) override;
  void do_deallocate(void* p, std::size_t size) override;
  Event do_record_event(Stream stream) override;
  bool do_query_event(Event e) override;
  void do_synchronize_event(Event e) override;
  void do_release_event(Event e) override;
  MemInfo do_mem_info() override;
  const char* do_name() const noexcept override { return "host"; }
  bool do_supports_vmm() const noexcept override { return true; }
  std::size_t do_vmm_granularity() const override { return kGranularity; }
  void* do_vmm_reserve(std::size_t size) override;
  void do_vmm_release_range(void* base, std::size_t size) override;
  PhysHandle do_vmm_map(void* addr, std::size_t size) override;
  void do_vmm_unmap(void* addr, std::size_t size, PhysHandle h) override;

  bool admit_locked(std::size_t size);  // capacity + fault checks

  enum class Op : int {
#define PYPOOL_OP_ENUM(name) name,
    PYPOOL_BACKEND_OPS(PYPOOL_OP_ENUM)
#undef PYPOOL_OP_ENUM
    kCount
  };
  void count(Op op) noexcept { op_calls_[static_cast<int>(op)].fetch_add(1, std::memory_order_relaxed); }

  static constexpr std::size_t kGranularity = std::size_t(2) << 20;
  mutable std::mutex mu_;
  HostBackendOptions opts_;
  std::size_t used_ = 0;
  std::size_t budget_;
  std::uint64_t fail_at_ = 0;  // 0 = off
  std::uint64_t calls_ = 0;
  std::uint64_t ok_ = 0;
  std::uint64_t failures_ = 0;
  std::unordered_map<std::uintptr_t, std::size_t> live_;
  std::unordered_map<PhysHandle, std::size_t> phys_;
  PhysHandle next_phys_ = 1;
  using Clock = std::chrono::steady_clock;
  struct EventState {
    Stream stream;
    bool released;          // not recorded on a held stream, or the stream was released since
    Clock::time_point ready;  // completes at this time once released (event latency)
  };
  std::unordered_map<Event, EventState> events_;
  std::condition_variable released_cv_;  // a stream was released (with mu_)
  std::atomic<std::uint64_t> alloc_delay_us_{0}, dealloc_delay_us_{0}, sync_delay_us_{0},
      event_latency_us_{0};
  bool sync_waits_for_release_ = false;
  std::unordered_set<Stream> held_;
  Event next_event_ = 1;
  // Relaxed atomics: counted on entry, before mu_, by operations that take no lock too.
  std::array<std::atomic<std::uint64_t>, static_cast<int>(Op::kCount)> op_calls_{};
};

}  // namespace pypool
