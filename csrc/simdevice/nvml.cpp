// The NVML stand-in (libpypool_simnvml.so, SONAME libnvidia-ml.so.1): the management
// queries torch and its dependencies make, answered from the simulated device's state
// (sim_state.h; Note [Simulated device]).
//
// The toolkit here has no nvml.h, so the few types needed are declared below, with the
// layouts of cuda-bindings' cynvml.pxd (the NVML 13 headers). Names follow NVML's ABI:
// the plain names (nvmlInit, nvmlDeviceGetCount, ...) are the oldest ABI versions that
// libnvidia-ml keeps exporting; nvml.h maps programs to the _v2/_v3 ones. Everything not
// defined here is a weak "not supported" stub (stubs_nvml.c, symbols/nvml.inc). Calls
// count under the current ABI name (nvmlInit_v2), whichever name was called.
//
// What torch does with NVML, and what it gets here:
//  * c10/cuda/PeerToPeerAccess.cpp (get_fabric_access, reached by expandable segments
//    and symmetric memory): nvmlInit_v2 and nvmlDeviceGetHandleByPciBusId_v2 must succeed
//    (it asserts), with the bus id it formats from cudaGetDeviceProperties; then
//    nvmlDeviceGetGpuFabricInfoV reports the fabric state. A GPU without NVLink fabric
//    says NVML_SUCCESS with state NVML_GPU_FABRIC_STATE_NOT_SUPPORTED, which sends
//    torch down its plain POSIX-fd path without the warning an NVML error would print.
//  * NVLinkDetector (symmetric memory) and tensorpipe: per-link NVLink queries answer
//    NVML_ERROR_NOT_SUPPORTED, as on a GPU without NVLink; P2P over PCIe is available.
//  * OOM messages: nvmlDeviceGetComputeRunningProcesses lists no process.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include <strings.h>

#include "device_facts.h"
#include "sim_state.h"

#define NVML_API extern "C" __attribute__((visibility("default")))

namespace {

// ---- the NVML types used here (cynvml.pxd) ----

typedef int nvmlReturn_t;
constexpr nvmlReturn_t NVML_SUCCESS = 0;
constexpr nvmlReturn_t NVML_ERROR_UNINITIALIZED = 1;
constexpr nvmlReturn_t NVML_ERROR_INVALID_ARGUMENT = 2;
constexpr nvmlReturn_t NVML_ERROR_NOT_SUPPORTED = 3;
constexpr nvmlReturn_t NVML_ERROR_NOT_FOUND = 6;
constexpr nvmlReturn_t NVML_ERROR_INSUFFICIENT_SIZE = 7;
constexpr nvmlReturn_t NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25;

struct nvmlDevice_st;
typedef nvmlDevice_st* nvmlDevice_t;

struct nvmlPciInfo_t {  // _v2 and _v3 layout
  char busIdLegacy[16];
  unsigned int domain;
  unsigned int bus;
  unsigned int device;
  unsigned int pciDeviceId;
  unsigned int pciSubSystemId;
  char busId[32];
};

struct nvmlPciInfo_v1_t {  // what the unversioned nvmlDeviceGetPciInfo fills
  char busId[16];
  unsigned int domain;
  unsigned int bus;
  unsigned int device;
  unsigned int pciDeviceId;
  unsigned int pciSubSystemId;
  unsigned int reserved[4];
};

struct nvmlMemory_t {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};

struct nvmlMemory_v2_t {
  unsigned int version;
  unsigned long long total;
  unsigned long long reserved;
  unsigned long long free;
  unsigned long long used;
};

struct nvmlUtilization_t {
  unsigned int gpu;
  unsigned int memory;
};

struct nvmlGpuFabricInfo_t {  // nvmlDeviceGetGpuFabricInfo (unversioned)
  unsigned char clusterUuid[16];
  nvmlReturn_t status;
  unsigned int cliqueId;
  unsigned char state;
};

struct nvmlGpuFabricInfo_v3_t {  // nvmlGpuFabricInfoV_t; v2 is the same without healthSummary
  unsigned int version;
  unsigned char clusterUuid[16];
  nvmlReturn_t status;
  unsigned int cliqueId;
  unsigned char state;
  unsigned int healthMask;
  unsigned char healthSummary;
};

constexpr unsigned char NVML_GPU_FABRIC_STATE_NOT_SUPPORTED = 0;
constexpr int NVML_P2P_STATUS_OK = 0;
constexpr int NVML_P2P_STATUS_NOT_SUPPORTED = 5;
constexpr int NVML_P2P_CAPS_INDEX_NVLINK = 2;

// NVML_STRUCT_VERSION(name, ver): sizeof | ver << 24.
constexpr unsigned struct_version(unsigned size, unsigned ver) { return size | (ver << 24); }
constexpr unsigned kMemoryV2 = struct_version(sizeof(nvmlMemory_v2_t), 2);

constexpr unsigned kUuidBufferSize = 80;  // NVML_DEVICE_UUID_V2_BUFFER_SIZE
constexpr const char* kDriverVersion = "580.00.00";
constexpr const char* kNvmlVersion = "13.580.00";
constexpr int kCudaDriverVersion = 13000;

// ---- state ----

std::mutex g_mu;
int g_init_count = 0;  // nvmlInit minus nvmlShutdown

bool initialized() {
  std::lock_guard<std::mutex> g(g_mu);
  return g_init_count > 0;
}

// Handles: one object per device; the address encodes the ordinal.
struct SimNvmlDevice {
  int index;
};
SimNvmlDevice g_devices[16] = {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}};

nvmlDevice_t handle_of(int dev) { return reinterpret_cast<nvmlDevice_t>(&g_devices[dev]); }

// The ordinal of a handle, or -1.
int index_of(nvmlDevice_t h) {
  auto* p = reinterpret_cast<SimNvmlDevice*>(h);
  if (p < g_devices || p >= g_devices + 16) return -1;
  return p->index < sim::device_count() ? p->index : -1;
}

// Common preamble of the per-device queries.
nvmlReturn_t check(nvmlDevice_t device, int* dev) {
  if (!initialized()) return NVML_ERROR_UNINITIALIZED;
  *dev = index_of(device);
  return *dev < 0 ? NVML_ERROR_INVALID_ARGUMENT : NVML_SUCCESS;
}

nvmlReturn_t copy_string(char* out, unsigned length, const char* s) {
  if (out == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (std::strlen(s) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
  std::memcpy(out, s, std::strlen(s) + 1);
  return NVML_SUCCESS;
}

void pci_info(int dev, nvmlPciInfo_t* pci) {
  namespace f = sim::facts;
  std::memset(pci, 0, sizeof *pci);
  pci->domain = f::pci_domain(dev);
  pci->bus = f::pci_bus(dev);
  pci->device = f::pci_device(dev);
  pci->pciDeviceId = (f::kPciDeviceId << 16) | f::kPciVendor;
  pci->pciSubSystemId = f::kPciSubsystemId;
  // NVML_DEVICE_PCI_BUS_ID_FMT and NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT
  std::snprintf(pci->busId, sizeof pci->busId, "%08X:%02X:%02X.0", pci->domain, pci->bus, pci->device);
  std::snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.0", pci->domain, pci->bus, pci->device);
}

}  // namespace

// =====================================================================================
// Initialization and system queries
// =====================================================================================

NVML_API nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
  sim::count_call("nvmlInitWithFlags", false);
  (void)flags;
  std::lock_guard<std::mutex> g(g_mu);
  ++g_init_count;
  return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlInit_v2(void) {
  sim::count_call("nvmlInit_v2", false);
  std::lock_guard<std::mutex> g(g_mu);
  ++g_init_count;
  return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }

NVML_API nvmlReturn_t nvmlShutdown(void) {
  sim::count_call("nvmlShutdown", false);
  std::lock_guard<std::mutex> g(g_mu);
  if (g_init_count == 0) return NVML_ERROR_UNINITIALIZED;
  --g_init_count;
  return NVML_SUCCESS;
}

NVML_API const char* nvmlErrorString(nvmlReturn_t result) {
  switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 11: return "Interrupt request issue";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request.";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    case 19: return "In use by another client";
    case 20: return "Insufficient Memory";
    case 21: return "No data";
    case 22: return "The requested vgpu operation is not available on target device, becasue ECC is enabled";
    case 23: return "Insufficient resources";
    case 24: return "Frequency not supported";
    case 25: return "Argument version mismatch";
    case 26: return "Deprecated";
    case 27: return "Not Ready";
    case 28: return "GPU not found";
    case 29: return "Invalid state";
    case 30: return "Reset type not supported";
    default: return "Unknown Error";
  }
}

NVML_API nvmlReturn_t nvmlSystemGetDriverVersion(char* version, unsigned int length) {
  sim::count_call("nvmlSystemGetDriverVersion", false);
  if (!initialized()) return NVML_ERROR_UNINITIALIZED;
  return copy_string(version, length, kDriverVersion);
}

NVML_API nvmlReturn_t nvmlSystemGetNVMLVersion(char* version, unsigned int length) {
  sim::count_call("nvmlSystemGetNVMLVersion", false);
  return copy_string(version, length, kNvmlVersion);
}

// Works without nvmlInit, as the real one does (it asks the CUDA driver).
NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int* cudaDriverVersion) {
  sim::count_call("nvmlSystemGetCudaDriverVersion_v2", false);
  if (cudaDriverVersion == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *cudaDriverVersion = kCudaDriverVersion;
  return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion(int* cudaDriverVersion) {
  return nvmlSystemGetCudaDriverVersion_v2(cudaDriverVersion);
}

// =====================================================================================
// Device handles
// =====================================================================================

NVML_API nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int* deviceCount) {
  sim::count_call("nvmlDeviceGetCount_v2", false);
  if (!initialized()) return NVML_ERROR_UNINITIALIZED;
  if (deviceCount == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *deviceCount = static_cast<unsigned>(sim::device_count());
  return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetCount(unsigned int* deviceCount) { return nvmlDeviceGetCount_v2(deviceCount); }

NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t* device) {
  sim::count_call("nvmlDeviceGetHandleByIndex_v2", false);
  if (!initialized()) return NVML_ERROR_UNINITIALIZED;
  if (device == nullptr || index >= static_cast<unsigned>(sim::device_count())) return NVML_ERROR_INVALID_ARGUMENT;
  *device = handle_of(static_cast<int>(index));
  return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t* device) {
  return nvmlDeviceGetHandleByIndex_v2(index, device);
}

// Accepts "domain:bus:device.function" (any width, either case) and "bus:device.function".
NVML_API nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char* pciBusId, nvmlDevice_t* device) {
  sim::count_call("nvmlDeviceGetHandleByPciBusId_v2", false);
  if (!initialized()) return NVML_ERROR_UNINITIALIZED;
  if (pciBusId == nullptr || device == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  unsigned domain = 0, bus = 0, dev = 0, function = 0;
  if (std::sscanf(pciBusId, "%x:%x:%x.%x", &domain, &bus, &dev, &function) != 4) {
    domain = 0;
    if (std::sscanf(pciBusId, "%x:%x.%x", &bus, &dev, &function) != 3) return NVML_ERROR_INVALID_ARGUMENT;
  }
  for (int d = 0; d < sim::device_count(); ++d) {
    if (sim::facts::pci_domain(d) == domain && sim::facts::pci_bus(d) == bus && sim::facts::pci_device(d) == dev &&
        function == 0) {
      *device = handle_of(d);
      return NVML_SUCCESS;
    }
  }
  return NVML_ERROR_NOT_FOUND;
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char* pciBusId, nvmlDevice_t* device) {
  return nvmlDeviceGetHandleByPciBusId_v2(pciBusId, device);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByUUID(const char* uuid, nvmlDevice_t* device) {
  sim::count_call("nvmlDeviceGetHandleByUUID", false);
  if (!initialized()) return NVML_ERROR_UNINITIALIZED;
  if (uuid == nullptr || device == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  for (int d = 0; d < sim::device_count(); ++d) {
    char s[kUuidBufferSize];
    sim::facts::uuid_string(d, s, sizeof s);
    if (strcasecmp(s, uuid) == 0) {
      *device = handle_of(d);
      return NVML_SUCCESS;
    }
  }
  return NVML_ERROR_NOT_FOUND;
}

NVML_API nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int* index) {
  sim::count_call("nvmlDeviceGetIndex", false);
  int dev = 0;
  if (nvmlReturn_t r = check(device, &dev); r != NVML_SUCCESS) return r;
  if (index == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *index = static_cast<unsigned>(dev);
  return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int* minorNumber) {
  sim::count_call("nvmlDeviceGetMinorNumber", false);
  int dev = 0;
  if (nvmlReturn_t r = check(device, &dev); r != NVML_SUCCESS) return r;
  if (minorNumber == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *minorNumber = static_cast<unsigned>(dev);
  return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char* uuid, unsigned int length) {
  sim::count_call("nvmlDeviceGetUUID", false);
  int dev = 0;
  if (nvmlReturn_t r = check(device, &dev); r != NVML_SUCCESS) return r;
  char s[kUuidBufferSize];
  sim::facts::uuid_string(dev, s, sizeof s);
  return copy_string(uuid, length, s);
}

NVML_API nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char* name, unsigned int length) {
  sim::count_call("nvmlDeviceGetName", false);
  int dev = 0;
  if (nvmlReturn_t r = check(device, &dev); r != NVML_SUCCESS) return r;
  return copy_string(name, length, sim::facts::kName);
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t* pci) {
  sim::count_call("nvmlDeviceGetPciInfo_v3", false);
  int dev = 0;
  if (nvmlReturn_t r = check(device, &dev); r != NVML_SUCCESS) return r;
  if (pci == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  pci_info(dev, pci);
  return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t device, nvmlPciInfo_t* pci) {
  return nvmlDeviceGetPciInfo_v3(device, pci);
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t device, nvmlPciInfo_v1_t* pci) {
  nvmlPciInfo_t full;
  nvmlReturn_t r = nvmlDeviceGetPciInfo_v3(device, pci == nullptr ? nullptr : &full);
  if (r != NVML_SUCCESS) return r;
  std::memset(pci, 0, sizeof *pci);
  std::memcpy(pci->busId, full.busIdLegacy, sizeof pci->busId);
  pci->domain = full.domain;
  pci->bus = full.bus;
  pci->device = full.device;
  pci->pciDeviceId = full.pciDeviceId;
  pci->pciSubSystemId = full.pciSubSystemId;
  return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int* major, int* minor) {
  sim::count_call("nvmlDeviceGetCudaComputeCapability", false);
  int dev = 0;
  if (nvmlReturn_t r = check(device, &dev); r != NVML_SUCCESS) return r;
  if (major == nullptr || minor == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *major = sim::facts::kCcMajor;
  *minor = sim::facts::kCcMinor;
  return NVML_SUCCESS;
}

// =====================================================================================
// Memory and processes
// =====================================================================================

// What the simulated device has handed out to this process's allocators, exactly.
NVML_API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t* memory) {
  sim::count_call("nvmlDeviceGetMemoryInfo", false);
  int dev = 0;
  if (nvmlReturn_t r = check(device, &dev); r != NVML_SUCCESS) return r;
  if (memory == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const unsigned long long total = sim::device_total(dev), used = sim::device_used(dev);
  memory->total = total;
  memory->used = used;
  memory->free = used < total ? total - used : 0;
  return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t* memory) {
  sim::count_call("nvmlDeviceGetMemoryInfo_v2", false);
  int dev = 0;
  if (nvmlReturn_t r = check(device, &dev); r != NVML_SUCCESS) return r;
  if (memory == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (memory->version != kMemoryV2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
  const unsigned long long total = sim::device_total(dev), used = sim::device_used(dev);
  memory->total = total;
  memory->reserved = 0;
  memory->used = used;
  memory->free = used < total ? total - used : 0;
  return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t* utilization) {
  sim::count_call("nvmlDeviceGetUtilizationRates", false);
  int dev = 0;
  if (nvmlReturn_t r = check(device, &dev); r != NVML_SUCCESS) return r;
  if (utilization == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  utilization->gpu = 0;  // kernels never run
  utilization->memory = 0;
  return NVML_SUCCESS;
}

// No process list: the struct layouts of the three ABI versions differ, and an empty
// list is valid for all of them.
namespace {
nvmlReturn_t no_processes(nvmlDevice_t device, unsigned int* infoCount) {
  int dev = 0;
  if (nvmlReturn_t r = check(device, &dev); r != NVML_SUCCESS) return r;
  if (infoCount == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *infoCount = 0;
  return NVML_SUCCESS;
}
}  // namespace

NVML_API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device, unsigned int* infoCount, void* infos) {
  sim::count_call("nvmlDeviceGetComputeRunningProcesses", false);
  (void)infos;
  return no_processes(device, infoCount);
}

NVML_API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int* infoCount,
                                                              void* infos) {
  return nvmlDeviceGetComputeRunningProcesses(device, infoCount, infos);
}

NVML_API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int* infoCount,
                                                              void* infos) {
  return nvmlDeviceGetComputeRunningProcesses(device, infoCount, infos);
}

// =====================================================================================
// Interconnect: PCIe peer access, no NVLink, no fabric
// =====================================================================================

NVML_API nvmlReturn_t nvmlDeviceGetP2PStatus(nvmlDevice_t device1, nvmlDevice_t device2, int p2pIndex,
                                             int* p2pStatus) {
  sim::count_call("nvmlDeviceGetP2PStatus", false);
  int d1 = 0, d2 = 0;
  if (nvmlReturn_t r = check(device1, &d1); r != NVML_SUCCESS) return r;
  if (nvmlReturn_t r = check(device2, &d2); r != NVML_SUCCESS) return r;
  if (p2pStatus == nullptr || p2pIndex < 0 || p2pIndex > 4) return NVML_ERROR_INVALID_ARGUMENT;
  *p2pStatus = p2pIndex == NVML_P2P_CAPS_INDEX_NVLINK ? NVML_P2P_STATUS_NOT_SUPPORTED : NVML_P2P_STATUS_OK;
  return NVML_SUCCESS;
}

namespace {
nvmlReturn_t no_nvlink(nvmlDevice_t device, void* out) {
  int dev = 0;
  if (nvmlReturn_t r = check(device, &dev); r != NVML_SUCCESS) return r;
  if (out == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  return NVML_ERROR_NOT_SUPPORTED;
}
}  // namespace

NVML_API nvmlReturn_t nvmlDeviceGetNvLinkRemoteDeviceType(nvmlDevice_t device, unsigned int link, int* type) {
  sim::count_call("nvmlDeviceGetNvLinkRemoteDeviceType", false);
  (void)link;
  return no_nvlink(device, type);
}

NVML_API nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t device, unsigned int link, nvmlPciInfo_t* pci) {
  sim::count_call("nvmlDeviceGetNvLinkRemotePciInfo_v2", false);
  (void)link;
  return no_nvlink(device, pci);
}

NVML_API nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo(nvmlDevice_t device, unsigned int link, nvmlPciInfo_v1_t* pci) {
  sim::count_call("nvmlDeviceGetNvLinkRemotePciInfo", false);
  (void)link;
  return no_nvlink(device, pci);
}

NVML_API nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link, int* isActive) {
  sim::count_call("nvmlDeviceGetNvLinkState", false);
  (void)link;
  return no_nvlink(device, isActive);
}

NVML_API nvmlReturn_t nvmlDeviceGetNvLinkVersion(nvmlDevice_t device, unsigned int link, unsigned int* version) {
  sim::count_call("nvmlDeviceGetNvLinkVersion", false);
  (void)link;
  return no_nvlink(device, version);
}

NVML_API nvmlReturn_t nvmlDeviceGetNvLinkCapability(nvmlDevice_t device, unsigned int link, int capability,
                                                    unsigned int* capResult) {
  sim::count_call("nvmlDeviceGetNvLinkCapability", false);
  (void)link, (void)capability;
  return no_nvlink(device, capResult);
}

NVML_API nvmlReturn_t nvmlDeviceGetGpuFabricInfo(nvmlDevice_t device, nvmlGpuFabricInfo_t* gpuFabricInfo) {
  sim::count_call("nvmlDeviceGetGpuFabricInfo", false);
  int dev = 0;
  if (nvmlReturn_t r = check(device, &dev); r != NVML_SUCCESS) return r;
  if (gpuFabricInfo == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  std::memset(gpuFabricInfo, 0, sizeof *gpuFabricInfo);
  gpuFabricInfo->status = NVML_SUCCESS;
  gpuFabricInfo->state = NVML_GPU_FABRIC_STATE_NOT_SUPPORTED;
  return NVML_SUCCESS;
}

// Fills only as much of the struct as the caller's version has (v2: no healthSummary).
NVML_API nvmlReturn_t nvmlDeviceGetGpuFabricInfoV(nvmlDevice_t device, nvmlGpuFabricInfo_v3_t* info) {
  sim::count_call("nvmlDeviceGetGpuFabricInfoV", false);
  int dev = 0;
  if (nvmlReturn_t r = check(device, &dev); r != NVML_SUCCESS) return r;
  if (info == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const unsigned ver = info->version >> 24;
  if (ver != 2 && ver != 3) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
  std::memset(info->clusterUuid, 0, sizeof info->clusterUuid);
  info->status = NVML_SUCCESS;
  info->cliqueId = 0;
  info->state = NVML_GPU_FABRIC_STATE_NOT_SUPPORTED;
  info->healthMask = 0;
  if (ver == 3) info->healthSummary = 0;
  return NVML_SUCCESS;
}
