// The process-wide registry of per-device pools behind the C ABI (the one global).
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "pypool/device_pool.h"

namespace pypool {

class Registry {
 public:
  static constexpr int kMaxDevices = 64;

  static Registry& instance();

  // Fixes the backend kind ("auto", "cuda", "host", "null") and the config for every
  // pool made from now on. Throws std::logic_error when pools exist already and the
  // settings differ (the same settings again are a no-op).
  void configure(const std::string& backend, const Config& cfg, std::size_t host_capacity);
  // Takes `cfg` as the config of every pool, those that exist included (their live
  // fields, DevicePool::update_config; Note [Live settings]). Every pool is checked
  // before any changes: std::invalid_argument, with nothing changed, when `cfg` is
  // invalid or differs from the current config in a field fixed while pools exist.
  void update_config(const Config& cfg);
  bool configured() const;
  std::string backend_kind() const;  // resolved kind ("cuda" / "host" / "null")
  Config config() const;

  // The pool of a device, made on first use (configuring with defaults if needed).
  // Throws std::invalid_argument for a device out of range.
  DevicePool& pool(int device) {
    if (static_cast<unsigned>(device) < kMaxDevices) {
      DevicePool* p = pools_[device].load(std::memory_order_acquire);
      if (p != nullptr) return *p;
    }
    return make_pool(device);
  }
  // nullptr when the device has no pool yet.
  DevicePool* existing(int device) const {
    if (static_cast<unsigned>(device) >= kMaxDevices) return nullptr;
    return pools_[device].load(std::memory_order_acquire);
  }
  std::vector<int> devices() const;
  // Context capture for pools made from now on (and those that exist): the leak
  // exit check needs stacks from a device's first allocation, which happens in C++.
  void set_capture_new_pools(ContextHook hook, void* user, bool on);
  bool owns(const DevicePool* pool) const;
  // Drops every pool (tests only). Throws if any pool has live allocations.
  void reset();
  // Note [Fork safety] (device_pool.cpp): taken before fork, released after it.
  void lock_for_fork() { mu_.lock(); }
  void unlock_after_fork() { mu_.unlock(); }

 private:
  Registry() = default;
  DevicePool& make_pool(int device);
  std::shared_ptr<Backend> make_backend_locked(int device);

  mutable std::mutex mu_;
  bool configured_ = false;
  std::string kind_ = "auto";
  Config cfg_{};
  std::size_t host_capacity_ = std::size_t(80) << 30;
  ContextHook capture_hook_ = nullptr;
  void* capture_user_ = nullptr;
  bool capture_new_ = false;
  std::array<std::atomic<DevicePool*>, kMaxDevices> pools_{};
  std::vector<std::unique_ptr<DevicePool>> retired_;  // kept alive after reset()
};

}  // namespace pypool
