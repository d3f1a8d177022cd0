// CUDA backend: device memory, stream events and virtual memory through the CUDA
// driver API of one device's primary context.
//
// Note [CUDA driver via dlopen]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// We call the driver API (not the runtime) and load it with dlopen("libcuda.so.1") at
// run time instead of linking it. libcuda ships with the NVIDIA driver, not the toolkit,
// so a linked extension would fail to import on any machine without a GPU; loaded
// lazily, one build imports everywhere and cuda_device_count() just answers 0 with the
// reason. The driver API also needs no runtime version match with PyTorch's libcudart.
//
// Every call runs with the device's *primary* context current (retained once per
// backend, pushed/popped around each call by `Current`). The primary context is the one
// the CUDA runtime, and so PyTorch, uses: pointers, streams and events we hand out are
// then valid in PyTorch's kernels and vice versa, and we never create a second context
// (hundreds of MiB of device memory each, and streams would not mix). Push/pop instead
// of cuCtxSetCurrent leaves whatever context the calling thread had untouched.

#include "pypool/backends.h"

#ifdef PYPOOL_WITH_CUDA

#include <dlfcn.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "cuda_driver.h"

namespace pypool {
namespace cuda {
namespace {

constexpr const char* kNoDevice =
    "the NVIDIA driver is loaded but no CUDA device is visible (check CUDA_VISIBLE_DEVICES)";

struct Loaded {
  Driver table;
  std::string why;  // empty once usable
};

Loaded load() noexcept {
  Loaded r;
  try {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* err = dlerror();
      r.why = "libcuda.so.1 not found: no NVIDIA driver on this machine";
      if (err != nullptr) r.why += std::string(" (") + err + ")";
      return r;
    }
    // Never dlclose: other libraries (PyTorch) share the handle, and at exit the order
    // in which static destructors still call into the driver is unknowable.
#define PYPOOL_CUDA_RESOLVE(field, symbol, params)                                 \
  r.table.field = reinterpret_cast<decltype(r.table.field)>(dlsym(lib, #symbol));  \
  if (r.table.field == nullptr) {                                                  \
    r.why = "libcuda.so.1 has no " #symbol ": the NVIDIA driver is too old";        \
    return r;                                                                      \
  }
    PYPOOL_CUDA_DRIVER_API(PYPOOL_CUDA_RESOLVE)
#undef PYPOOL_CUDA_RESOLVE
    const CUresult rc = r.table.Init(0);
    if (rc == CUDA_ERROR_NO_DEVICE) {
      r.why = kNoDevice;
    } else if (rc != CUDA_SUCCESS) {
      r.why = error_text(r.table, rc, "cuInit");
    }
  } catch (...) {  // std::bad_alloc building a message
    r.why = "loading libcuda.so.1 failed";
  }
  return r;
}

}  // namespace

const Driver* driver(std::string* why) noexcept {
  static const Loaded loaded = load();  // once; thread-safe static initialization
  if (loaded.why.empty()) return &loaded.table;
  if (why != nullptr) {
    try { *why = loaded.why; } catch (...) {}  // bad_alloc: leave *why as it was
  }
  return nullptr;
}

std::string error_text(const Driver& d, CUresult rc, const char* call) {
  const char* name = nullptr;
  const char* text = nullptr;
  if (d.GetErrorName == nullptr || d.GetErrorName(rc, &name) != CUDA_SUCCESS) name = nullptr;
  if (d.GetErrorString == nullptr || d.GetErrorString(rc, &text) != CUDA_SUCCESS) text = nullptr;
  std::string s = std::string(call) + ": ";
  s += name != nullptr ? std::string(name) : "CUresult " + std::to_string(static_cast<int>(rc));
  if (text != nullptr) s += std::string(" (") + text + ")";
  return s;
}

}  // namespace cuda

// The driver's types and constants (cuda_driver.h), unqualified as in CUDA code.
using namespace cuda;

namespace {

static_assert(sizeof(CUdeviceptr) <= sizeof(std::uintptr_t), "device pointers fit a pointer");
static_assert(sizeof(CUmemGenericAllocationHandle) <= sizeof(PhysHandle), "handles fit");
static_assert(sizeof(CUevent) <= sizeof(Event) && sizeof(CUstream) <= sizeof(Stream), "");

CUdeviceptr dptr(void* p) { return static_cast<CUdeviceptr>(reinterpret_cast<std::uintptr_t>(p)); }
void* hptr(CUdeviceptr p) { return reinterpret_cast<void*>(static_cast<std::uintptr_t>(p)); }

// Paths that run from destructors and at process exit tolerate a driver that has
// already shut down (CUDA_ERROR_DEINITIALIZED): the memory is gone with it anyway.
constexpr bool kTolerateTeardown = true;

class CudaBackend final : public Backend {
 public:
  CudaBackend(const cuda::Driver& d, int ordinal, CUdevice dev) : d_(d), ordinal_(ordinal), dev_(dev) {
    check(d_.DevicePrimaryCtxRetain(&ctx_, dev_), "cuDevicePrimaryCtxRetain");
    try {
      probe_vmm();
    } catch (...) {
      d_.DevicePrimaryCtxRelease(dev_);
      throw;
    }
  }

  ~CudaBackend() override {
    // Events still handed out (never released) are leaked: their owners may use them.
    try {
      Current cur(*this, kTolerateTeardown);
      if (cur.active()) {
        for (CUevent ev : free_events_) d_.EventDestroy(ev);
      }
    } catch (...) {
    }
    d_.DevicePrimaryCtxRelease(dev_);  // errors ignored: nothing left to do about them
  }

 private:
  // RAII: makes the primary context current on this thread, restores the previous one.
  class Current {
   public:
    explicit Current(const CudaBackend& b, bool tolerate_teardown = false)
        : d_(b.d_), rc_(d_.CtxPushCurrent(b.ctx_)) {
      if (rc_ != CUDA_SUCCESS && !(tolerate_teardown && rc_ == CUDA_ERROR_DEINITIALIZED)) {
        b.check(rc_, "cuCtxPushCurrent");
      }
    }
    ~Current() {
      if (rc_ != CUDA_SUCCESS) return;
      CUcontext popped = nullptr;
      d_.CtxPopCurrent(&popped);
    }
    Current(const Current&) = delete;
    Current& operator=(const Current&) = delete;
    bool active() const noexcept { return rc_ == CUDA_SUCCESS; }

   private:
    const cuda::Driver& d_;
    CUresult rc_;
  };

  void check(CUresult rc, const char* call) const {
    if (rc == CUDA_SUCCESS) return;
    throw BackendError("pypool cuda backend (device " + std::to_string(ordinal_) +
                       "): " + cuda::error_text(d_, rc, call));
  }

  // Pinned device memory on this device; also names the device for cuMemSetAccess.
  CUmemAllocationProp phys_prop() const {
    CUmemAllocationProp prop{};  // zeroed: no shareable handle, no compression
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev_;
    return prop;
  }

  // Decided once so that supports_vmm() can stay noexcept and cheap.
  void probe_vmm() {
    Current cur(*this);
    int supported = 0;
    if (d_.DeviceGetAttribute(&supported, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                              dev_) != CUDA_SUCCESS ||
        supported == 0) {
      return;
    }
    const CUmemAllocationProp prop = phys_prop();
    std::size_t g = 0;
    if (d_.MemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS ||
        g == 0 || (g & (g - 1)) != 0) {
      return;  // no usable granularity: treat as no VMM rather than fail the backend
    }
    granularity_ = g;
    vmm_ = true;
  }

  void* do_allocate(std::size_t size) override {
    Current cur(*this);
    CUdeviceptr p = 0;
    const CUresult rc = d_.MemAlloc(&p, size);
    if (rc == CUDA_ERROR_OUT_OF_MEMORY) return nullptr;
    check(rc, "cuMemAlloc");
    // The driver documents only 256 B; the Backend contract promises 512 B, so enforce it
    // rather than assume it.
    if (p % 512 != 0) {
      d_.MemFree(p);
      throw BackendError("pypool cuda backend: cuMemAlloc returned a pointer not 512 B aligned");
    }
    return hptr(p);
  }

  void do_deallocate(void* p, std::size_t) override {
    Current cur(*this, kTolerateTeardown);
    if (!cur.active()) return;
    const CUresult rc = d_.MemFree(dptr(p));
    if (rc != CUDA_ERROR_DEINITIALIZED) check(rc, "cuMemFree");
  }

  // ---- events: pooled, since creating one per freed block would cost a driver call
  // (and a kernel-mode allocation) on the hot path ----
  Event do_record_event(Stream stream) override {
    Current cur(*this);
    CUevent ev = nullptr;
    {
      std::lock_guard<std::mutex> lock(events_mu_);
      if (!free_events_.empty()) {
        ev = free_events_.back();
        free_events_.pop_back();
      }
    }
    if (ev == nullptr) check(d_.EventCreate(&ev, CU_EVENT_DISABLE_TIMING), "cuEventCreate");
    const CUresult rc = d_.EventRecord(ev, reinterpret_cast<CUstream>(stream));
    if (rc != CUDA_SUCCESS) {
      do_release_event(reinterpret_cast<Event>(ev));
      check(rc, "cuEventRecord");
    }
    return reinterpret_cast<Event>(ev);
  }

  bool do_query_event(Event e) override {
    Current cur(*this);
    const CUresult rc = d_.EventQuery(reinterpret_cast<CUevent>(e));
    if (rc == CUDA_ERROR_NOT_READY) return false;
    check(rc, "cuEventQuery");
    return true;
  }

  void do_synchronize_event(Event e) override {
    Current cur(*this);
    check(d_.EventSynchronize(reinterpret_cast<CUevent>(e)), "cuEventSynchronize");
  }

  // Re-recording a still-pending event is legal, so a released event is reusable at once.
  void do_release_event(Event e) override {
    if (e == 0) return;
    CUevent ev = reinterpret_cast<CUevent>(e);
    try {
      std::lock_guard<std::mutex> lock(events_mu_);
      free_events_.push_back(ev);
    } catch (...) {  // no room in the pool: destroy it instead
      Current cur(*this, kTolerateTeardown);
      if (cur.active()) d_.EventDestroy(ev);
    }
  }

  MemInfo do_mem_info() override {
    Current cur(*this);
    std::size_t free = 0;
    std::size_t total = 0;
    check(d_.MemGetInfo(&free, &total), "cuMemGetInfo");
    return MemInfo{free, total};
  }

  const char* do_name() const noexcept override { return "cuda"; }

  // ---- virtual memory (expandable segments) ----
  bool do_supports_vmm() const noexcept override { return vmm_; }
  std::size_t do_vmm_granularity() const override { return granularity_; }

  void* do_vmm_reserve(std::size_t size) override {
    Current cur(*this);
    CUdeviceptr p = 0;
    if (d_.MemAddressReserve(&p, size, granularity_, 0, 0) != CUDA_SUCCESS) return nullptr;
    return hptr(p);
  }

  void do_vmm_release_range(void* base, std::size_t size) override {
    Current cur(*this, kTolerateTeardown);
    if (!cur.active()) return;
    const CUresult rc = d_.MemAddressFree(dptr(base), size);
    if (rc != CUDA_ERROR_DEINITIALIZED) check(rc, "cuMemAddressFree");
  }

  // Any step may run out of memory (cuMemSetAccess allocates page tables); undo the
  // earlier steps so that 0 always means "nothing mapped, nothing held".
  PhysHandle do_vmm_map(void* addr, std::size_t size) override {
    Current cur(*this);
    const CUmemAllocationProp prop = phys_prop();
    CUmemGenericAllocationHandle h = 0;
    CUresult rc = d_.MemCreate(&h, size, &prop, 0);
    if (rc == CUDA_ERROR_OUT_OF_MEMORY) return 0;
    check(rc, "cuMemCreate");
    rc = d_.MemMap(dptr(addr), size, 0, h, 0);
    if (rc != CUDA_SUCCESS) {
      d_.MemRelease(h);
      if (rc == CUDA_ERROR_OUT_OF_MEMORY) return 0;
      check(rc, "cuMemMap");
    }
    CUmemAccessDesc access{};
    access.location = prop.location;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    rc = d_.MemSetAccess(dptr(addr), size, &access, 1);
    if (rc != CUDA_SUCCESS) {
      d_.MemUnmap(dptr(addr), size);
      d_.MemRelease(h);
      if (rc == CUDA_ERROR_OUT_OF_MEMORY) return 0;
      check(rc, "cuMemSetAccess");
    }
    // Driver handles are never 0, so 0 stays free to mean "out of memory".
    return static_cast<PhysHandle>(h);
  }

  void do_vmm_unmap(void* addr, std::size_t size, PhysHandle h) override {
    Current cur(*this, kTolerateTeardown);
    if (!cur.active()) return;
    const CUresult unmap = d_.MemUnmap(dptr(addr), size);
    // Release even if the unmap failed: the handle would otherwise leak for good.
    const CUresult release = d_.MemRelease(static_cast<CUmemGenericAllocationHandle>(h));
    if (unmap != CUDA_ERROR_DEINITIALIZED) check(unmap, "cuMemUnmap");
    if (release != CUDA_ERROR_DEINITIALIZED) check(release, "cuMemRelease");
  }

  const cuda::Driver& d_;
  const int ordinal_;
  const CUdevice dev_;
  CUcontext ctx_ = nullptr;  // retained primary context; set once in the constructor
  bool vmm_ = false;
  std::size_t granularity_ = std::size_t(2) << 20;

  std::mutex events_mu_;
  std::vector<CUevent> free_events_;  // guarded by events_mu_
};

}  // namespace

bool cuda_backend_compiled() noexcept { return true; }

int cuda_device_count(std::string* why) noexcept {
  try {
    const cuda::Driver* d = cuda::driver(why);
    if (d == nullptr) return 0;
    int n = 0;
    const CUresult rc = d->DeviceGetCount(&n);
    if (rc != CUDA_SUCCESS || n <= 0) {
      if (why != nullptr) *why = rc != CUDA_SUCCESS ? cuda::error_text(*d, rc, "cuDeviceGetCount") : cuda::kNoDevice;
      return 0;
    }
    if (why != nullptr) why->clear();
    return n;
  } catch (...) {  // std::bad_alloc building a message
    return 0;
  }
}

std::shared_ptr<Backend> make_cuda_backend(int device) {
  std::string why;
  const cuda::Driver* d = cuda::driver(&why);
  if (d == nullptr) throw BackendError("pypool: CUDA is not usable: " + why);
  int n = 0;
  CUresult rc = d->DeviceGetCount(&n);
  if (rc != CUDA_SUCCESS) throw BackendError("pypool: " + cuda::error_text(*d, rc, "cuDeviceGetCount"));
  if (device < 0 || device >= n) {
    throw BackendError("pypool: CUDA device " + std::to_string(device) + " does not exist (" +
                       std::to_string(n) + " visible)");
  }
  CUdevice dev = 0;
  rc = d->DeviceGet(&dev, device);
  if (rc != CUDA_SUCCESS) throw BackendError("pypool: " + cuda::error_text(*d, rc, "cuDeviceGet"));
  return std::make_shared<CudaBackend>(*d, device, dev);
}

}  // namespace pypool

#else  // !PYPOOL_WITH_CUDA

namespace pypool {

// Only an explicit -DPYPOOL_WITH_CUDA=OFF gets here (CMake warns at configure time).
constexpr const char* kNotBuilt =
    "pypool was built without its CUDA backend (CMake option PYPOOL_WITH_CUDA=OFF); "
    "reinstall without that option";

bool cuda_backend_compiled() noexcept { return false; }

int cuda_device_count(std::string* why) noexcept {
  if (why != nullptr) {
    try { *why = kNotBuilt; } catch (...) {}  // bad_alloc: leave *why as it was
  }
  return 0;
}

std::shared_ptr<Backend> make_cuda_backend(int) { throw BackendError(kNotBuilt); }

}  // namespace pypool

#endif  // PYPOOL_WITH_CUDA
