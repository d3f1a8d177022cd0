#include "pypool/registry.h"

#include <stdexcept>

#include "pypool/backends.h"
#include "pypool/host_backend.h"

namespace pypool {

Registry& Registry::instance() {
  // Note [Registry lifetime]: never destroyed. torch may free tensors from static
  // destructors after ours would have run; a leaked registry keeps those frees valid and
  // the OS takes the memory back at exit.
  static Registry* r = new Registry();
  return *r;
}

void Registry::configure(const std::string& backend, const Config& cfg, std::size_t host_capacity) {
  if (backend != "auto" && backend != "cuda" && backend != "host" && backend != "null")
    throw std::invalid_argument("backend must be one of 'auto', 'cuda', 'host', 'null'; got '" +
                                backend + "'");
  cfg.validate_new();
  std::lock_guard<std::mutex> g(mu_);
  bool any = false;
  for (auto& p : pools_) any = any || p.load() != nullptr;
  std::string kind = backend;
  if (kind == "auto") {
    std::string why;
    kind = cuda_device_count(&why) > 0 ? "cuda" : "host";
  }
  if (any) {
    if (kind == kind_ && cfg == cfg_ && host_capacity == host_capacity_)
      return;
    throw std::logic_error(
        "pypool is already in use with a different configuration (backend '" + kind_ +
        "', " + cfg_.to_string() + "); the allocator is fixed once memory has been allocated");
  }
  kind_ = kind;
  cfg_ = cfg;
  host_capacity_ = host_capacity;
  configured_ = true;
}

void Registry::update_config(const Config& cfg) {
  // Also the config of the pools made later: checked as one being made.
  cfg.validate_new();
  std::lock_guard<std::mutex> g(mu_);
  std::vector<DevicePool*> live;
  for (auto& p : pools_)
    if (DevicePool* pool = p.load(); pool != nullptr) live.push_back(pool);
  for (DevicePool* pool : live) pool->check_update(cfg);
  for (DevicePool* pool : live) pool->update_config(cfg);
  cfg_ = cfg;
}

bool Registry::configured() const {
  std::lock_guard<std::mutex> g(mu_);
  return configured_;
}

std::string Registry::backend_kind() const {
  std::lock_guard<std::mutex> g(mu_);
  return kind_;
}

Config Registry::config() const {
  std::lock_guard<std::mutex> g(mu_);
  return cfg_;
}

std::vector<int> Registry::devices() const {
  std::vector<int> out;
  for (int i = 0; i < kMaxDevices; ++i)
    if (pools_[i].load(std::memory_order_acquire) != nullptr) out.push_back(i);
  return out;
}

std::shared_ptr<Backend> Registry::make_backend_locked(int device) {
  if (kind_ == "auto") {
    std::string why;
    kind_ = cuda_device_count(&why) > 0 ? "cuda" : "host";
  }
  if (kind_ == "cuda") return make_cuda_backend(device);
  if (kind_ == "null") return make_null_backend(host_capacity_);
  HostBackendOptions o;
  o.capacity = host_capacity_;
  return make_host_backend(o);
}

DevicePool& Registry::make_pool(int device) {
  if (device < 0 || device >= kMaxDevices)
    throw std::invalid_argument("pypool: device index " + std::to_string(device) +
                                " out of range [0, " + std::to_string(kMaxDevices) + ")");
  std::lock_guard<std::mutex> g(mu_);
  if (DevicePool* p = pools_[device].load(); p != nullptr) return *p;
  configured_ = true;
  auto* pool = new DevicePool(cfg_, make_backend_locked(device), device);
  if (capture_new_) {
    pool->set_context_hook(capture_hook_, capture_user_);
    pool->set_capture_context(true);
  }
  pools_[device].store(pool, std::memory_order_release);
  return *pool;
}

void Registry::set_capture_new_pools(ContextHook hook, void* user, bool on) {
  std::lock_guard<std::mutex> g(mu_);
  capture_hook_ = hook;
  capture_user_ = user;
  capture_new_ = on;
  for (auto& p : pools_) {
    if (DevicePool* pool = p.load(); pool != nullptr && on) {
      pool->set_context_hook(hook, user);
      pool->set_capture_context(true);
    }
  }
}

bool Registry::owns(const DevicePool* pool) const {
  for (auto& p : pools_)
    if (p.load(std::memory_order_acquire) == pool) return true;
  return false;
}

void Registry::reset() {
  std::lock_guard<std::mutex> g(mu_);
  for (auto& p : pools_) {
    DevicePool* pool = p.load();
    if (pool != nullptr && pool->stats().allocation[kStatAll].current != 0)
      throw std::logic_error("pypool: cannot reset the registry while device " +
                             std::to_string(pool->device()) + " has live allocations");
  }
  for (auto& p : pools_) {
    // Another thread may still hold a reference obtained before the reset: keep the
    // object alive, only release its cached memory.
    if (DevicePool* pool = p.exchange(nullptr); pool != nullptr) {
      pool->release_all_cached();
      retired_.emplace_back(pool);
    }
  }
  configured_ = false;
  capture_new_ = false;
  kind_ = "auto";
  cfg_ = Config{};
}

}  // namespace pypool
