// The CUDA driver API stand-in (libpypool_simcuda.so, SONAME libcuda.so.1) over the
// simulated device's state (sim_state.h; Note [Simulated device]).
//
// <cuda.h> is included as a user program would include it, so its
// `#define cuMemAlloc cuMemAlloc_v2` macros give every definition below the exported,
// versioned name that torch (through cudaGetDriverEntryPointByVersion) and pypool's own
// backend (dlsym, csrc/backend/cuda_driver.h) ask for, and the compiler checks each
// signature against the header. The few older ABI names that a program may still dlsym
// by their plain name (cuCtxPushCurrent, cuEventDestroy, ...) are aliases of the
// versioned definitions where the two ABIs are the same (PYPOOLSIM_ALIAS); every other
// exported name is a weak "not supported" stub (stubs_cuda.c, symbols/cuda.inc).
//
// Conventions:
//  * Every entry point counts itself under its exported name (sim::count_call), the
//    versioned one where there is one ("cuMemAlloc_v2": what torch and pypool call); an
//    older ABI name that shares a definition (cuCtxPushCurrent) counts as the current
//    one. cuMemFree, cuMemUnmap, blocking copies and the *Synchronize calls count as
//    synchronizing.
//  * Contexts: one primary context per device, a dummy object whose address encodes
//    the device. The current context of a thread is the primary context of
//    sim::current_device() (what cudaSetDevice sets), so driver and runtime agree;
//    cuCtxPushCurrent/PopCurrent keep a per-thread stack of devices beneath it.
//    cuInit is accepted but not required: torch reaches the driver through the runtime.
//  * VMM misuse returns what the driver documents (cuda.h): CUDA_ERROR_INVALID_VALUE for
//    unaligned sizes/offsets, ranges outside a reservation, mapping over a mapping,
//    unmapping what is not mapped, freeing a reservation that is still mapped;
//    CUDA_ERROR_OUT_OF_MEMORY past the device's capacity.
//  * Kernels, memsets and copies never touch memory: they are validated and enqueue one
//    unit of work on their stream, so stream/event completion is observable as on a GPU.
#if defined(CUDA_API_PER_THREAD_DEFAULT_STREAM)
#error "driver.cpp defines the legacy-stream names; the _ptsz/_ptds ones are aliases"
#endif

#include <cuda.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "device_facts.h"
#include "sim_state.h"

#define SIM_API extern "C" __attribute__((visibility("default")))

// Exports `other_name` as another name of the definition `target` (same ABI). The asm
// label sidesteps <cuda.h>'s macros, which would rename `other_name` if it were spelt as
// a name.
#define PYPOOLSIM_ALIAS(other_name, target)                                                   \
  extern "C" __attribute__((visibility("default"))) decltype(target) pypoolsim_alias_##other_name \
      __asm__(#other_name) __attribute__((alias(#target)));

namespace {

constexpr int kDriverVersion = 13000;
constexpr int kMaxDevices = 16;

// ---- errors ----

CUresult to_cu(sim::Status s) {
  switch (s) {
    case sim::Status::ok: return CUDA_SUCCESS;
    case sim::Status::invalid_value: return CUDA_ERROR_INVALID_VALUE;
    case sim::Status::out_of_memory: return CUDA_ERROR_OUT_OF_MEMORY;
    case sim::Status::invalid_device: return CUDA_ERROR_INVALID_DEVICE;
    case sim::Status::invalid_handle: return CUDA_ERROR_INVALID_HANDLE;
    case sim::Status::not_mapped: return CUDA_ERROR_INVALID_VALUE;
    case sim::Status::already_mapped: return CUDA_ERROR_INVALID_VALUE;
    case sim::Status::not_ready: return CUDA_ERROR_NOT_READY;
    case sim::Status::in_use: return CUDA_ERROR_INVALID_VALUE;
    case sim::Status::not_supported: return CUDA_ERROR_NOT_SUPPORTED;
  }
  return CUDA_ERROR_UNKNOWN;
}

// The VMM calls document no INVALID_HANDLE: a bad allocation handle is an invalid value.
CUresult vmm_cu(sim::Status s) {
  return s == sim::Status::invalid_handle ? CUDA_ERROR_INVALID_VALUE : to_cu(s);
}

// ---- devices and contexts ----

bool valid_dev(int dev) { return dev >= 0 && dev < sim::device_count(); }

struct SimCtx {
  int dev;
};
SimCtx g_primary[kMaxDevices] = {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7},
                                 {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}};
std::atomic<unsigned> g_primary_flags[kMaxDevices];

CUcontext ctx_of(int dev) { return reinterpret_cast<CUcontext>(&g_primary[dev]); }

// The device of one of our contexts, or -1.
int dev_of(CUcontext c) {
  auto* p = reinterpret_cast<SimCtx*>(c);
  if (p < g_primary || p >= g_primary + kMaxDevices) return -1;
  return valid_dev(p->dev) ? p->dev : -1;
}

// Devices of the contexts pushed beneath the current one (cuCtxPushCurrent).
thread_local std::vector<int> tl_ctx_stack;

CUcontext current_ctx() { return ctx_of(sim::current_device()); }

// ---- device memory helpers ----

// [p, p + n) lies inside one allocation of device memory (plain or mapped VMM).
bool device_range(CUdeviceptr p, std::size_t n, int* dev = nullptr) {
  void* base = nullptr;
  std::size_t size = 0;
  int d = 0;
  if (!sim::find_device_pointer(reinterpret_cast<void*>(p), &d, &base, &size)) return false;
  const auto b = reinterpret_cast<std::uintptr_t>(base);
  if (p + n < p || p + n > b + size) return false;
  if (dev) *dev = d;
  return true;
}

// Handle types each cuMemCreate asked for (cuMemGetAllocationPropertiesFromHandle,
// cuMemExportToShareableHandle). Entries are dropped when the handle is gone.
std::mutex g_mu;
std::unordered_map<std::uint64_t, unsigned> g_handle_types;

sim::Stream* S(CUstream s) { return reinterpret_cast<sim::Stream*>(s); }
sim::Event* E(CUevent e) { return reinterpret_cast<sim::Event*>(e); }

CUresult enqueue(CUstream s) { return to_cu(sim::stream_enqueue(S(s))); }

// ---- dummy module/function/link objects (kernels never run) ----

constexpr std::uint32_t kModuleMagic = 0x4d4f444cu;  // "MODL"
constexpr std::uint32_t kFuncMagic = 0x46554e43u;    // "FUNC"
struct SimFunc {
  std::uint32_t magic = kFuncMagic;
  std::map<int, int> attrs;  // cuFuncSetAttribute values
};
struct SimModule {
  std::uint32_t magic = kModuleMagic;
  std::mutex mu;
  std::map<std::string, SimFunc*> funcs;  // kept for the process: handles may outlive unload
};
struct SimLink {
  unsigned char image[64] = {};
};
struct SimGreen {
  int dev;
  unsigned sms;
};
struct SimResourceDesc {
  unsigned sms;
};

bool ok_func(CUfunction f) { return f != nullptr && reinterpret_cast<SimFunc*>(f)->magic == kFuncMagic; }

// ---- limits ----
std::atomic<std::size_t> g_limits[8] = {1024, 1 << 20, 8 << 20, 2, 2048, 64, 0, 0};

}  // namespace

// =====================================================================================
// Initialization, version, errors
// =====================================================================================

SIM_API CUresult cuInit(unsigned int Flags) {
  sim::count_call("cuInit", false);
  return Flags == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

SIM_API CUresult cuDriverGetVersion(int* driverVersion) {
  sim::count_call("cuDriverGetVersion", false);
  if (driverVersion == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *driverVersion = kDriverVersion;
  return CUDA_SUCCESS;
}

namespace {
const char* error_name(CUresult e) {
  switch (e) {
#define R(name) \
  case name: return #name;
#include "symbols/cuda_errors.inc"
#undef R
    default: return nullptr;
  }
}

// The real driver's wording for the codes an allocator meets; for the rest, the
// enumerator's name spelt out ("CUDA_ERROR_LAUNCH_TIMEOUT" -> "launch timeout").
const char* error_string(CUresult e) {
  switch (e) {
    case CUDA_SUCCESS: return "no error";
    case CUDA_ERROR_INVALID_VALUE: return "invalid argument";
    case CUDA_ERROR_OUT_OF_MEMORY: return "out of memory";
    case CUDA_ERROR_NOT_INITIALIZED: return "initialization error";
    case CUDA_ERROR_DEINITIALIZED: return "driver shutting down";
    case CUDA_ERROR_NO_DEVICE: return "no CUDA-capable device is detected";
    case CUDA_ERROR_INVALID_DEVICE: return "invalid device ordinal";
    case CUDA_ERROR_INVALID_IMAGE: return "device kernel image is invalid";
    case CUDA_ERROR_INVALID_CONTEXT: return "invalid device context";
    case CUDA_ERROR_ILLEGAL_ADDRESS: return "an illegal memory access was encountered";
    case CUDA_ERROR_INVALID_HANDLE: return "invalid resource handle";
    case CUDA_ERROR_NOT_FOUND: return "named symbol not found";
    case CUDA_ERROR_NOT_READY: return "device not ready";
    case CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED: return "peer access is already enabled";
    case CUDA_ERROR_PEER_ACCESS_NOT_ENABLED: return "peer access has not been enabled";
    case CUDA_ERROR_NOT_PERMITTED: return "operation not permitted";
    case CUDA_ERROR_NOT_SUPPORTED: return "operation not supported";
    case CUDA_ERROR_ILLEGAL_STATE: return "the operation cannot be performed in the present state";
    case CUDA_ERROR_LAUNCH_FAILED: return "unspecified launch failure";
    case CUDA_ERROR_UNKNOWN: return "unknown error";
    default: break;
  }
  static std::mutex mu;
  static std::map<int, std::string>* spelt = new std::map<int, std::string>();
  const char* name = error_name(e);
  if (name == nullptr) return nullptr;
  std::lock_guard<std::mutex> g(mu);
  auto it = spelt->find(static_cast<int>(e));
  if (it == spelt->end()) {
    std::string s = name + std::strlen("CUDA_ERROR_");
    for (char& c : s) c = c == '_' ? ' ' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    it = spelt->emplace(static_cast<int>(e), std::move(s)).first;
  }
  return it->second.c_str();
}
}  // namespace

SIM_API CUresult cuGetErrorName(CUresult error, const char** pStr) {
  sim::count_call("cuGetErrorName", false);
  if (pStr == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *pStr = error_name(error);
  return *pStr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

SIM_API CUresult cuGetErrorString(CUresult error, const char** pStr) {
  sim::count_call("cuGetErrorString", false);
  if (pStr == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *pStr = error_string(error);
  return *pStr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

// =====================================================================================
// Entry points (cuGetProcAddress, cudaGetDriverEntryPoint[ByVersion])
// =====================================================================================

namespace {

struct VersionRow {
  const char* name;
  int version;
  const char* symbol;
};
// Sorted by name, then version (tools/simdevice_symbols.py writes it so).
constexpr VersionRow kVersions[] = {
#define V(name, version, symbol) {#name, version, #symbol},
#include "symbols/cuda_versions.inc"
#undef V
};

void* self_handle() {
  static void* h = [] {
    Dl_info info{};
    void* handle = nullptr;
    if (dladdr(reinterpret_cast<void*>(&cuInit), &info) != 0 && info.dli_fname != nullptr)
      handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    return handle;
  }();
  return h;
}

void* own_symbol(const std::string& name) {
  void* h = self_handle();
  return h ? dlsym(h, name.c_str()) : nullptr;
}

enum class Lookup { found, not_found, version_too_old };

// The variant of `name` that <cuda.h> of `version` (and the real driver's
// cuGetProcAddress) binds: the last one introduced at or before `version`. Names the
// version table does not know resolve to the newest exported variant, so that a stub
// (not a null pointer) answers for what is not simulated.
Lookup resolve(const char* name, int version, bool per_thread, void** out) {
  *out = nullptr;
  auto lo = std::lower_bound(std::begin(kVersions), std::end(kVersions), name,
                             [](const VersionRow& r, const char* n) { return std::strcmp(r.name, n) < 0; });
  std::string symbol;
  if (lo != std::end(kVersions) && std::strcmp(lo->name, name) == 0) {
    for (auto it = lo; it != std::end(kVersions) && std::strcmp(it->name, name) == 0; ++it)
      if (it->version <= version) symbol = it->symbol;
    if (symbol.empty()) return Lookup::version_too_old;
  } else {
    for (const char* suffix : {"_v3", "_v2", ""}) {
      if (own_symbol(std::string(name) + suffix) != nullptr) {
        symbol = std::string(name) + suffix;
        break;
      }
    }
    if (symbol.empty()) return Lookup::not_found;
  }
  if (per_thread) {
    for (const char* suffix : {"_ptsz", "_ptds"}) {
      if (void* p = own_symbol(symbol + suffix)) {
        *out = p;
        return Lookup::found;
      }
    }
  }
  *out = own_symbol(symbol);
  return *out ? Lookup::found : Lookup::not_found;
}

}  // namespace

namespace sim {
void* driver_entry_point(const char* name, unsigned cuda_version) {
  if (name == nullptr) return nullptr;
  void* p = nullptr;
  resolve(name, static_cast<int>(cuda_version), false, &p);
  return p;
}
}  // namespace sim

SIM_API CUresult cuGetProcAddress_v2(const char* symbol, void** pfn, int cudaVersion, cuuint64_t flags,
                                     CUdriverProcAddressQueryResult* symbolStatus) {
  sim::count_call("cuGetProcAddress_v2", false);
  if (symbol == nullptr || pfn == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const bool per_thread = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
  Lookup r = resolve(symbol, cudaVersion, per_thread, pfn);
  if (symbolStatus) {
    *symbolStatus = r == Lookup::found             ? CU_GET_PROC_ADDRESS_SUCCESS
                    : r == Lookup::version_too_old ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                                                   : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  }
  return r == Lookup::found ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

// The CUDA 11.3 ABI: no status argument.
extern "C" __attribute__((visibility("default"))) CUresult pypoolsim_cuGetProcAddress_v1(
    const char* symbol, void** pfn, int cudaVersion, cuuint64_t flags) __asm__("cuGetProcAddress");
CUresult pypoolsim_cuGetProcAddress_v1(const char* symbol, void** pfn, int cudaVersion, cuuint64_t flags) {
  return cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, nullptr);
}

// Lets the C stubs count their calls (stubs.h).
SIM_API void pypoolsim_count_stub(const char* name) { sim::count_call(name, false); }

// =====================================================================================
// Devices
// =====================================================================================

SIM_API CUresult cuDeviceGetCount(int* count) {
  sim::count_call("cuDeviceGetCount", false);
  if (count == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *count = sim::device_count();
  return CUDA_SUCCESS;
}

SIM_API CUresult cuDeviceGet(CUdevice* device, int ordinal) {
  sim::count_call("cuDeviceGet", false);
  if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (!valid_dev(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
  *device = ordinal;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
  sim::count_call("cuDeviceGetName", false);
  if (name == nullptr || len <= 0) return CUDA_ERROR_INVALID_VALUE;
  if (!valid_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
  std::snprintf(name, static_cast<std::size_t>(len), "%s", sim::facts::kName);
  return CUDA_SUCCESS;
}

SIM_API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
  sim::count_call("cuDeviceTotalMem_v2", false);
  if (bytes == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (!valid_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
  *bytes = static_cast<size_t>(sim::device_total(dev));
  return CUDA_SUCCESS;
}

SIM_API CUresult cuDeviceGetUuid_v2(CUuuid* uuid, CUdevice dev) {
  sim::count_call("cuDeviceGetUuid_v2", false);
  if (uuid == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (!valid_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
  sim::facts::uuid(dev, reinterpret_cast<unsigned char*>(uuid->bytes));
  return CUDA_SUCCESS;
}
PYPOOLSIM_ALIAS(cuDeviceGetUuid, cuDeviceGetUuid_v2)

SIM_API CUresult cuDeviceGetPCIBusId(char* pciBusId, int len, CUdevice dev) {
  sim::count_call("cuDeviceGetPCIBusId", false);
  if (pciBusId == nullptr || len <= 0) return CUDA_ERROR_INVALID_VALUE;
  if (!valid_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
  std::snprintf(pciBusId, static_cast<std::size_t>(len), "%04x:%02x:%02x.0", sim::facts::pci_domain(dev),
                sim::facts::pci_bus(dev), sim::facts::pci_device(dev));
  return CUDA_SUCCESS;
}

SIM_API CUresult cuDeviceGetByPCIBusId(CUdevice* dev, const char* pciBusId) {
  sim::count_call("cuDeviceGetByPCIBusId", false);
  if (dev == nullptr || pciBusId == nullptr) return CUDA_ERROR_INVALID_VALUE;
  unsigned domain = 0, bus = 0, device = 0, function = 0;
  if (std::sscanf(pciBusId, "%x:%x:%x.%x", &domain, &bus, &device, &function) != 4) {
    domain = 0;
    if (std::sscanf(pciBusId, "%x:%x.%x", &bus, &device, &function) != 3) return CUDA_ERROR_INVALID_VALUE;
  }
  for (int d = 0; d < sim::device_count(); ++d) {
    if (sim::facts::pci_domain(d) == domain && sim::facts::pci_bus(d) == bus && sim::facts::pci_device(d) == device) {
      *dev = d;
      return CUDA_SUCCESS;
    }
  }
  return CUDA_ERROR_INVALID_DEVICE;
}

namespace {
// cuDeviceGetAttribute's values (the same profile as runtime.cpp's cudaDeviceGetAttribute).
bool device_attribute(CUdevice_attribute a, int dev, int* out) {
  namespace f = sim::facts;
  switch (a) {
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *out = f::kMaxThreadsPerBlock; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: *out = 1024; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *out = 1024; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *out = 64; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *out = 2147483647; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: *out = 65535; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *out = 65535; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *out = f::kSharedPerBlock; return true;
    case CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY: *out = 65536; return true;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *out = f::kWarpSize; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_PITCH: *out = 2147483647; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: *out = f::kRegsPerBlock; return true;
    case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: *out = f::kClockKhz; return true;
    case CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT: *out = 512; return true;
    case CU_DEVICE_ATTRIBUTE_GPU_OVERLAP: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *out = f::kSmCount; return true;
    case CU_DEVICE_ATTRIBUTE_KERNEL_EXEC_TIMEOUT: *out = 0; return true;
    case CU_DEVICE_ATTRIBUTE_INTEGRATED: *out = 0; return true;
    case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_MODE: *out = CU_COMPUTEMODE_DEFAULT; return true;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE1D_WIDTH: *out = 131072; return true;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_WIDTH: *out = 131072; return true;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_HEIGHT: *out = 65536; return true;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_WIDTH:
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_HEIGHT:
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_DEPTH: *out = 16384; return true;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_LAYERED_WIDTH:
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_LAYERED_HEIGHT: *out = 32768; return true;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_LAYERED_LAYERS: *out = 2048; return true;
    case CU_DEVICE_ATTRIBUTE_SURFACE_ALIGNMENT: *out = 512; return true;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_ECC_ENABLED: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: *out = static_cast<int>(f::pci_bus(dev)); return true;
    case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: *out = static_cast<int>(f::pci_device(dev)); return true;
    case CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: *out = static_cast<int>(f::pci_domain(dev)); return true;
    case CU_DEVICE_ATTRIBUTE_TCC_DRIVER: *out = 0; return true;
    case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: *out = f::kMemClockKhz; return true;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: *out = f::kMemBusWidth; return true;
    case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: *out = f::kL2Bytes; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: *out = f::kMaxThreadsPerSm; return true;
    case CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT: *out = f::kAsyncEngines; return true;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE1D_LAYERED_WIDTH: *out = 32768; return true;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE1D_LAYERED_LAYERS: *out = 2048; return true;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_GATHER_WIDTH:
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_GATHER_HEIGHT: *out = 32768; return true;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_WIDTH_ALTERNATE:
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_HEIGHT_ALTERNATE: *out = 8192; return true;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_DEPTH_ALTERNATE: *out = 32768; return true;
    case CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT: *out = 32; return true;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *out = f::kCcMajor; return true;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *out = f::kCcMinor; return true;
    case CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_L1_CACHE_SUPPORTED: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_LOCAL_L1_CACHE_SUPPORTED: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: *out = f::kSharedPerSm; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR: *out = f::kRegsPerSm; return true;
    case CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_MULTI_GPU_BOARD: *out = 0; return true;
    case CU_DEVICE_ATTRIBUTE_MULTI_GPU_BOARD_GROUP_ID: *out = dev; return true;
    case CU_DEVICE_ATTRIBUTE_SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO: *out = 2; return true;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_PREEMPTION_SUPPORTED: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *out = f::kSharedPerBlockOptin; return true;
    case CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR: *out = f::kMaxBlocksPerSm; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE: *out = f::kPersistingL2Max; return true;
    case CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE: *out = 134213632; return true;
    case CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK: *out = f::kReservedSharedPerBlock; return true;
    case CU_DEVICE_ATTRIBUTE_SPARSE_CUDA_ARRAY_SUPPORTED: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_TIMELINE_SEMAPHORE_INTEROP_SUPPORTED: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_DEFERRED_MAPPING_CUDA_ARRAY_SUPPORTED: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_MEM_SYNC_DOMAIN_COUNT: *out = 4; return true;
    case CU_DEVICE_ATTRIBUTE_TENSOR_MAP_ACCESS_SUPPORTED: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_FUNCTION_POINTERS: *out = 1; return true;
    case CU_DEVICE_ATTRIBUTE_NUMA_ID: *out = -1; return true;
    case CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID: *out = -1; return true;
    case CU_DEVICE_ATTRIBUTE_GPU_PCI_DEVICE_ID: *out = static_cast<int>((f::kPciDeviceId << 16) | f::kPciVendor); return true;
    case CU_DEVICE_ATTRIBUTE_GPU_PCI_SUBSYSTEM_ID: *out = static_cast<int>(f::kPciSubsystemId); return true;
    // No GPUDirect RDMA, fabric, multicast (no NVSwitch), compression, IPC events or
    // pool IPC handles in the simulation: these read 0, and the paths that need them
    // stay off (torch's expandable segments take the plain POSIX-fd route).
    default: break;
  }
  if (a <= 0 || a >= CU_DEVICE_ATTRIBUTE_MAX) return false;
  *out = 0;
  return true;
}
}  // namespace

SIM_API CUresult cuDeviceGetAttribute(int* pi, CUdevice_attribute attrib, CUdevice dev) {
  sim::count_call("cuDeviceGetAttribute", false);
  if (pi == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (!valid_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
  return device_attribute(attrib, dev, pi) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

SIM_API CUresult cuDeviceCanAccessPeer(int* canAccessPeer, CUdevice dev, CUdevice peerDev) {
  sim::count_call("cuDeviceCanAccessPeer", false);
  if (canAccessPeer == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (!valid_dev(dev) || !valid_dev(peerDev)) return CUDA_ERROR_INVALID_DEVICE;
  *canAccessPeer = dev != peerDev ? 1 : 0;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuDeviceGetP2PAttribute(int* value, CUdevice_P2PAttribute attrib, CUdevice srcDevice,
                                         CUdevice dstDevice) {
  sim::count_call("cuDeviceGetP2PAttribute", false);
  if (value == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (!valid_dev(srcDevice) || !valid_dev(dstDevice) || srcDevice == dstDevice) return CUDA_ERROR_INVALID_DEVICE;
  switch (attrib) {
    case CU_DEVICE_P2P_ATTRIBUTE_PERFORMANCE_RANK: *value = 0; return CUDA_SUCCESS;
    case CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED: *value = 1; return CUDA_SUCCESS;
    case CU_DEVICE_P2P_ATTRIBUTE_NATIVE_ATOMIC_SUPPORTED: *value = 0; return CUDA_SUCCESS;
    case CU_DEVICE_P2P_ATTRIBUTE_CUDA_ARRAY_ACCESS_SUPPORTED: *value = 1; return CUDA_SUCCESS;
    default: return CUDA_ERROR_INVALID_VALUE;
  }
}

// ---- green contexts (SM partitions): bookkeeping only, kernels never run ----

SIM_API CUresult cuDeviceGetDevResource(CUdevice device, CUdevResource* resource, CUdevResourceType type) {
  sim::count_call("cuDeviceGetDevResource", false);
  if (resource == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (!valid_dev(device)) return CUDA_ERROR_INVALID_DEVICE;
  if (type != CU_DEV_RESOURCE_TYPE_SM) return CUDA_ERROR_INVALID_RESOURCE_TYPE;
  std::memset(resource, 0, sizeof *resource);
  resource->type = CU_DEV_RESOURCE_TYPE_SM;
  resource->sm.smCount = sim::facts::kSmCount;
  resource->sm.minSmPartitionSize = sim::facts::kSmPartitionMin;
  resource->sm.smCoscheduledAlignment = sim::facts::kSmCoscheduledAlignment;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuDevSmResourceSplitByCount(CUdevResource* result, unsigned int* nbGroups, const CUdevResource* input,
                                             CUdevResource* remaining, unsigned int useFlags, unsigned int minCount) {
  sim::count_call("cuDevSmResourceSplitByCount", false);
  (void)useFlags;
  if (nbGroups == nullptr || input == nullptr || input->type != CU_DEV_RESOURCE_TYPE_SM) return CUDA_ERROR_INVALID_VALUE;
  const unsigned step = sim::facts::kSmPartitionMin;
  const unsigned per = std::max(step, (minCount + step - 1) / step * step);
  const unsigned avail = input->sm.smCount / per;
  const unsigned n = result == nullptr ? avail : std::min(*nbGroups, avail);
  for (unsigned i = 0; result != nullptr && i < n; ++i) {
    result[i] = *input;
    result[i].sm.smCount = per;
  }
  if (remaining) {
    *remaining = *input;
    remaining->sm.smCount = input->sm.smCount - n * per;
  }
  *nbGroups = n;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuDevResourceGenerateDesc(CUdevResourceDesc* phDesc, CUdevResource* resources,
                                           unsigned int nbResources) {
  sim::count_call("cuDevResourceGenerateDesc", false);
  if (phDesc == nullptr || resources == nullptr || nbResources == 0) return CUDA_ERROR_INVALID_VALUE;
  unsigned sms = 0;
  for (unsigned i = 0; i < nbResources; ++i) {
    if (resources[i].type != CU_DEV_RESOURCE_TYPE_SM) return CUDA_ERROR_INVALID_RESOURCE_TYPE;
    sms += resources[i].sm.smCount;
  }
  *phDesc = reinterpret_cast<CUdevResourceDesc>(new SimResourceDesc{sms});
  return CUDA_SUCCESS;
}

SIM_API CUresult cuGreenCtxCreate(CUgreenCtx* phCtx, CUdevResourceDesc desc, CUdevice dev, unsigned int flags) {
  sim::count_call("cuGreenCtxCreate", false);
  if (phCtx == nullptr || desc == nullptr || (flags & CU_GREEN_CTX_DEFAULT_STREAM) == 0) return CUDA_ERROR_INVALID_VALUE;
  if (!valid_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
  *phCtx = reinterpret_cast<CUgreenCtx>(new SimGreen{dev, reinterpret_cast<SimResourceDesc*>(desc)->sms});
  return CUDA_SUCCESS;
}

SIM_API CUresult cuGreenCtxDestroy(CUgreenCtx hCtx) {
  sim::count_call("cuGreenCtxDestroy", false);
  if (hCtx == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  delete reinterpret_cast<SimGreen*>(hCtx);
  return CUDA_SUCCESS;
}

// A green context's CUcontext: the primary context of its device (work still goes to
// that device's streams).
SIM_API CUresult cuCtxFromGreenCtx(CUcontext* pContext, CUgreenCtx hCtx) {
  sim::count_call("cuCtxFromGreenCtx", false);
  if (pContext == nullptr || hCtx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *pContext = ctx_of(reinterpret_cast<SimGreen*>(hCtx)->dev);
  return CUDA_SUCCESS;
}

SIM_API CUresult cuGreenCtxStreamCreate(CUstream* phStream, CUgreenCtx greenCtx, unsigned int flags, int priority) {
  sim::count_call("cuGreenCtxStreamCreate", false);
  if (phStream == nullptr || greenCtx == nullptr || (flags & CU_STREAM_NON_BLOCKING) == 0) return CUDA_ERROR_INVALID_VALUE;
  priority = std::clamp(priority, sim::facts::kGreatestStreamPriority, sim::facts::kLeastStreamPriority);
  sim::Stream* s = nullptr;
  CUresult r = to_cu(sim::stream_create(reinterpret_cast<SimGreen*>(greenCtx)->dev, flags, priority, &s));
  if (r == CUDA_SUCCESS) *phStream = reinterpret_cast<CUstream>(s);
  return r;
}

// =====================================================================================
// Contexts
// =====================================================================================

SIM_API CUresult cuDevicePrimaryCtxRetain(CUcontext* pctx, CUdevice dev) {
  sim::count_call("cuDevicePrimaryCtxRetain", false);
  if (pctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (!valid_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
  *pctx = ctx_of(dev);
  return CUDA_SUCCESS;
}

SIM_API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  sim::count_call("cuDevicePrimaryCtxRelease_v2", false);
  return valid_dev(dev) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}
PYPOOLSIM_ALIAS(cuDevicePrimaryCtxRelease, cuDevicePrimaryCtxRelease_v2)

// The simulation cannot take a device's memory back from the allocators that hold it,
// so a reset leaves memory as it is.
SIM_API CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
  sim::count_call("cuDevicePrimaryCtxReset_v2", false);
  return valid_dev(dev) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}
PYPOOLSIM_ALIAS(cuDevicePrimaryCtxReset, cuDevicePrimaryCtxReset_v2)

SIM_API CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned int flags) {
  sim::count_call("cuDevicePrimaryCtxSetFlags_v2", false);
  if (!valid_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
  g_primary_flags[dev].store(flags);
  return CUDA_SUCCESS;
}
PYPOOLSIM_ALIAS(cuDevicePrimaryCtxSetFlags, cuDevicePrimaryCtxSetFlags_v2)

// Active: the runtime stand-in has no lazy context creation, so every device's primary
// context exists from the start (torch reads this to decide which devices it touched).
SIM_API CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int* flags, int* active) {
  sim::count_call("cuDevicePrimaryCtxGetState", false);
  if (flags == nullptr || active == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (!valid_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
  *flags = g_primary_flags[dev].load();
  *active = 1;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxGetCurrent(CUcontext* pctx) {
  sim::count_call("cuCtxGetCurrent", false);
  if (pctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *pctx = current_ctx();
  return CUDA_SUCCESS;
}

// NULL unbinds on a GPU; here the runtime would bind the primary context again at its
// next call, so nothing changes.
SIM_API CUresult cuCtxSetCurrent(CUcontext ctx) {
  sim::count_call("cuCtxSetCurrent", false);
  if (ctx == nullptr) return CUDA_SUCCESS;
  const int dev = dev_of(ctx);
  if (dev < 0) return CUDA_ERROR_INVALID_CONTEXT;
  return to_cu(sim::set_current_device(dev));
}

SIM_API CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
  sim::count_call("cuCtxPushCurrent_v2", false);
  const int dev = dev_of(ctx);
  if (dev < 0) return ctx == nullptr ? CUDA_ERROR_INVALID_VALUE : CUDA_ERROR_INVALID_CONTEXT;
  tl_ctx_stack.push_back(sim::current_device());
  return to_cu(sim::set_current_device(dev));
}
PYPOOLSIM_ALIAS(cuCtxPushCurrent, cuCtxPushCurrent_v2)

SIM_API CUresult cuCtxPopCurrent_v2(CUcontext* pctx) {
  sim::count_call("cuCtxPopCurrent_v2", false);
  if (pctx) *pctx = current_ctx();
  if (!tl_ctx_stack.empty()) {
    const int prev = tl_ctx_stack.back();
    tl_ctx_stack.pop_back();
    return to_cu(sim::set_current_device(prev));
  }
  return CUDA_SUCCESS;
}
PYPOOLSIM_ALIAS(cuCtxPopCurrent, cuCtxPopCurrent_v2)

// cuCtxCreate makes the device's primary context current: the simulation has one
// context per device.
namespace {
CUresult ctx_create(CUcontext* pctx, CUdevice dev) {
  if (pctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (!valid_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
  tl_ctx_stack.push_back(sim::current_device());
  sim::set_current_device(dev);
  *pctx = ctx_of(dev);
  return CUDA_SUCCESS;
}
}  // namespace

SIM_API CUresult cuCtxCreate_v4(CUcontext* pctx, CUctxCreateParams* ctxCreateParams, unsigned int flags,
                                CUdevice dev) {
  sim::count_call("cuCtxCreate_v4", false);
  (void)ctxCreateParams;
  (void)flags;
  return ctx_create(pctx, dev);
}

extern "C" __attribute__((visibility("default"))) CUresult pypoolsim_cuCtxCreate_v2(CUcontext* pctx, unsigned int flags,
                                                                                  CUdevice dev) __asm__("cuCtxCreate_v2");
CUresult pypoolsim_cuCtxCreate_v2(CUcontext* pctx, unsigned int flags, CUdevice dev) {
  sim::count_call("cuCtxCreate_v2", false);
  (void)flags;
  return ctx_create(pctx, dev);
}

extern "C" __attribute__((visibility("default"))) CUresult pypoolsim_cuCtxCreate_v3(
    CUcontext* pctx, CUexecAffinityParam* paramsArray, int numParams, unsigned int flags,
    CUdevice dev) __asm__("cuCtxCreate_v3");
CUresult pypoolsim_cuCtxCreate_v3(CUcontext* pctx, CUexecAffinityParam* paramsArray, int numParams, unsigned int flags,
                                  CUdevice dev) {
  sim::count_call("cuCtxCreate_v3", false);
  (void)paramsArray, (void)numParams, (void)flags;
  return ctx_create(pctx, dev);
}

SIM_API CUresult cuCtxDestroy_v2(CUcontext ctx) {
  sim::count_call("cuCtxDestroy_v2", false);
  const int dev = dev_of(ctx);
  if (dev < 0) return CUDA_ERROR_INVALID_CONTEXT;
  if (dev == sim::current_device() && !tl_ctx_stack.empty()) {
    const int prev = tl_ctx_stack.back();
    tl_ctx_stack.pop_back();
    sim::set_current_device(prev);
  }
  return CUDA_SUCCESS;
}
PYPOOLSIM_ALIAS(cuCtxDestroy, cuCtxDestroy_v2)

SIM_API CUresult cuCtxGetDevice(CUdevice* device) {
  sim::count_call("cuCtxGetDevice", false);
  if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *device = sim::current_device();
  return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxGetDevice_v2(CUdevice* device, CUcontext ctx) {
  sim::count_call("cuCtxGetDevice_v2", false);
  if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const int dev = ctx == nullptr ? sim::current_device() : dev_of(ctx);
  if (dev < 0) return CUDA_ERROR_INVALID_CONTEXT;
  *device = dev;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxSynchronize(void) {
  sim::count_call("cuCtxSynchronize", true);
  return to_cu(sim::device_synchronize(sim::current_device()));
}

SIM_API CUresult cuCtxSynchronize_v2(CUcontext ctx) {
  sim::count_call("cuCtxSynchronize_v2", true);
  const int dev = ctx == nullptr ? sim::current_device() : dev_of(ctx);
  if (dev < 0) return CUDA_ERROR_INVALID_CONTEXT;
  return to_cu(sim::device_synchronize(dev));
}

SIM_API CUresult cuCtxGetFlags(unsigned int* flags) {
  sim::count_call("cuCtxGetFlags", false);
  if (flags == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *flags = g_primary_flags[sim::current_device()].load();
  return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxSetFlags(unsigned int flags) {
  sim::count_call("cuCtxSetFlags", false);
  g_primary_flags[sim::current_device()].store(flags);
  return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxGetApiVersion(CUcontext ctx, unsigned int* version) {
  sim::count_call("cuCtxGetApiVersion", false);
  if (version == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (ctx != nullptr && dev_of(ctx) < 0) return CUDA_ERROR_INVALID_CONTEXT;
  *version = 3020;  // every context since CUDA 3.2 reports the v2 context API
  return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxGetId(CUcontext ctx, unsigned long long* ctxId) {
  sim::count_call("cuCtxGetId", false);
  if (ctxId == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const int dev = ctx == nullptr ? sim::current_device() : dev_of(ctx);
  if (dev < 0) return CUDA_ERROR_INVALID_CONTEXT;
  *ctxId = static_cast<unsigned long long>(dev) + 1;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxGetStreamPriorityRange(int* leastPriority, int* greatestPriority) {
  sim::count_call("cuCtxGetStreamPriorityRange", false);
  if (leastPriority) *leastPriority = sim::facts::kLeastStreamPriority;
  if (greatestPriority) *greatestPriority = sim::facts::kGreatestStreamPriority;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxGetLimit(size_t* pvalue, CUlimit limit) {
  sim::count_call("cuCtxGetLimit", false);
  if (pvalue == nullptr || limit < 0 || static_cast<int>(limit) >= 8) return CUDA_ERROR_INVALID_VALUE;
  *pvalue = g_limits[limit].load();
  return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxSetLimit(CUlimit limit, size_t value) {
  sim::count_call("cuCtxSetLimit", false);
  if (limit < 0 || static_cast<int>(limit) >= 8) return CUDA_ERROR_INVALID_VALUE;
  g_limits[limit].store(value);
  return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxGetCacheConfig(CUfunc_cache* pconfig) {
  sim::count_call("cuCtxGetCacheConfig", false);
  if (pconfig == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *pconfig = CU_FUNC_CACHE_PREFER_NONE;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxSetCacheConfig(CUfunc_cache config) {
  sim::count_call("cuCtxSetCacheConfig", false);
  (void)config;
  return CUDA_SUCCESS;
}

namespace {
std::mutex g_peer_mu;
bool g_peer[kMaxDevices][kMaxDevices];
}  // namespace

SIM_API CUresult cuCtxEnablePeerAccess(CUcontext peerContext, unsigned int Flags) {
  sim::count_call("cuCtxEnablePeerAccess", false);
  const int peer = dev_of(peerContext);
  if (peer < 0) return CUDA_ERROR_INVALID_CONTEXT;
  if (Flags != 0) return CUDA_ERROR_INVALID_VALUE;
  const int self = sim::current_device();
  if (peer == self) return CUDA_ERROR_INVALID_DEVICE;
  std::lock_guard<std::mutex> g(g_peer_mu);
  if (g_peer[self][peer]) return CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED;
  g_peer[self][peer] = true;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxDisablePeerAccess(CUcontext peerContext) {
  sim::count_call("cuCtxDisablePeerAccess", false);
  const int peer = dev_of(peerContext);
  if (peer < 0) return CUDA_ERROR_INVALID_CONTEXT;
  std::lock_guard<std::mutex> g(g_peer_mu);
  bool& on = g_peer[sim::current_device()][peer];
  if (!on) return CUDA_ERROR_PEER_ACCESS_NOT_ENABLED;
  on = false;
  return CUDA_SUCCESS;
}

// =====================================================================================
// Plain device memory
// =====================================================================================

SIM_API CUresult cuMemGetInfo_v2(size_t* free, size_t* total) {
  sim::count_call("cuMemGetInfo_v2", false);
  if (free == nullptr || total == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const int dev = sim::current_device();
  const std::uint64_t t = sim::device_total(dev), u = sim::device_used(dev);
  *total = static_cast<size_t>(t);
  *free = static_cast<size_t>(u < t ? t - u : 0);
  return CUDA_SUCCESS;
}

SIM_API CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytesize) {
  sim::count_call("cuMemAlloc_v2", false);
  if (dptr == nullptr || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
  void* p = nullptr;
  CUresult r = to_cu(sim::mem_alloc(sim::current_device(), bytesize, &p));
  *dptr = r == CUDA_SUCCESS ? reinterpret_cast<CUdeviceptr>(p) : 0;
  return r;
}

// Freeing device memory waits for the device on a GPU: pending work completes first.
// Freeing 0 does nothing, so it is counted under a name of its own (a counter keeps the
// sync flag of its first call), as cudaFree(nullptr) is.
SIM_API CUresult cuMemFree_v2(CUdeviceptr dptr) {
  if (dptr == 0) {
    sim::count_call("cuMemFree_v2(0)", false);
    return CUDA_SUCCESS;
  }
  sim::count_call("cuMemFree_v2", true);
  int dev = 0;
  if (sim::find_device_pointer(reinterpret_cast<void*>(dptr), &dev, nullptr, nullptr))
    sim::device_synchronize(dev);
  return to_cu(sim::mem_free(reinterpret_cast<void*>(dptr)));
}

SIM_API CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t bytesize, CUstream hStream) {
  sim::count_call("cuMemAllocAsync", false);
  if (dptr == nullptr || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
  int dev = 0;
  unsigned flags = 0;
  int prio = 0;
  if (CUresult r = to_cu(sim::stream_info(S(hStream), &dev, &flags, &prio)); r != CUDA_SUCCESS) return r;
  void* p = nullptr;
  CUresult r = to_cu(sim::mem_alloc(dev, bytesize, &p));
  if (r != CUDA_SUCCESS) return r;
  *dptr = reinterpret_cast<CUdeviceptr>(p);
  return enqueue(hStream);
}

SIM_API CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) {
  sim::count_call("cuMemFreeAsync", false);
  if (CUresult r = enqueue(hStream); r != CUDA_SUCCESS) return r;
  return to_cu(sim::mem_free(reinterpret_cast<void*>(dptr)));
}

SIM_API CUresult cuMemAllocHost_v2(void** pp, size_t bytesize) {
  sim::count_call("cuMemAllocHost_v2", false);
  if (pp == nullptr || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
  return to_cu(sim::host_alloc(bytesize, pp));
}

SIM_API CUresult cuMemHostAlloc(void** pp, size_t bytesize, unsigned int Flags) {
  sim::count_call("cuMemHostAlloc", false);
  if (pp == nullptr || bytesize == 0 || (Flags & ~0xfu) != 0) return CUDA_ERROR_INVALID_VALUE;
  return to_cu(sim::host_alloc(bytesize, pp));
}

// Freeing pinned memory synchronizes on a GPU, as cudaFreeHost does (NULL: counted apart).
SIM_API CUresult cuMemFreeHost(void* p) {
  if (p == nullptr) {
    sim::count_call("cuMemFreeHost(NULL)", false);
    return to_cu(sim::host_free(p));
  }
  sim::count_call("cuMemFreeHost", true);
  const CUresult r = to_cu(sim::host_free(p));
  if (r == CUDA_SUCCESS) sim::device_synchronize(sim::current_device());
  return r;
}

SIM_API CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr* pdptr, void* p, unsigned int Flags) {
  sim::count_call("cuMemHostGetDevicePointer_v2", false);
  if (pdptr == nullptr || p == nullptr || Flags != 0) return CUDA_ERROR_INVALID_VALUE;
  *pdptr = reinterpret_cast<CUdeviceptr>(p);  // unified addressing: the same address
  return CUDA_SUCCESS;
}

SIM_API CUresult cuMemHostRegister_v2(void* p, size_t bytesize, unsigned int Flags) {
  sim::count_call("cuMemHostRegister_v2", false);
  (void)Flags;
  return p != nullptr && bytesize != 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
PYPOOLSIM_ALIAS(cuMemHostRegister, cuMemHostRegister_v2)

// Synchronizing on a GPU, as cudaHostUnregister is.
SIM_API CUresult cuMemHostUnregister(void* p) {
  sim::count_call("cuMemHostUnregister", true);
  if (p == nullptr) return CUDA_ERROR_INVALID_VALUE;
  sim::device_synchronize(sim::current_device());  // it waits, so pending work completes
  return CUDA_SUCCESS;
}

SIM_API CUresult cuMemGetAddressRange_v2(CUdeviceptr* pbase, size_t* psize, CUdeviceptr dptr) {
  sim::count_call("cuMemGetAddressRange_v2", false);
  void* base = nullptr;
  std::size_t size = 0;
  if (!sim::find_device_pointer(reinterpret_cast<void*>(dptr), nullptr, &base, &size)) return CUDA_ERROR_NOT_FOUND;
  if (pbase) *pbase = reinterpret_cast<CUdeviceptr>(base);
  if (psize) *psize = size;
  return CUDA_SUCCESS;
}

namespace {
// One pointer attribute of a device pointer (false: not a pointer the driver knows).
CUresult pointer_attribute(void* data, CUpointer_attribute attribute, CUdeviceptr ptr, bool lenient) {
  int dev = 0;
  void* base = nullptr;
  std::size_t size = 0;
  const bool known = sim::find_device_pointer(reinterpret_cast<void*>(ptr), &dev, &base, &size);
  if (!known && !lenient) return CUDA_ERROR_INVALID_VALUE;
  std::uint64_t handle_types = 0;
  bool vmm = false;
  if (known) {
    std::uint64_t h = 0;
    if (sim::vmm_retain_handle(reinterpret_cast<void*>(ptr), &h) == sim::Status::ok) {
      vmm = true;
      {
        std::lock_guard<std::mutex> g(g_mu);
        auto it = g_handle_types.find(h);
        handle_types = it != g_handle_types.end() ? it->second : 0;
      }
      sim::vmm_release(h);
    }
  }
  auto put_bool = [&](bool v) { *static_cast<unsigned char*>(data) = v ? 1 : 0; };
  switch (attribute) {
    case CU_POINTER_ATTRIBUTE_CONTEXT: *static_cast<CUcontext*>(data) = known ? ctx_of(dev) : nullptr; break;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
      *static_cast<unsigned int*>(data) = known ? CU_MEMORYTYPE_DEVICE : 0;
      break;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER: *static_cast<CUdeviceptr*>(data) = known ? ptr : 0; break;
    case CU_POINTER_ATTRIBUTE_HOST_POINTER:
      if (!lenient) return CUDA_ERROR_INVALID_VALUE;  // device memory is not host-mapped
      *static_cast<void**>(data) = nullptr;
      break;
    case CU_POINTER_ATTRIBUTE_SYNC_MEMOPS: put_bool(false); break;
    case CU_POINTER_ATTRIBUTE_BUFFER_ID:
      *static_cast<unsigned long long*>(data) = known ? reinterpret_cast<std::uintptr_t>(base) : 0;
      break;
    case CU_POINTER_ATTRIBUTE_IS_MANAGED: put_bool(false); break;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: *static_cast<int*>(data) = known ? dev : -2; break;
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE: put_bool(known && !vmm); break;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
    case CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR:
      *static_cast<void**>(data) = known ? base : nullptr;
      break;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
    case CU_POINTER_ATTRIBUTE_MAPPING_SIZE:
      *static_cast<size_t*>(data) = known ? size : 0;
      break;
    case CU_POINTER_ATTRIBUTE_MAPPED: put_bool(known); break;
    case CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES: *static_cast<unsigned long long*>(data) = handle_types; break;
    case CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE: put_bool(false); break;
    case CU_POINTER_ATTRIBUTE_ACCESS_FLAGS:
      *static_cast<unsigned int*>(data) = known ? CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READWRITE : 0;
      break;
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE: *static_cast<CUmemoryPool*>(data) = nullptr; break;
    case CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID:
      *static_cast<unsigned long long*>(data) = known ? reinterpret_cast<std::uintptr_t>(base) : 0;
      break;
    case CU_POINTER_ATTRIBUTE_IS_HW_DECOMPRESS_CAPABLE: put_bool(false); break;
    default: return lenient ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}
}  // namespace

SIM_API CUresult cuPointerGetAttribute(void* data, CUpointer_attribute attribute, CUdeviceptr ptr) {
  sim::count_call("cuPointerGetAttribute", false);
  if (data == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return pointer_attribute(data, attribute, ptr, false);
}

// Unlike cuPointerGetAttribute, unknown pointers are not an error (cuda.h): the
// attributes read as null/zero.
SIM_API CUresult cuPointerGetAttributes(unsigned int numAttributes, CUpointer_attribute* attributes, void** data,
                                        CUdeviceptr ptr) {
  sim::count_call("cuPointerGetAttributes", false);
  if (numAttributes == 0 || attributes == nullptr || data == nullptr) return CUDA_ERROR_INVALID_VALUE;
  for (unsigned i = 0; i < numAttributes; ++i) {
    if (data[i] == nullptr) continue;
    if (CUresult r = pointer_attribute(data[i], attributes[i], ptr, true); r != CUDA_SUCCESS) return r;
  }
  return CUDA_SUCCESS;
}

// ---- copies and memsets: validated, enqueued, never performed ----

namespace {
CUresult check_dev(CUdeviceptr p, std::size_t n) { return n == 0 || device_range(p, n) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; }
// A cuMemcpy operand: device memory the driver knows, or any host address.
CUresult check_any(CUdeviceptr p, std::size_t n) {
  if (p == 0 && n != 0) return CUDA_ERROR_INVALID_VALUE;
  if (sim::find_device_pointer(reinterpret_cast<void*>(p), nullptr, nullptr, nullptr)) return check_dev(p, n);
  return CUDA_SUCCESS;
}
// A blocking copy waits for the legacy default stream, as on a GPU.
CUresult blocking() {
  if (CUresult r = enqueue(nullptr); r != CUDA_SUCCESS) return r;
  return to_cu(sim::stream_synchronize(nullptr));
}
}  // namespace

SIM_API CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount) {
  sim::count_call("cuMemcpy", true);
  if (CUresult r = check_any(dst, ByteCount); r != CUDA_SUCCESS) return r;
  if (CUresult r = check_any(src, ByteCount); r != CUDA_SUCCESS) return r;
  return blocking();
}

SIM_API CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount, CUstream hStream) {
  sim::count_call("cuMemcpyAsync", false);
  if (CUresult r = check_any(dst, ByteCount); r != CUDA_SUCCESS) return r;
  if (CUresult r = check_any(src, ByteCount); r != CUDA_SUCCESS) return r;
  return enqueue(hStream);
}

SIM_API CUresult cuMemcpyHtoD_v2(CUdeviceptr dstDevice, const void* srcHost, size_t ByteCount) {
  sim::count_call("cuMemcpyHtoD_v2", true);
  if (srcHost == nullptr && ByteCount != 0) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult r = check_dev(dstDevice, ByteCount); r != CUDA_SUCCESS) return r;
  return blocking();
}

SIM_API CUresult cuMemcpyDtoH_v2(void* dstHost, CUdeviceptr srcDevice, size_t ByteCount) {
  sim::count_call("cuMemcpyDtoH_v2", true);
  if (dstHost == nullptr && ByteCount != 0) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult r = check_dev(srcDevice, ByteCount); r != CUDA_SUCCESS) return r;
  return blocking();
}

SIM_API CUresult cuMemcpyDtoD_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount) {
  sim::count_call("cuMemcpyDtoD_v2", false);  // device-to-device copies are asynchronous
  if (CUresult r = check_dev(dstDevice, ByteCount); r != CUDA_SUCCESS) return r;
  if (CUresult r = check_dev(srcDevice, ByteCount); r != CUDA_SUCCESS) return r;
  return enqueue(nullptr);
}

SIM_API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dstDevice, const void* srcHost, size_t ByteCount, CUstream hStream) {
  sim::count_call("cuMemcpyHtoDAsync_v2", false);
  if (srcHost == nullptr && ByteCount != 0) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult r = check_dev(dstDevice, ByteCount); r != CUDA_SUCCESS) return r;
  return enqueue(hStream);
}

SIM_API CUresult cuMemcpyDtoHAsync_v2(void* dstHost, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream) {
  sim::count_call("cuMemcpyDtoHAsync_v2", false);
  if (dstHost == nullptr && ByteCount != 0) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult r = check_dev(srcDevice, ByteCount); r != CUDA_SUCCESS) return r;
  return enqueue(hStream);
}

SIM_API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream) {
  sim::count_call("cuMemcpyDtoDAsync_v2", false);
  if (CUresult r = check_dev(dstDevice, ByteCount); r != CUDA_SUCCESS) return r;
  if (CUresult r = check_dev(srcDevice, ByteCount); r != CUDA_SUCCESS) return r;
  return enqueue(hStream);
}

SIM_API CUresult cuMemsetD8_v2(CUdeviceptr dstDevice, unsigned char uc, size_t N) {
  sim::count_call("cuMemsetD8_v2", false);
  (void)uc;
  if (CUresult r = check_dev(dstDevice, N); r != CUDA_SUCCESS) return r;
  return enqueue(nullptr);
}

SIM_API CUresult cuMemsetD32_v2(CUdeviceptr dstDevice, unsigned int ui, size_t N) {
  sim::count_call("cuMemsetD32_v2", false);
  (void)ui;
  if (N > SIZE_MAX / 4 || (dstDevice & 3) != 0) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult r = check_dev(dstDevice, N * 4); r != CUDA_SUCCESS) return r;
  return enqueue(nullptr);
}

SIM_API CUresult cuMemsetD8Async(CUdeviceptr dstDevice, unsigned char uc, size_t N, CUstream hStream) {
  sim::count_call("cuMemsetD8Async", false);
  (void)uc;
  if (CUresult r = check_dev(dstDevice, N); r != CUDA_SUCCESS) return r;
  return enqueue(hStream);
}

SIM_API CUresult cuMemsetD32Async(CUdeviceptr dstDevice, unsigned int ui, size_t N, CUstream hStream) {
  sim::count_call("cuMemsetD32Async", false);
  (void)ui;
  if (N > SIZE_MAX / 4 || (dstDevice & 3) != 0) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult r = check_dev(dstDevice, N * 4); r != CUDA_SUCCESS) return r;
  return enqueue(hStream);
}

// =====================================================================================
// Virtual memory management
// =====================================================================================

namespace {
// The device a CUmemAllocationProp describes, or an error.
CUresult prop_device(const CUmemAllocationProp* prop, int* dev) {
  if (prop == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (prop->type != CU_MEM_ALLOCATION_TYPE_PINNED) return CUDA_ERROR_INVALID_VALUE;
  // Host (NUMA) VMM allocations are not simulated.
  if (prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE) return CUDA_ERROR_NOT_SUPPORTED;
  if (!valid_dev(prop->location.id)) return CUDA_ERROR_INVALID_DEVICE;
  *dev = prop->location.id;
  return CUDA_SUCCESS;
}
}  // namespace

SIM_API CUresult cuMemGetAllocationGranularity(size_t* granularity, const CUmemAllocationProp* prop,
                                               CUmemAllocationGranularity_flags option) {
  sim::count_call("cuMemGetAllocationGranularity", false);
  if (granularity == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM && option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED)
    return CUDA_ERROR_INVALID_VALUE;
  int dev = 0;
  if (CUresult r = prop_device(prop, &dev); r != CUDA_SUCCESS) return r;
  *granularity = static_cast<size_t>(sim::granularity());
  return CUDA_SUCCESS;
}

SIM_API CUresult cuMemAddressReserve(CUdeviceptr* ptr, size_t size, size_t alignment, CUdeviceptr addr,
                                     unsigned long long flags) {
  sim::count_call("cuMemAddressReserve", false);
  if (ptr == nullptr || flags != 0) return CUDA_ERROR_INVALID_VALUE;
  void* p = nullptr;
  CUresult r = vmm_cu(sim::vmm_reserve(size, alignment, reinterpret_cast<void*>(addr), &p));
  *ptr = r == CUDA_SUCCESS ? reinterpret_cast<CUdeviceptr>(p) : 0;
  return r;
}

SIM_API CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  sim::count_call("cuMemAddressFree", false);
  return vmm_cu(sim::vmm_free_reservation(reinterpret_cast<void*>(ptr), size));
}

SIM_API CUresult cuMemCreate(CUmemGenericAllocationHandle* handle, size_t size, const CUmemAllocationProp* prop,
                             unsigned long long flags) {
  sim::count_call("cuMemCreate", false);
  if (handle == nullptr || flags != 0) return CUDA_ERROR_INVALID_VALUE;
  int dev = 0;
  if (CUresult r = prop_device(prop, &dev); r != CUDA_SUCCESS) return r;
  const unsigned types = static_cast<unsigned>(prop->requestedHandleTypes);
  if ((types & ~0xfu) != 0) return CUDA_ERROR_INVALID_VALUE;
  // No NVLink fabric (CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED is 0) and no
  // Windows handles: what a PCIe GPU on Linux answers. Callers probing for fabric
  // support (torch's expandable segments) fall back to POSIX file descriptors.
  if ((types & (CU_MEM_HANDLE_TYPE_FABRIC | CU_MEM_HANDLE_TYPE_WIN32 | CU_MEM_HANDLE_TYPE_WIN32_KMT)) != 0)
    return CUDA_ERROR_NOT_SUPPORTED;
  if (prop->allocFlags.compressionType != 0) return CUDA_ERROR_NOT_SUPPORTED;
  std::uint64_t h = 0;
  CUresult r = vmm_cu(sim::vmm_create(dev, size, &h));
  if (r != CUDA_SUCCESS) return r;
  {
    std::lock_guard<std::mutex> g(g_mu);
    g_handle_types[h] = types;
  }
  *handle = h;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
  sim::count_call("cuMemRelease", false);
  CUresult r = vmm_cu(sim::vmm_release(handle));
  if (r == CUDA_SUCCESS && sim::vmm_handle_info(handle, nullptr, nullptr) != sim::Status::ok) {
    std::lock_guard<std::mutex> g(g_mu);
    g_handle_types.erase(handle);
  }
  return r;
}

SIM_API CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                          unsigned long long flags) {
  sim::count_call("cuMemMap", false);
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  return vmm_cu(sim::vmm_map(reinterpret_cast<void*>(ptr), size, offset, handle));
}

SIM_API CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
  sim::count_call("cuMemUnmap", true);
  // The handle may be gone once its last mapping is (released earlier): forget its type.
  std::uint64_t h = 0;
  const bool had = sim::vmm_retain_handle(reinterpret_cast<void*>(ptr), &h) == sim::Status::ok;
  if (had) sim::vmm_release(h);
  CUresult r = vmm_cu(sim::vmm_unmap(reinterpret_cast<void*>(ptr), size));
  if (r == CUDA_SUCCESS && had && sim::vmm_handle_info(h, nullptr, nullptr) != sim::Status::ok) {
    std::lock_guard<std::mutex> g(g_mu);
    g_handle_types.erase(h);
  }
  return r;
}

SIM_API CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc, size_t count) {
  sim::count_call("cuMemSetAccess", false);
  if (desc == nullptr || count == 0) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < count; ++i) {
    if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_dev(desc[i].location.id)) return CUDA_ERROR_INVALID_DEVICE;
    const auto f = desc[i].flags;
    if (f != CU_MEM_ACCESS_FLAGS_PROT_NONE && f != CU_MEM_ACCESS_FLAGS_PROT_READ && f != CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
      return CUDA_ERROR_INVALID_VALUE;
  }
  for (size_t i = 0; i < count; ++i) {
    CUresult r = vmm_cu(sim::vmm_set_access(reinterpret_cast<void*>(ptr), size, desc[i].location.id));
    if (r != CUDA_SUCCESS) return r;
  }
  return CUDA_SUCCESS;
}

SIM_API CUresult cuMemGetAccess(unsigned long long* flags, const CUmemLocation* location, CUdeviceptr ptr) {
  sim::count_call("cuMemGetAccess", false);
  if (flags == nullptr || location == nullptr || location->type != CU_MEM_LOCATION_TYPE_DEVICE)
    return CUDA_ERROR_INVALID_VALUE;
  if (!device_range(ptr, 1)) return CUDA_ERROR_INVALID_VALUE;
  *flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp* prop, CUmemGenericAllocationHandle handle) {
  sim::count_call("cuMemGetAllocationPropertiesFromHandle", false);
  if (prop == nullptr) return CUDA_ERROR_INVALID_VALUE;
  int dev = 0;
  std::size_t size = 0;
  if (sim::vmm_handle_info(handle, &dev, &size) != sim::Status::ok) return CUDA_ERROR_INVALID_VALUE;
  std::memset(prop, 0, sizeof *prop);
  prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop->location.id = dev;
  std::lock_guard<std::mutex> g(g_mu);
  auto it = g_handle_types.find(handle);
  prop->requestedHandleTypes = static_cast<CUmemAllocationHandleType>(it != g_handle_types.end() ? it->second : 0);
  return CUDA_SUCCESS;
}

SIM_API CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle* handle, void* addr) {
  sim::count_call("cuMemRetainAllocationHandle", false);
  if (handle == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::uint64_t h = 0;
  CUresult r = vmm_cu(sim::vmm_retain_handle(addr, &h));
  if (r == CUDA_SUCCESS) *handle = h;
  return r;
}

// Sharing physical memory with another process is not simulated (the other process has
// its own simulated device). A handle created without the requested type is refused as
// the driver refuses it.
SIM_API CUresult cuMemExportToShareableHandle(void* shareableHandle, CUmemGenericAllocationHandle handle,
                                              CUmemAllocationHandleType handleType, unsigned long long flags) {
  sim::count_call("cuMemExportToShareableHandle", false);
  if (shareableHandle == nullptr || flags != 0) return CUDA_ERROR_INVALID_VALUE;
  unsigned types = 0;
  {
    std::lock_guard<std::mutex> g(g_mu);
    auto it = g_handle_types.find(handle);
    if (it == g_handle_types.end()) return CUDA_ERROR_INVALID_VALUE;
    types = it->second;
  }
  if ((types & static_cast<unsigned>(handleType)) == 0) return CUDA_ERROR_INVALID_VALUE;
  return CUDA_ERROR_NOT_SUPPORTED;
}

SIM_API CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle* handle, void* osHandle,
                                                CUmemAllocationHandleType shHandleType) {
  sim::count_call("cuMemImportFromShareableHandle", false);
  (void)osHandle;
  (void)shHandleType;
  if (handle == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return CUDA_ERROR_NOT_SUPPORTED;
}

// Multicast objects need NVSwitch (CU_DEVICE_ATTRIBUTE_MULTICAST_SUPPORTED is 0).
SIM_API CUresult cuMulticastCreate(CUmemGenericAllocationHandle* mcHandle, const CUmulticastObjectProp* prop) {
  sim::count_call("cuMulticastCreate", false);
  if (mcHandle == nullptr || prop == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return CUDA_ERROR_NOT_SUPPORTED;
}

SIM_API CUresult cuMulticastAddDevice(CUmemGenericAllocationHandle mcHandle, CUdevice dev) {
  sim::count_call("cuMulticastAddDevice", false);
  (void)mcHandle;
  (void)dev;
  return CUDA_ERROR_NOT_SUPPORTED;
}

SIM_API CUresult cuMulticastBindMem(CUmemGenericAllocationHandle mcHandle, size_t mcOffset,
                                    CUmemGenericAllocationHandle memHandle, size_t memOffset, size_t size,
                                    unsigned long long flags) {
  sim::count_call("cuMulticastBindMem", false);
  (void)mcHandle, (void)mcOffset, (void)memHandle, (void)memOffset, (void)size, (void)flags;
  return CUDA_ERROR_NOT_SUPPORTED;
}

SIM_API CUresult cuMulticastUnbind(CUmemGenericAllocationHandle mcHandle, CUdevice dev, size_t mcOffset, size_t size) {
  sim::count_call("cuMulticastUnbind", false);
  (void)mcHandle, (void)dev, (void)mcOffset, (void)size;
  return CUDA_ERROR_NOT_SUPPORTED;
}

SIM_API CUresult cuMulticastGetGranularity(size_t* granularity, const CUmulticastObjectProp* prop,
                                           CUmulticastGranularity_flags option) {
  sim::count_call("cuMulticastGetGranularity", false);
  (void)option;
  if (granularity == nullptr || prop == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return CUDA_ERROR_NOT_SUPPORTED;
}

// =====================================================================================
// Streams and events
// =====================================================================================

SIM_API CUresult cuStreamCreate(CUstream* phStream, unsigned int Flags) {
  sim::count_call("cuStreamCreate", false);
  if (phStream == nullptr || (Flags & ~static_cast<unsigned>(CU_STREAM_NON_BLOCKING)) != 0) return CUDA_ERROR_INVALID_VALUE;
  sim::Stream* s = nullptr;
  CUresult r = to_cu(sim::stream_create(sim::current_device(), Flags, 0, &s));
  if (r == CUDA_SUCCESS) *phStream = reinterpret_cast<CUstream>(s);
  return r;
}

SIM_API CUresult cuStreamCreateWithPriority(CUstream* phStream, unsigned int flags, int priority) {
  sim::count_call("cuStreamCreateWithPriority", false);
  if (phStream == nullptr || (flags & ~static_cast<unsigned>(CU_STREAM_NON_BLOCKING)) != 0) return CUDA_ERROR_INVALID_VALUE;
  priority = std::clamp(priority, sim::facts::kGreatestStreamPriority, sim::facts::kLeastStreamPriority);
  sim::Stream* s = nullptr;
  CUresult r = to_cu(sim::stream_create(sim::current_device(), flags, priority, &s));
  if (r == CUDA_SUCCESS) *phStream = reinterpret_cast<CUstream>(s);
  return r;
}

SIM_API CUresult cuStreamDestroy_v2(CUstream hStream) {
  sim::count_call("cuStreamDestroy_v2", false);
  return to_cu(sim::stream_destroy(S(hStream)));
}
PYPOOLSIM_ALIAS(cuStreamDestroy, cuStreamDestroy_v2)

SIM_API CUresult cuStreamQuery(CUstream hStream) {
  sim::count_call("cuStreamQuery", false);
  return to_cu(sim::stream_query(S(hStream)));
}

SIM_API CUresult cuStreamSynchronize(CUstream hStream) {
  sim::count_call("cuStreamSynchronize", true);
  return to_cu(sim::stream_synchronize(S(hStream)));
}

SIM_API CUresult cuStreamWaitEvent(CUstream hStream, CUevent hEvent, unsigned int Flags) {
  sim::count_call("cuStreamWaitEvent", false);
  if ((Flags & ~static_cast<unsigned>(CU_EVENT_WAIT_EXTERNAL)) != 0) return CUDA_ERROR_INVALID_VALUE;
  return to_cu(sim::stream_wait_event(S(hStream), E(hEvent)));
}

SIM_API CUresult cuStreamGetPriority(CUstream hStream, int* priority) {
  sim::count_call("cuStreamGetPriority", false);
  if (priority == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return to_cu(sim::stream_info(S(hStream), nullptr, nullptr, priority));
}

SIM_API CUresult cuStreamGetFlags(CUstream hStream, unsigned int* flags) {
  sim::count_call("cuStreamGetFlags", false);
  if (flags == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return to_cu(sim::stream_info(S(hStream), nullptr, flags, nullptr));
}

SIM_API CUresult cuStreamGetDevice(CUstream hStream, CUdevice* device) {
  sim::count_call("cuStreamGetDevice", false);
  if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
  int dev = 0;
  CUresult r = to_cu(sim::stream_info(S(hStream), &dev, nullptr, nullptr));
  if (r == CUDA_SUCCESS) *device = dev;
  return r;
}

SIM_API CUresult cuStreamGetCtx(CUstream hStream, CUcontext* pctx) {
  sim::count_call("cuStreamGetCtx", false);
  if (pctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  int dev = 0;
  CUresult r = to_cu(sim::stream_info(S(hStream), &dev, nullptr, nullptr));
  if (r == CUDA_SUCCESS) *pctx = ctx_of(dev);
  return r;
}

SIM_API CUresult cuStreamGetCtx_v2(CUstream hStream, CUcontext* pCtx, CUgreenCtx* pGreenCtx) {
  sim::count_call("cuStreamGetCtx_v2", false);
  if (pCtx == nullptr && pGreenCtx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  int dev = 0;
  CUresult r = to_cu(sim::stream_info(S(hStream), &dev, nullptr, nullptr));
  if (r != CUDA_SUCCESS) return r;
  if (pCtx) *pCtx = ctx_of(dev);
  if (pGreenCtx) *pGreenCtx = nullptr;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuStreamGetId(CUstream hStream, unsigned long long* streamId) {
  sim::count_call("cuStreamGetId", false);
  if (streamId == nullptr) return CUDA_ERROR_INVALID_VALUE;
  int dev = 0;
  CUresult r = to_cu(sim::stream_info(S(hStream), &dev, nullptr, nullptr));
  if (r != CUDA_SUCCESS) return r;
  const auto v = reinterpret_cast<std::uintptr_t>(hStream);
  *streamId = v <= 2 ? static_cast<unsigned long long>(dev) : v;  // default streams: small ids
  return CUDA_SUCCESS;
}

// Stream capture is not simulated: no stream is ever capturing.
SIM_API CUresult cuStreamIsCapturing(CUstream hStream, CUstreamCaptureStatus* captureStatus) {
  sim::count_call("cuStreamIsCapturing", false);
  if (captureStatus == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult r = to_cu(sim::stream_info(S(hStream), nullptr, nullptr, nullptr)); r != CUDA_SUCCESS) return r;
  *captureStatus = CU_STREAM_CAPTURE_STATUS_NONE;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuStreamGetCaptureInfo_v3(CUstream hStream, CUstreamCaptureStatus* captureStatus_out,
                                           cuuint64_t* id_out, CUgraph* graph_out,
                                           const CUgraphNode** dependencies_out, const CUgraphEdgeData** edgeData_out,
                                           size_t* numDependencies_out) {
  sim::count_call("cuStreamGetCaptureInfo_v3", false);
  (void)id_out, (void)graph_out, (void)dependencies_out, (void)edgeData_out, (void)numDependencies_out;
  if (captureStatus_out == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult r = to_cu(sim::stream_info(S(hStream), nullptr, nullptr, nullptr)); r != CUDA_SUCCESS) return r;
  *captureStatus_out = CU_STREAM_CAPTURE_STATUS_NONE;
  return CUDA_SUCCESS;
}

// The CUDA 11.3-12.2 ABI (no edge data).
SIM_API CUresult cuStreamGetCaptureInfo_v2(CUstream hStream, CUstreamCaptureStatus* captureStatus_out,
                                           cuuint64_t* id_out, CUgraph* graph_out,
                                           const CUgraphNode** dependencies_out, size_t* numDependencies_out) {
  return cuStreamGetCaptureInfo_v3(hStream, captureStatus_out, id_out, graph_out, dependencies_out, nullptr,
                                   numDependencies_out);
}

SIM_API CUresult cuStreamWriteValue32_v2(CUstream stream, CUdeviceptr addr, cuuint32_t value, unsigned int flags) {
  sim::count_call("cuStreamWriteValue32_v2", false);
  (void)value;
  (void)flags;
  if ((addr & 3) != 0 || !device_range(addr, 4)) return CUDA_ERROR_INVALID_VALUE;
  return enqueue(stream);
}
PYPOOLSIM_ALIAS(cuStreamWriteValue32, cuStreamWriteValue32_v2)

SIM_API CUresult cuStreamWaitValue32_v2(CUstream stream, CUdeviceptr addr, cuuint32_t value, unsigned int flags) {
  sim::count_call("cuStreamWaitValue32_v2", false);
  (void)value;
  (void)flags;
  if ((addr & 3) != 0 || !device_range(addr, 4)) return CUDA_ERROR_INVALID_VALUE;
  return enqueue(stream);
}
PYPOOLSIM_ALIAS(cuStreamWaitValue32, cuStreamWaitValue32_v2)

SIM_API CUresult cuEventCreate(CUevent* phEvent, unsigned int Flags) {
  sim::count_call("cuEventCreate", false);
  if (phEvent == nullptr || (Flags & ~0xfu) != 0) return CUDA_ERROR_INVALID_VALUE;
  if ((Flags & CU_EVENT_INTERPROCESS) != 0 && (Flags & CU_EVENT_DISABLE_TIMING) == 0) return CUDA_ERROR_INVALID_VALUE;
  sim::Event* e = nullptr;
  CUresult r = to_cu(sim::event_create(Flags, &e));
  if (r == CUDA_SUCCESS) *phEvent = reinterpret_cast<CUevent>(e);
  return r;
}

SIM_API CUresult cuEventRecord(CUevent hEvent, CUstream hStream) {
  sim::count_call("cuEventRecord", false);
  return to_cu(sim::event_record(E(hEvent), S(hStream)));
}

SIM_API CUresult cuEventRecordWithFlags(CUevent hEvent, CUstream hStream, unsigned int flags) {
  sim::count_call("cuEventRecordWithFlags", false);
  if ((flags & ~static_cast<unsigned>(CU_EVENT_RECORD_EXTERNAL)) != 0) return CUDA_ERROR_INVALID_VALUE;
  return to_cu(sim::event_record(E(hEvent), S(hStream)));
}

SIM_API CUresult cuEventQuery(CUevent hEvent) {
  sim::count_call("cuEventQuery", false);
  return to_cu(sim::event_query(E(hEvent)));
}

SIM_API CUresult cuEventSynchronize(CUevent hEvent) {
  sim::count_call("cuEventSynchronize", true);
  return to_cu(sim::event_synchronize(E(hEvent)));
}

SIM_API CUresult cuEventDestroy_v2(CUevent hEvent) {
  sim::count_call("cuEventDestroy_v2", false);
  return to_cu(sim::event_destroy(E(hEvent)));
}
PYPOOLSIM_ALIAS(cuEventDestroy, cuEventDestroy_v2)

SIM_API CUresult cuEventElapsedTime_v2(float* pMilliseconds, CUevent hStart, CUevent hEnd) {
  sim::count_call("cuEventElapsedTime_v2", false);
  if (pMilliseconds == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return to_cu(sim::event_elapsed_ms(E(hStart), E(hEnd), pMilliseconds));
}
PYPOOLSIM_ALIAS(cuEventElapsedTime, cuEventElapsedTime_v2)

// =====================================================================================
// Modules, functions, launches (kernels never run)
// =====================================================================================

namespace {
CUresult new_module(CUmodule* module) {
  if (module == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *module = reinterpret_cast<CUmodule>(new SimModule());
  return CUDA_SUCCESS;
}
SimModule* M(CUmodule m) {
  auto* p = reinterpret_cast<SimModule*>(m);
  return p != nullptr && p->magic == kModuleMagic ? p : nullptr;
}
}  // namespace

SIM_API CUresult cuModuleLoad(CUmodule* module, const char* fname) {
  sim::count_call("cuModuleLoad", false);
  if (fname == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return new_module(module);
}

SIM_API CUresult cuModuleLoadData(CUmodule* module, const void* image) {
  sim::count_call("cuModuleLoadData", false);
  if (image == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return new_module(module);
}

SIM_API CUresult cuModuleLoadDataEx(CUmodule* module, const void* image, unsigned int numOptions, CUjit_option* options,
                                    void** optionValues) {
  sim::count_call("cuModuleLoadDataEx", false);
  (void)numOptions, (void)options, (void)optionValues;
  if (image == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return new_module(module);
}

SIM_API CUresult cuModuleLoadFatBinary(CUmodule* module, const void* fatCubin) {
  sim::count_call("cuModuleLoadFatBinary", false);
  if (fatCubin == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return new_module(module);
}

// The module object stays: functions taken from it may still be referenced.
SIM_API CUresult cuModuleUnload(CUmodule hmod) {
  sim::count_call("cuModuleUnload", false);
  return M(hmod) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

namespace {
CUresult module_function(CUfunction* hfunc, CUmodule hmod, const char* name) {
  if (hfunc == nullptr || name == nullptr) return CUDA_ERROR_INVALID_VALUE;
  SimModule* m = M(hmod);
  if (m == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  std::lock_guard<std::mutex> g(m->mu);
  SimFunc*& f = m->funcs[name];
  if (f == nullptr) f = new SimFunc();
  *hfunc = reinterpret_cast<CUfunction>(f);
  return CUDA_SUCCESS;
}
}  // namespace

SIM_API CUresult cuModuleGetFunction(CUfunction* hfunc, CUmodule hmod, const char* name) {
  sim::count_call("cuModuleGetFunction", false);
  return module_function(hfunc, hmod, name);
}

SIM_API CUresult cuModuleGetGlobal_v2(CUdeviceptr* dptr, size_t* bytes, CUmodule hmod, const char* name) {
  sim::count_call("cuModuleGetGlobal_v2", false);
  (void)dptr, (void)bytes;
  if (name == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return M(hmod) ? CUDA_ERROR_NOT_FOUND : CUDA_ERROR_INVALID_HANDLE;
}

SIM_API CUresult cuModuleGetLoadingMode(CUmoduleLoadingMode* mode) {
  sim::count_call("cuModuleGetLoadingMode", false);
  if (mode == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *mode = CU_MODULE_LAZY_LOADING;
  return CUDA_SUCCESS;
}

// A library is a module; a kernel is a function.
SIM_API CUresult cuLibraryLoadData(CUlibrary* library, const void* code, CUjit_option* jitOptions,
                                   void** jitOptionsValues, unsigned int numJitOptions, CUlibraryOption* libraryOptions,
                                   void** libraryOptionValues, unsigned int numLibraryOptions) {
  sim::count_call("cuLibraryLoadData", false);
  (void)jitOptions, (void)jitOptionsValues, (void)numJitOptions, (void)libraryOptions, (void)libraryOptionValues,
      (void)numLibraryOptions;
  if (library == nullptr || code == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *library = reinterpret_cast<CUlibrary>(new SimModule());
  return CUDA_SUCCESS;
}

SIM_API CUresult cuLibraryUnload(CUlibrary library) {
  sim::count_call("cuLibraryUnload", false);
  return M(reinterpret_cast<CUmodule>(library)) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

SIM_API CUresult cuLibraryGetModule(CUmodule* pMod, CUlibrary library) {
  sim::count_call("cuLibraryGetModule", false);
  if (pMod == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (!M(reinterpret_cast<CUmodule>(library))) return CUDA_ERROR_INVALID_HANDLE;
  *pMod = reinterpret_cast<CUmodule>(library);
  return CUDA_SUCCESS;
}

SIM_API CUresult cuLibraryGetKernel(CUkernel* pKernel, CUlibrary library, const char* name) {
  sim::count_call("cuLibraryGetKernel", false);
  if (pKernel == nullptr) return CUDA_ERROR_INVALID_VALUE;
  CUfunction f = nullptr;
  CUresult r = module_function(&f, reinterpret_cast<CUmodule>(library), name);
  if (r == CUDA_SUCCESS) *pKernel = reinterpret_cast<CUkernel>(f);
  return r;
}

SIM_API CUresult cuKernelGetFunction(CUfunction* pFunc, CUkernel kernel) {
  sim::count_call("cuKernelGetFunction", false);
  if (pFunc == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (!ok_func(reinterpret_cast<CUfunction>(kernel))) return CUDA_ERROR_INVALID_HANDLE;
  *pFunc = reinterpret_cast<CUfunction>(kernel);
  return CUDA_SUCCESS;
}

SIM_API CUresult cuFuncGetAttribute(int* pi, CUfunction_attribute attrib, CUfunction hfunc) {
  sim::count_call("cuFuncGetAttribute", false);
  if (pi == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (!ok_func(hfunc)) return CUDA_ERROR_INVALID_HANDLE;
  auto* f = reinterpret_cast<SimFunc*>(hfunc);
  auto it = f->attrs.find(static_cast<int>(attrib));
  if (it != f->attrs.end()) {
    *pi = it->second;
    return CUDA_SUCCESS;
  }
  switch (attrib) {
    case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *pi = sim::facts::kMaxThreadsPerBlock; break;
    case CU_FUNC_ATTRIBUTE_NUM_REGS: *pi = 32; break;
    case CU_FUNC_ATTRIBUTE_PTX_VERSION:
    case CU_FUNC_ATTRIBUTE_BINARY_VERSION: *pi = sim::facts::kCcMajor * 10 + sim::facts::kCcMinor; break;
    case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: *pi = -1; break;
    default:
      if (attrib < 0 || attrib >= CU_FUNC_ATTRIBUTE_MAX) return CUDA_ERROR_INVALID_VALUE;
      *pi = 0;
  }
  return CUDA_SUCCESS;
}

SIM_API CUresult cuFuncSetAttribute(CUfunction hfunc, CUfunction_attribute attrib, int value) {
  sim::count_call("cuFuncSetAttribute", false);
  if (!ok_func(hfunc)) return CUDA_ERROR_INVALID_HANDLE;
  if (attrib == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES && (value < 0 || value > sim::facts::kSharedPerBlockOptin))
    return CUDA_ERROR_INVALID_VALUE;
  reinterpret_cast<SimFunc*>(hfunc)->attrs[static_cast<int>(attrib)] = value;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuFuncSetCacheConfig(CUfunction hfunc, CUfunc_cache config) {
  sim::count_call("cuFuncSetCacheConfig", false);
  (void)config;
  return ok_func(hfunc) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

namespace {
CUresult launch(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                unsigned smem, CUstream s) {
  if (!ok_func(f)) return CUDA_ERROR_INVALID_HANDLE;
  if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0) return CUDA_ERROR_INVALID_VALUE;
  if (static_cast<std::uint64_t>(bx) * by * bz > static_cast<std::uint64_t>(sim::facts::kMaxThreadsPerBlock) ||
      smem > static_cast<unsigned>(sim::facts::kSharedPerBlockOptin))
    return CUDA_ERROR_INVALID_VALUE;
  return enqueue(s);
}
}  // namespace

SIM_API CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,
                                unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,
                                unsigned int sharedMemBytes, CUstream hStream, void** kernelParams, void** extra) {
  sim::count_call("cuLaunchKernel", false);
  (void)kernelParams, (void)extra;
  return launch(f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes, hStream);
}

SIM_API CUresult cuLaunchKernelEx(const CUlaunchConfig* config, CUfunction f, void** kernelParams, void** extra) {
  sim::count_call("cuLaunchKernelEx", false);
  (void)kernelParams, (void)extra;
  if (config == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return launch(f, config->gridDimX, config->gridDimY, config->gridDimZ, config->blockDimX, config->blockDimY,
                config->blockDimZ, config->sharedMemBytes, config->hStream);
}

SIM_API CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                           unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                                           unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,
                                           void** kernelParams) {
  sim::count_call("cuLaunchCooperativeKernel", false);
  (void)kernelParams;
  return launch(f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes, hStream);
}

namespace {
CUresult occupancy(int* numBlocks, CUfunction func, int blockSize, size_t dynamicSMemSize) {
  if (numBlocks == nullptr || blockSize <= 0) return CUDA_ERROR_INVALID_VALUE;
  if (!ok_func(func)) return CUDA_ERROR_INVALID_HANDLE;
  if (blockSize > sim::facts::kMaxThreadsPerBlock) {
    *numBlocks = 0;
    return CUDA_SUCCESS;
  }
  int by_threads = sim::facts::kMaxThreadsPerSm / blockSize;
  int by_smem = dynamicSMemSize == 0 ? sim::facts::kMaxBlocksPerSm
                                     : static_cast<int>(sim::facts::kSharedPerSm / std::max<size_t>(dynamicSMemSize, 1));
  *numBlocks = std::min({by_threads, by_smem, sim::facts::kMaxBlocksPerSm});
  return CUDA_SUCCESS;
}
}  // namespace

SIM_API CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* numBlocks, CUfunction func, int blockSize,
                                                                      size_t dynamicSMemSize, unsigned int flags) {
  sim::count_call("cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags", false);
  (void)flags;
  return occupancy(numBlocks, func, blockSize, dynamicSMemSize);
}

SIM_API CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* numBlocks, CUfunction func, int blockSize,
                                                             size_t dynamicSMemSize) {
  sim::count_call("cuOccupancyMaxActiveBlocksPerMultiprocessor", false);
  return occupancy(numBlocks, func, blockSize, dynamicSMemSize);
}

SIM_API CUresult cuOccupancyMaxPotentialBlockSize(int* minGridSize, int* blockSize, CUfunction func,
                                                  CUoccupancyB2DSize blockSizeToDynamicSMemSize,
                                                  size_t dynamicSMemSize, int blockSizeLimit) {
  sim::count_call("cuOccupancyMaxPotentialBlockSize", false);
  (void)blockSizeToDynamicSMemSize, (void)dynamicSMemSize;
  if (minGridSize == nullptr || blockSize == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (!ok_func(func)) return CUDA_ERROR_INVALID_HANDLE;
  int b = sim::facts::kMaxThreadsPerBlock;
  if (blockSizeLimit > 0) b = std::min(b, blockSizeLimit);
  *blockSize = b;
  *minGridSize = sim::facts::kSmCount * std::max(1, sim::facts::kMaxThreadsPerSm / b);
  return CUDA_SUCCESS;
}

// ---- JIT linking: accepted, yields an empty image that cuModuleLoadData takes ----

SIM_API CUresult cuLinkCreate_v2(unsigned int numOptions, CUjit_option* options, void** optionValues,
                                 CUlinkState* stateOut) {
  sim::count_call("cuLinkCreate_v2", false);
  (void)numOptions, (void)options, (void)optionValues;
  if (stateOut == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *stateOut = reinterpret_cast<CUlinkState>(new SimLink());
  return CUDA_SUCCESS;
}
PYPOOLSIM_ALIAS(cuLinkCreate, cuLinkCreate_v2)

SIM_API CUresult cuLinkAddData_v2(CUlinkState state, CUjitInputType type, void* data, size_t size, const char* name,
                                  unsigned int numOptions, CUjit_option* options, void** optionValues) {
  sim::count_call("cuLinkAddData_v2", false);
  (void)type, (void)name, (void)numOptions, (void)options, (void)optionValues;
  if (state == nullptr || data == nullptr || size == 0) return CUDA_ERROR_INVALID_VALUE;
  return CUDA_SUCCESS;
}
PYPOOLSIM_ALIAS(cuLinkAddData, cuLinkAddData_v2)

SIM_API CUresult cuLinkAddFile_v2(CUlinkState state, CUjitInputType type, const char* path, unsigned int numOptions,
                                  CUjit_option* options, void** optionValues) {
  sim::count_call("cuLinkAddFile_v2", false);
  (void)type, (void)numOptions, (void)options, (void)optionValues;
  if (state == nullptr || path == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return CUDA_SUCCESS;
}
PYPOOLSIM_ALIAS(cuLinkAddFile, cuLinkAddFile_v2)

SIM_API CUresult cuLinkComplete(CUlinkState state, void** cubinOut, size_t* sizeOut) {
  sim::count_call("cuLinkComplete", false);
  if (state == nullptr || cubinOut == nullptr || sizeOut == nullptr) return CUDA_ERROR_INVALID_VALUE;
  auto* l = reinterpret_cast<SimLink*>(state);
  *cubinOut = l->image;
  *sizeOut = sizeof l->image;
  return CUDA_SUCCESS;
}

SIM_API CUresult cuLinkDestroy(CUlinkState state) {
  sim::count_call("cuLinkDestroy", false);
  if (state == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  delete reinterpret_cast<SimLink*>(state);
  return CUDA_SUCCESS;
}

// A tensor map is an opaque 128-byte descriptor that only a kernel reads.
SIM_API CUresult cuTensorMapEncodeTiled(CUtensorMap* tensorMap, CUtensorMapDataType tensorDataType,
                                        cuuint32_t tensorRank, void* globalAddress, const cuuint64_t* globalDim,
                                        const cuuint64_t* globalStrides, const cuuint32_t* boxDim,
                                        const cuuint32_t* elementStrides, CUtensorMapInterleave interleave,
                                        CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2Promotion,
                                        CUtensorMapFloatOOBfill oobFill) {
  sim::count_call("cuTensorMapEncodeTiled", false);
  (void)tensorDataType, (void)globalStrides, (void)interleave, (void)swizzle, (void)l2Promotion, (void)oobFill;
  if (tensorMap == nullptr || tensorRank == 0 || tensorRank > 5 || globalAddress == nullptr || globalDim == nullptr ||
      boxDim == nullptr || elementStrides == nullptr)
    return CUDA_ERROR_INVALID_VALUE;
  if ((reinterpret_cast<std::uintptr_t>(globalAddress) & 15) != 0) return CUDA_ERROR_INVALID_VALUE;
  std::memset(tensorMap, 0, sizeof *tensorMap);
  return CUDA_SUCCESS;
}

// ---- driver logs (CUDA 12.9): torch registers a callback around driver calls; the
// simulation has no driver log to deliver, so the callback is never called ----

SIM_API CUresult cuLogsRegisterCallback(CUlogsCallback callbackFunc, void* userData,
                                        CUlogsCallbackHandle* callback_out) {
  sim::count_call("cuLogsRegisterCallback", false);
  (void)userData;
  if (callbackFunc == nullptr || callback_out == nullptr) return CUDA_ERROR_INVALID_VALUE;
  static std::atomic<std::uintptr_t> next{1};
  *callback_out = reinterpret_cast<CUlogsCallbackHandle>(next.fetch_add(1));
  return CUDA_SUCCESS;
}

SIM_API CUresult cuLogsUnregisterCallback(CUlogsCallbackHandle callback) {
  sim::count_call("cuLogsUnregisterCallback", false);
  return callback != nullptr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

// ---- per-thread default stream variants (_ptsz/_ptds): the simulation maps the
// per-thread stream to the device's default stream, so they are the same functions ----

PYPOOLSIM_ALIAS(cuStreamQuery_ptsz, cuStreamQuery)
PYPOOLSIM_ALIAS(cuStreamSynchronize_ptsz, cuStreamSynchronize)
PYPOOLSIM_ALIAS(cuStreamWaitEvent_ptsz, cuStreamWaitEvent)
PYPOOLSIM_ALIAS(cuStreamGetPriority_ptsz, cuStreamGetPriority)
PYPOOLSIM_ALIAS(cuStreamGetFlags_ptsz, cuStreamGetFlags)
PYPOOLSIM_ALIAS(cuStreamGetDevice_ptsz, cuStreamGetDevice)
PYPOOLSIM_ALIAS(cuStreamGetCtx_ptsz, cuStreamGetCtx)
PYPOOLSIM_ALIAS(cuStreamGetCtx_v2_ptsz, cuStreamGetCtx_v2)
PYPOOLSIM_ALIAS(cuStreamGetId_ptsz, cuStreamGetId)
PYPOOLSIM_ALIAS(cuStreamIsCapturing_ptsz, cuStreamIsCapturing)
PYPOOLSIM_ALIAS(cuStreamGetCaptureInfo_v3_ptsz, cuStreamGetCaptureInfo_v3)
PYPOOLSIM_ALIAS(cuStreamGetCaptureInfo_v2_ptsz, cuStreamGetCaptureInfo_v2)
PYPOOLSIM_ALIAS(cuStreamWriteValue32_v2_ptsz, cuStreamWriteValue32_v2)
PYPOOLSIM_ALIAS(cuStreamWriteValue32_ptsz, cuStreamWriteValue32_v2)
PYPOOLSIM_ALIAS(cuStreamWaitValue32_v2_ptsz, cuStreamWaitValue32_v2)
PYPOOLSIM_ALIAS(cuStreamWaitValue32_ptsz, cuStreamWaitValue32_v2)
PYPOOLSIM_ALIAS(cuEventRecord_ptsz, cuEventRecord)
PYPOOLSIM_ALIAS(cuEventRecordWithFlags_ptsz, cuEventRecordWithFlags)
PYPOOLSIM_ALIAS(cuLaunchKernel_ptsz, cuLaunchKernel)
PYPOOLSIM_ALIAS(cuLaunchKernelEx_ptsz, cuLaunchKernelEx)
PYPOOLSIM_ALIAS(cuLaunchCooperativeKernel_ptsz, cuLaunchCooperativeKernel)
PYPOOLSIM_ALIAS(cuMemAllocAsync_ptsz, cuMemAllocAsync)
PYPOOLSIM_ALIAS(cuMemFreeAsync_ptsz, cuMemFreeAsync)
PYPOOLSIM_ALIAS(cuMemcpy_ptds, cuMemcpy)
PYPOOLSIM_ALIAS(cuMemcpyAsync_ptsz, cuMemcpyAsync)
PYPOOLSIM_ALIAS(cuMemcpyHtoD_v2_ptds, cuMemcpyHtoD_v2)
PYPOOLSIM_ALIAS(cuMemcpyDtoH_v2_ptds, cuMemcpyDtoH_v2)
PYPOOLSIM_ALIAS(cuMemcpyDtoD_v2_ptds, cuMemcpyDtoD_v2)
PYPOOLSIM_ALIAS(cuMemcpyHtoDAsync_v2_ptsz, cuMemcpyHtoDAsync_v2)
PYPOOLSIM_ALIAS(cuMemcpyDtoHAsync_v2_ptsz, cuMemcpyDtoHAsync_v2)
PYPOOLSIM_ALIAS(cuMemcpyDtoDAsync_v2_ptsz, cuMemcpyDtoDAsync_v2)
PYPOOLSIM_ALIAS(cuMemsetD8_v2_ptds, cuMemsetD8_v2)
PYPOOLSIM_ALIAS(cuMemsetD32_v2_ptds, cuMemsetD32_v2)
PYPOOLSIM_ALIAS(cuMemsetD8Async_ptsz, cuMemsetD8Async)
PYPOOLSIM_ALIAS(cuMemsetD32Async_ptsz, cuMemsetD32Async)
