// Host backend: memory from the OS standing in for a device, with what tests need to
// drive every path of a pool on a CPU: a capacity, fault injection, controllable stream
// events, and an mmap analogue of CUDA's virtual memory management.
#pragma once

#include <array>
#include <atomic>
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
  // Events: id -> (stream, complete)
  std::unordered_map<Event, std::pair<Stream, bool>> events_;
  std::unordered_set<Stream> held_;
  Event next_event_ = 1;
  // Relaxed atomics: counted on entry, before mu_, by operations that take no lock too.
  std::array<std::atomic<std::uint64_t>, static_cast<int>(Op::kCount)> op_calls_{};
};

}  // namespace pypool
