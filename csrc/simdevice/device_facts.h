// What the simulated device says about itself, in one place so that the driver
// (cuDeviceGetAttribute, cuDeviceGetPCIBusId, cuDeviceGetUuid), the runtime
// (cudaGetDeviceProperties) and NVML (PCI bus ids, UUIDs) tell the same story: torch
// finds its NVML device by formatting cudaDeviceProp's PCI ids into a bus id string, and
// asserts that NVML knows it.
//
// The figures are an H100 SXM5's (compute capability 9.0, which every CUDA 13 build of
// torch carries kernels for); memory size comes from sim::device_total(), not from here.
// runtime.cpp keeps its own copy of the same values (cudaGetDeviceProperties); the PCI
// location, UUID and name below match it.
#pragma once

#include <cstdio>
#include <cstring>

namespace sim {
namespace facts {

constexpr const char* kName = "pypool simulated device";
constexpr int kCcMajor = 9;
constexpr int kCcMinor = 0;
constexpr int kSmCount = 132;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kMaxThreadsPerSm = 2048;
constexpr int kMaxBlocksPerSm = 32;
constexpr int kWarpSize = 32;
constexpr int kRegsPerBlock = 65536;
constexpr int kRegsPerSm = 65536;
constexpr int kSharedPerBlock = 49152;
constexpr int kSharedPerBlockOptin = 232448;
constexpr int kSharedPerSm = 233472;
constexpr int kReservedSharedPerBlock = 1024;
constexpr int kL2Bytes = 50 << 20;
constexpr int kPersistingL2Max = 30 << 20;
constexpr int kClockKhz = 1980000;
constexpr int kMemClockKhz = 2619000;
constexpr int kMemBusWidth = 5120;
constexpr int kAsyncEngines = 2;
constexpr int kGreatestStreamPriority = -5;  // cuCtxGetStreamPriorityRange
constexpr int kLeastStreamPriority = 0;
constexpr unsigned kPciVendor = 0x10de;
constexpr unsigned kPciDeviceId = 0x2330;           // H100 SXM5
constexpr unsigned kPciSubsystemId = 0x16c110de;
constexpr int kSmPartitionMin = 8;                  // green contexts: SMs per group
constexpr int kSmCoscheduledAlignment = 2;

// PCI location of device `dev`: domain 0, bus dev + 1, device 0, function 0.
inline unsigned pci_domain(int) { return 0; }
inline unsigned pci_bus(int dev) { return static_cast<unsigned>(dev) + 1; }
inline unsigned pci_device(int) { return 0; }

// 16 bytes, stable per device: "pypool-sim" + zeros + the ordinal.
inline void uuid(int dev, unsigned char out[16]) {
  static const unsigned char tag[10] = {'p', 'y', 'p', 'o', 'o', 'l', '-', 's', 'i', 'm'};
  std::memset(out, 0, 16);
  std::memcpy(out, tag, sizeof tag);
  out[15] = static_cast<unsigned char>(dev);
}

// "GPU-7079706f-6f6c-2d73-696d-00000000000N" (NVML and nvidia-smi spelling).
inline void uuid_string(int dev, char* buf, std::size_t len) {
  unsigned char u[16];
  uuid(dev, u);
  std::snprintf(buf, len, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
                u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

}  // namespace facts
}  // namespace sim
