// The narrow layer that gets raw memory and stream events for a pool.
//
// Every backend (host, null/bookkeeping, CUDA driver, VMM) implements the private
// virtual do_* functions; callers use the public non-virtual wrappers, which is where
// shared preconditions are checked once.
//
// Contract for implementers (all functions):
//   * thread-safe: pools call them without holding their own lock;
//   * never throw for "no memory": return nullptr / false instead; throw only for
//     programming errors or a broken device (BackendError);
//   * may block (cuMemFree synchronizes the device) unless said otherwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace pypool {

using Stream = std::uintptr_t;  // cudaStream_t / CUstream as an integer; 0 = default stream
using Event = std::uintptr_t;   // opaque backend handle; 0 = "no event"

struct BackendError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct MemInfo {
  std::size_t free = 0;
  std::size_t total = 0;
};

// Physical-memory handle for virtual-memory (expandable) segments.
using PhysHandle = std::uintptr_t;

// The operations of a Backend, X(name), in the order declared below. Backends that
// count their calls (HostBackend::calls) expand this list, so a new operation is counted
// as soon as it is listed here.
#define PYPOOL_BACKEND_OPS(X) \
  X(allocate)                 \
  X(deallocate)               \
  X(record_event)             \
  X(query_event)              \
  X(synchronize_event)        \
  X(release_event)            \
  X(mem_info)                 \
  X(vmm_reserve)              \
  X(vmm_release_range)        \
  X(vmm_map)                  \
  X(vmm_unmap)

class Backend {
 public:
  virtual ~Backend() = default;
  Backend() = default;
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  // Returns `size` bytes aligned to at least 512 B, or nullptr when out of memory.
  // Pre: size > 0. May block.
  void* allocate(std::size_t size) {
    if (size == 0) throw std::invalid_argument("Backend::allocate: size 0");
    return do_allocate(size);
  }
  // Pre: p came from allocate(size) of this backend and was not released yet. May block.
  void deallocate(void* p, std::size_t size) {
    if (p != nullptr) do_deallocate(p, size);
  }

  // Records an event on `stream` that completes once work queued so far on it is done.
  // Never blocks.
  Event record_event(Stream stream) { return do_record_event(stream); }
  // True once the event has completed. Never blocks.
  bool query_event(Event e) { return do_query_event(e); }
  // Waits for the event. Blocks.
  void synchronize_event(Event e) { do_synchronize_event(e); }
  // Returns the event to the backend. Never blocks.
  void release_event(Event e) { do_release_event(e); }

  // Free and total memory of the device as the backend sees it.
  MemInfo mem_info() { return do_mem_info(); }
  const char* name() const noexcept { return do_name(); }

  // ---- virtual memory (expandable segments); supports_vmm() false => not called ----
  bool supports_vmm() const noexcept { return do_supports_vmm(); }
  // Mapping granularity in bytes (a power of two).
  std::size_t vmm_granularity() const { return do_vmm_granularity(); }
  // Reserves `size` bytes of address space (no memory). nullptr on failure.
  void* vmm_reserve(std::size_t size) { return do_vmm_reserve(size); }
  void vmm_release_range(void* base, std::size_t size) { do_vmm_release_range(base, size); }
  // Creates `size` bytes of physical memory and maps it at `addr` (inside a reserved
  // range, granularity aligned). Returns 0 when the device is out of memory.
  PhysHandle vmm_map(void* addr, std::size_t size) { return do_vmm_map(addr, size); }
  // Unmaps and releases the physical memory mapped at `addr` by vmm_map. May block.
  void vmm_unmap(void* addr, std::size_t size, PhysHandle h) { do_vmm_unmap(addr, size, h); }

 private:
  virtual void* do_allocate(std::size_t size) = 0;
  virtual void do_deallocate(void* p, std::size_t size) = 0;
  virtual Event do_record_event(Stream stream) = 0;
  virtual bool do_query_event(Event e) = 0;
  virtual void do_synchronize_event(Event e) = 0;
  virtual void do_release_event(Event e) = 0;
  virtual MemInfo do_mem_info() = 0;
  virtual const char* do_name() const noexcept = 0;

  virtual bool do_supports_vmm() const noexcept { return false; }
  virtual std::size_t do_vmm_granularity() const { return 2u << 20; }
  virtual void* do_vmm_reserve(std::size_t) { return nullptr; }
  virtual void do_vmm_release_range(void*, std::size_t) {}
  virtual PhysHandle do_vmm_map(void*, std::size_t) { return 0; }
  virtual void do_vmm_unmap(void*, std::size_t, PhysHandle) {}
};

}  // namespace pypool
