// The null backend: addresses without memory, for replaying traces at full size.
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>

#include "pypool/backends.h"

namespace pypool {

namespace {

// Note [Null backend]: replaying a trace of an 80 GiB training run must not need 80 GiB.
// This backend hands out addresses from a 2^62-byte virtual counter and never touches
// them; only the pool's bookkeeping runs. Capacity and VMM behave like the host's.
class NullBackend final : public Backend {
 public:
  explicit NullBackend(std::size_t capacity) : capacity_(capacity) {}

 private:
  void* do_allocate(std::size_t size) override {
    std::lock_guard<std::mutex> g(mu_);
    if (size > capacity_ - used_) return nullptr;
    void* p = bump(size);
    if (p != nullptr) used_ += size;
    return p;
  }
  void do_deallocate(void*, std::size_t size) override {
    std::lock_guard<std::mutex> g(mu_);
    used_ -= size;
  }
  Event do_record_event(Stream) override { return 1; }
  bool do_query_event(Event) override { return true; }
  void do_synchronize_event(Event) override {}
  void do_release_event(Event) override {}
  MemInfo do_mem_info() override {
    std::lock_guard<std::mutex> g(mu_);
    return MemInfo{capacity_ - used_, capacity_};
  }
  const char* do_name() const noexcept override { return "null"; }
  bool do_supports_vmm() const noexcept override { return true; }
  std::size_t do_vmm_granularity() const override { return std::size_t(2) << 20; }
  void* do_vmm_reserve(std::size_t size) override {
    std::lock_guard<std::mutex> g(mu_);
    return bump(size);
  }
  void do_vmm_release_range(void*, std::size_t) override {}
  PhysHandle do_vmm_map(void*, std::size_t size) override {
    std::lock_guard<std::mutex> g(mu_);
    if (size > capacity_ - used_) return 0;
    used_ += size;
    return 1;
  }
  void do_vmm_unmap(void*, std::size_t size, PhysHandle) override {
    std::lock_guard<std::mutex> g(mu_);
    used_ -= size;
  }
  // nullptr once the (2^64-byte) address space would wrap: never hand out an address twice.
  void* bump(std::size_t size) {
    if (size > UINTPTR_MAX - next_ - kAlign) return nullptr;
    const std::uintptr_t p = next_;
    next_ += (size + kAlign - 1) / kAlign * kAlign;
    return reinterpret_cast<void*>(p);
  }

  static constexpr std::uintptr_t kAlign = std::uintptr_t(2) << 20;
  std::mutex mu_;
  std::size_t capacity_;
  std::size_t used_ = 0;
  std::uintptr_t next_ = std::uintptr_t(1) << 44;
};

}  // namespace

std::shared_ptr<Backend> make_null_backend(std::size_t capacity) {
  if (capacity == 0) throw std::invalid_argument("null backend: capacity must be > 0");
  return std::make_shared<NullBackend>(capacity);
}

}  // namespace pypool
