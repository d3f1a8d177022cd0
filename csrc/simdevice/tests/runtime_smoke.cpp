// Smoke test of the CUDA runtime stand-in (runtime.cpp) through its C ABI, linked the
// way torch uses it: against libcudart.so.13 (the stand-in) and libcuda.so.1 (the
// simulated state and the pypoolsim_* control API). Checks what an allocator observes:
// capacity and free memory, error codes and last-error semantics, which calls
// synchronize, and stream/event completion with held streams; plus the <<<>>> launch
// sequence nvcc generates and the registration calls torch's static initializers make.
//
// Exit status 0 = every check passed; failures are printed with their line.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "../sim_state.h"

#include "../nvcc_internal.h"

namespace {

int g_failures = 0;
int g_checks = 0;

#define CHECK(cond)                                                          \
  do {                                                                       \
    ++g_checks;                                                              \
    if (!(cond)) {                                                           \
      ++g_failures;                                                          \
      std::fprintf(stderr, "runtime_smoke.cpp:%d: CHECK(%s) failed\n", __LINE__, #cond); \
    }                                                                        \
  } while (0)

#define CHECK_RC(call, want)                                                 \
  do {                                                                       \
    ++g_checks;                                                              \
    const cudaError_t rc_ = (call);                                          \
    if (rc_ != (want)) {                                                     \
      ++g_failures;                                                          \
      std::fprintf(stderr, "runtime_smoke.cpp:%d: %s = %d (%s), want %d\n", __LINE__, #call, \
                   static_cast<int>(rc_), cudaGetErrorName(rc_), static_cast<int>(want)); \
    }                                                                        \
  } while (0)

constexpr unsigned long long kMiB = 1ull << 20;
constexpr unsigned long long kCapacity = 1024 * kMiB;

unsigned long long handle(cudaStream_t s) {
  return static_cast<unsigned long long>(reinterpret_cast<std::uintptr_t>(s));
}

// What nvcc generates for `kernel<<<grid, block, shmem, stream>>>(args)`: push the
// configuration, then the host stub pops it and launches.
void fake_kernel() {}
cudaError_t triple_chevron(dim3 grid, dim3 block, size_t shmem, cudaStream_t stream) {
  if (__cudaPushCallConfiguration(grid, block, shmem, stream) != 0) return cudaErrorUnknown;
  static cudaKernel_t handle = nullptr;
  if (handle == nullptr && __cudaGetKernel(&handle, reinterpret_cast<const void*>(&fake_kernel)) != cudaSuccess) {
    return cudaErrorUnknown;
  }
  dim3 g, b;
  size_t sm = 0;
  cudaStream_t st = nullptr;
  if (__cudaPopCallConfiguration(&g, &b, &sm, &st) != cudaSuccess) return cudaErrorUnknown;
  if (g.x != grid.x || g.y != grid.y || g.z != grid.z || b.x != block.x || b.y != block.y ||
      b.z != block.z || sm != shmem || st != stream) {
    return cudaErrorUnknown;  // the pop must return exactly what was pushed
  }
  void* args[1] = {nullptr};
  return __cudaLaunchKernel(handle, g, b, args, sm, st);
}

void test_devices() {
  int n = 0;
  CHECK_RC(cudaGetDeviceCount(&n), cudaSuccess);
  CHECK(n == 2);
  cudaDeviceProp prop;
  CHECK_RC(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  CHECK(std::strcmp(prop.name, "pypool simulated device") == 0);
  CHECK(prop.totalGlobalMem == kCapacity);
  CHECK(prop.major == 9 && prop.minor == 0);
  CHECK(prop.multiProcessorCount == 132 && prop.warpSize == 32);
  CHECK(prop.pciBusID == 1 && prop.unifiedAddressing == 1);
  cudaDeviceProp prop1;
  CHECK_RC(cudaGetDeviceProperties(&prop1, 1), cudaSuccess);
  CHECK(std::memcmp(prop.uuid.bytes, prop1.uuid.bytes, 16) != 0);
  CHECK(prop1.pciBusID == 2);
  CHECK_RC(cudaGetDeviceProperties(&prop, 2), cudaErrorInvalidDevice);
  CHECK_RC(cudaGetLastError(), cudaErrorInvalidDevice);

  int v = -1;
  CHECK_RC(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  CHECK(v == prop.multiProcessorCount);
  CHECK_RC(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0), cudaSuccess);
  CHECK(static_cast<size_t>(v) == prop.sharedMemPerBlockOptin);
  CHECK_RC(cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, 1), cudaSuccess);
  CHECK(v == 9);
  CHECK_RC(cudaDeviceGetAttribute(&v, static_cast<cudaDeviceAttr>(100000), 0), cudaSuccess);
  CHECK(v == 0);  // unknown attributes read 0

  char bus[32];
  CHECK_RC(cudaDeviceGetPCIBusId(bus, sizeof bus, 1), cudaSuccess);
  CHECK(std::strcmp(bus, "0000:02:00.0") == 0);

  int ver = 0;
  CHECK_RC(cudaRuntimeGetVersion(&ver), cudaSuccess);
  CHECK(ver == 13000);
  CHECK_RC(cudaDriverGetVersion(&ver), cudaSuccess);
  CHECK(ver == 13000);

  int least = 1, greatest = 1;
  CHECK_RC(cudaDeviceGetStreamPriorityRange(&least, &greatest), cudaSuccess);
  CHECK(least == 0 && greatest == -5);

  // The current device is per thread.
  int dev = -1;
  CHECK_RC(cudaGetDevice(&dev), cudaSuccess);
  CHECK(dev == 0);
  CHECK_RC(cudaSetDevice(1), cudaSuccess);
  int other = -1;
  std::thread([&] { cudaGetDevice(&other); }).join();
  CHECK(other == 0);
  CHECK_RC(cudaGetDevice(&dev), cudaSuccess);
  CHECK(dev == 1);
  CHECK_RC(cudaSetDevice(7), cudaErrorInvalidDevice);
  CHECK_RC(cudaSetDevice(0), cudaSuccess);

  int can = -1;
  CHECK_RC(cudaDeviceCanAccessPeer(&can, 0, 1), cudaSuccess);
  CHECK(can == 1);
  CHECK_RC(cudaDeviceCanAccessPeer(&can, 0, 0), cudaSuccess);
  CHECK(can == 0);
  CHECK_RC(cudaDeviceEnablePeerAccess(1, 0), cudaSuccess);
  CHECK_RC(cudaDeviceEnablePeerAccess(1, 0), cudaErrorPeerAccessAlreadyEnabled);
  CHECK_RC(cudaGetLastError(), cudaErrorPeerAccessAlreadyEnabled);
  CHECK_RC(cudaDeviceEnablePeerAccess(0, 0), cudaErrorInvalidDevice);
  CHECK_RC(cudaGetLastError(), cudaErrorInvalidDevice);
}

void test_errors() {
  CHECK(std::strcmp(cudaGetErrorName(cudaErrorMemoryAllocation), "cudaErrorMemoryAllocation") == 0);
  CHECK(std::strcmp(cudaGetErrorString(cudaErrorMemoryAllocation), "out of memory") == 0);
  CHECK(std::strcmp(cudaGetErrorString(cudaSuccess), "no error") == 0);
  CHECK(std::strcmp(cudaGetErrorString(cudaErrorNotReady), "device not ready") == 0);
  CHECK(std::strcmp(cudaGetErrorString(static_cast<cudaError_t>(4242)), "unrecognized error code") == 0);

  // Last error: a failed call sets it; peek keeps it; get returns and clears it.
  CHECK_RC(cudaGetLastError(), cudaSuccess);
  CHECK_RC(cudaMalloc(nullptr, 16), cudaErrorInvalidValue);
  CHECK_RC(cudaPeekAtLastError(), cudaErrorInvalidValue);
  CHECK_RC(cudaPeekAtLastError(), cudaErrorInvalidValue);
  CHECK_RC(cudaGetLastError(), cudaErrorInvalidValue);
  CHECK_RC(cudaGetLastError(), cudaSuccess);
  // A later success does not clear it.
  CHECK_RC(cudaMalloc(nullptr, 16), cudaErrorInvalidValue);
  int n = 0;
  CHECK_RC(cudaGetDeviceCount(&n), cudaSuccess);
  CHECK_RC(cudaGetLastError(), cudaErrorInvalidValue);
  // Per thread.
  CHECK_RC(cudaMalloc(nullptr, 16), cudaErrorInvalidValue);
  cudaError_t in_thread = cudaErrorUnknown;
  std::thread([&] { in_thread = cudaPeekAtLastError(); }).join();
  CHECK(in_thread == cudaSuccess);
  CHECK_RC(cudaGetLastError(), cudaErrorInvalidValue);
}

void test_memory() {
  size_t free0 = 0, total = 0;
  CHECK_RC(cudaMemGetInfo(&free0, &total), cudaSuccess);
  CHECK(total == kCapacity);
  CHECK(free0 == total - pypoolsim_device_used(0));

  void* p = nullptr;
  CHECK_RC(cudaMalloc(&p, 100 * kMiB), cudaSuccess);
  CHECK(p != nullptr);
  CHECK(reinterpret_cast<std::uintptr_t>(p) % 256 == 0);
  size_t free1 = 0;
  CHECK_RC(cudaMemGetInfo(&free1, &total), cudaSuccess);
  CHECK(free0 - free1 == 100 * kMiB);

  // Past the capacity: the real out-of-memory code, and the memory is unchanged.
  void* big = reinterpret_cast<void*>(1);
  CHECK_RC(cudaMalloc(&big, 2 * kCapacity), cudaErrorMemoryAllocation);
  CHECK(big == nullptr);
  CHECK_RC(cudaGetLastError(), cudaErrorMemoryAllocation);
  size_t free2 = 0;
  CHECK_RC(cudaMemGetInfo(&free2, &total), cudaSuccess);
  CHECK(free2 == free1);

  // Fault injection reaches cudaMalloc.
  pypoolsim_fail_next_allocs(1);
  void* q = nullptr;
  CHECK_RC(cudaMalloc(&q, kMiB), cudaErrorMemoryAllocation);
  CHECK_RC(cudaMalloc(&q, kMiB), cudaSuccess);
  CHECK_RC(cudaFree(q), cudaSuccess);
  cudaGetLastError();

  // Size 0: success and a null pointer.
  void* z = reinterpret_cast<void*>(1);
  CHECK_RC(cudaMalloc(&z, 0), cudaSuccess);
  CHECK(z == nullptr);

  // Copies and memsets really move bytes (device memory is host memory).
  char host[64];
  for (int i = 0; i < 64; ++i) host[i] = static_cast<char>(i);
  CHECK_RC(cudaMemcpy(p, host, 64, cudaMemcpyHostToDevice), cudaSuccess);
  char back[64] = {};
  CHECK_RC(cudaMemcpy(back, p, 64, cudaMemcpyDeviceToHost), cudaSuccess);
  CHECK(std::memcmp(host, back, 64) == 0);
  CHECK_RC(cudaMemset(p, 0x5a, 32), cudaSuccess);
  CHECK_RC(cudaMemcpy(back, p, 64, cudaMemcpyDeviceToHost), cudaSuccess);
  CHECK(back[0] == 0x5a && back[31] == 0x5a && back[32] == 32);
  // A device range past its allocation, a "device" pointer that is not, a bad direction.
  CHECK_RC(cudaMemcpy(static_cast<char*>(p) + 100 * kMiB - 8, host, 64, cudaMemcpyHostToDevice),
           cudaErrorInvalidValue);
  CHECK_RC(cudaMemcpy(back, host, 64, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  CHECK_RC(cudaMemcpy(back, host, 64, static_cast<cudaMemcpyKind>(9)),
           cudaErrorInvalidMemcpyDirection);
  CHECK_RC(cudaMemcpy(back, host, 64, cudaMemcpyHostToHost), cudaSuccess);
  cudaGetLastError();

  // 2D copy: rows of `width` bytes at different pitches.
  char src2d[4 * 16], dst2d[4 * 8] = {};
  for (int i = 0; i < 64; ++i) src2d[i] = static_cast<char>(i);
  CHECK_RC(cudaMemcpy2DAsync(p, 8, src2d, 16, 8, 4, cudaMemcpyHostToDevice, nullptr), cudaSuccess);
  CHECK_RC(cudaMemcpy(dst2d, p, 32, cudaMemcpyDeviceToHost), cudaSuccess);
  CHECK(dst2d[0] == 0 && dst2d[8] == 16 && dst2d[31] == 55);
  CHECK_RC(cudaMemcpy2DAsync(p, 4, src2d, 16, 8, 4, cudaMemcpyHostToDevice, nullptr),
           cudaErrorInvalidPitchValue);
  cudaGetLastError();

  // cudaFree synchronizes; an unknown pointer is invalid; nullptr is a no-op.
  const unsigned long long syncs = pypoolsim_sync_calls();
  CHECK_RC(cudaFree(p), cudaSuccess);
  CHECK(pypoolsim_sync_calls() == syncs + 1);
  CHECK_RC(cudaFree(p), cudaErrorInvalidValue);
  CHECK_RC(cudaGetLastError(), cudaErrorInvalidValue);
  CHECK_RC(cudaFree(nullptr), cudaSuccess);
  const unsigned long long syncs2 = pypoolsim_sync_calls();
  CHECK(syncs2 == syncs + 2);  // the failed cudaFree counted; cudaFree(nullptr) did not
  CHECK_RC(cudaMemGetInfo(&free2, &total), cudaSuccess);
  CHECK(free2 == free0);

  // Memory follows the current device.
  CHECK_RC(cudaSetDevice(1), cudaSuccess);
  const unsigned long long used1 = pypoolsim_device_used(1);
  CHECK_RC(cudaMalloc(&p, 4 * kMiB), cudaSuccess);
  CHECK(pypoolsim_device_used(1) == used1 + 4 * kMiB);
  cudaPointerAttributes attr;
  CHECK_RC(cudaPointerGetAttributes(&attr, static_cast<char*>(p) + 100), cudaSuccess);
  CHECK(attr.type == cudaMemoryTypeDevice && attr.device == 1);
  CHECK(attr.devicePointer == static_cast<char*>(p) + 100 && attr.hostPointer == nullptr);
  CHECK_RC(cudaSetDevice(0), cudaSuccess);
  CHECK_RC(cudaFree(p), cudaSuccess);  // freeing another device's memory is fine
  CHECK(pypoolsim_device_used(1) == used1);

  // Pinned host memory: not counted against a device; known to pointer attributes.
  void* h = nullptr;
  const unsigned long long used0 = pypoolsim_device_used(0);
  CHECK_RC(cudaHostAlloc(&h, kMiB, cudaHostAllocDefault), cudaSuccess);
  CHECK(pypoolsim_device_used(0) == used0);
  CHECK_RC(cudaPointerGetAttributes(&attr, static_cast<char*>(h) + 10), cudaSuccess);
  CHECK(attr.type == cudaMemoryTypeHost);
  CHECK_RC(cudaFree(h), cudaErrorInvalidValue);  // not device memory
  CHECK_RC(cudaFreeHost(h), cudaSuccess);
  CHECK_RC(cudaFreeHost(h), cudaErrorInvalidValue);
  cudaGetLastError();
  int stack_var = 0;
  CHECK_RC(cudaPointerGetAttributes(&attr, &stack_var), cudaSuccess);
  CHECK(attr.type == cudaMemoryTypeUnregistered);
  CHECK_RC(cudaHostRegister(&stack_var, sizeof stack_var, cudaHostRegisterDefault), cudaSuccess);
  CHECK_RC(cudaHostRegister(&stack_var, sizeof stack_var, cudaHostRegisterDefault),
           cudaErrorHostMemoryAlreadyRegistered);
  CHECK_RC(cudaPointerGetAttributes(&attr, &stack_var), cudaSuccess);
  CHECK(attr.type == cudaMemoryTypeHost);
  CHECK_RC(cudaHostUnregister(&stack_var), cudaSuccess);
  CHECK_RC(cudaHostUnregister(&stack_var), cudaErrorHostMemoryNotRegistered);
  cudaGetLastError();

  // Managed memory counts against the device and reports its own type.
  void* m = nullptr;
  CHECK_RC(cudaMallocManaged(&m, kMiB, cudaMemAttachGlobal), cudaSuccess);
  CHECK(pypoolsim_device_used(0) > used0);
  CHECK_RC(cudaPointerGetAttributes(&attr, m), cudaSuccess);
  CHECK(attr.type == cudaMemoryTypeManaged && attr.hostPointer == m);
  CHECK_RC(cudaFree(m), cudaSuccess);
  CHECK(pypoolsim_device_used(0) == used0);
}

void test_streams_and_events() {
  cudaStream_t s = nullptr, s2 = nullptr;
  CHECK_RC(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  CHECK_RC(cudaStreamCreateWithPriority(&s2, cudaStreamNonBlocking, -100), cudaSuccess);
  int prio = 1;
  CHECK_RC(cudaStreamGetPriority(s2, &prio), cudaSuccess);
  CHECK(prio == -5);  // clamped to the greatest priority
  unsigned flags = 7;
  CHECK_RC(cudaStreamGetFlags(s, &flags), cudaSuccess);
  CHECK(flags == cudaStreamNonBlocking);
  int dev = -1;
  CHECK_RC(cudaStreamGetDevice(s, &dev), cudaSuccess);
  CHECK(dev == 0);

  cudaEvent_t e = nullptr;
  CHECK_RC(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), cudaSuccess);
  CHECK_RC(cudaEventQuery(e), cudaSuccess);  // never recorded: complete

  // A held stream: a launch stays pending, and so does an event recorded after it.
  CHECK(pypoolsim_hold_stream(handle(s), 1) == 0);
  const unsigned long long launches = pypoolsim_calls("__cudaLaunchKernel");
  CHECK_RC(triple_chevron(dim3(4), dim3(128), 0, s), cudaSuccess);
  CHECK(pypoolsim_calls("__cudaLaunchKernel") == launches + 1);
  CHECK(pypoolsim_pending_work(handle(s)) == 1);
  CHECK_RC(cudaStreamQuery(s), cudaErrorNotReady);
  CHECK_RC(cudaGetLastError(), cudaErrorNotReady);
  CHECK_RC(cudaEventRecord(e, s), cudaSuccess);
  CHECK_RC(cudaEventQuery(e), cudaErrorNotReady);
  cudaGetLastError();

  // s2 waits for e: its next work cannot complete before s's.
  CHECK_RC(cudaStreamWaitEvent(s2, e, 0), cudaSuccess);
  CHECK_RC(cudaMemsetAsync(nullptr, 0, 0, s2), cudaSuccess);  // zero bytes: no work
  CHECK_RC(triple_chevron(dim3(1), dim3(32), 0, s2), cudaSuccess);
  CHECK_RC(cudaStreamQuery(s2), cudaErrorNotReady);
  cudaGetLastError();

  // Releasing the hold completes everything, transitively.
  CHECK(pypoolsim_hold_stream(handle(s), 0) == 0);
  CHECK_RC(cudaStreamQuery(s), cudaSuccess);
  CHECK_RC(cudaEventQuery(e), cudaSuccess);
  CHECK_RC(cudaStreamQuery(s2), cudaSuccess);

  // Synchronizing completes held work, and counts as a sync.
  CHECK(pypoolsim_hold_stream(handle(s), 1) == 0);
  CHECK_RC(cudaLaunchKernel(reinterpret_cast<const void*>(&fake_kernel), dim3(1), dim3(1), nullptr,
                            0, s),
           cudaSuccess);
  CHECK_RC(cudaStreamQuery(s), cudaErrorNotReady);
  cudaGetLastError();
  unsigned long long syncs = pypoolsim_sync_calls();
  CHECK_RC(cudaStreamSynchronize(s), cudaSuccess);
  CHECK(pypoolsim_sync_calls() == syncs + 1);
  CHECK_RC(cudaStreamQuery(s), cudaSuccess);

  // Event synchronize completes the stream up to the event.
  CHECK_RC(triple_chevron(dim3(1), dim3(1), 0, s), cudaSuccess);
  CHECK_RC(cudaEventRecord(e, s), cudaSuccess);
  CHECK_RC(triple_chevron(dim3(1), dim3(1), 0, s), cudaSuccess);
  CHECK_RC(cudaEventSynchronize(e), cudaSuccess);
  CHECK_RC(cudaEventQuery(e), cudaSuccess);
  CHECK(pypoolsim_pending_work(handle(s)) == 1);

  // cudaFree synchronizes the device: pending work completes.
  void* p = nullptr;
  CHECK_RC(cudaMalloc(&p, kMiB), cudaSuccess);
  CHECK_RC(cudaMemsetAsync(p, 1, kMiB, s), cudaSuccess);
  CHECK(pypoolsim_pending_work(handle(s)) == 2);
  CHECK_RC(cudaFree(p), cudaSuccess);
  CHECK(pypoolsim_pending_work(handle(s)) == 0);

  // cudaMallocAsync/cudaFreeAsync: stream-ordered, not synchronizing, and visible in the
  // default pool's counters.
  cudaMemPool_t pool = nullptr;
  CHECK_RC(cudaDeviceGetDefaultMemPool(&pool, 0), cudaSuccess);
  CHECK(pool != nullptr);
  syncs = pypoolsim_sync_calls();
  CHECK_RC(triple_chevron(dim3(1), dim3(1), 0, s), cudaSuccess);
  void* a = nullptr;
  CHECK_RC(cudaMallocAsync(&a, 3 * kMiB, s), cudaSuccess);
  std::uint64_t used = 0;
  CHECK_RC(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used), cudaSuccess);
  CHECK(used == 3 * kMiB);
  std::uint64_t reserved = 0;
  CHECK_RC(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved), cudaSuccess);
  CHECK(reserved == 4 * kMiB);  // whole 2 MiB granules, as the device charged
  CHECK_RC(cudaFreeAsync(a, s), cudaSuccess);
  CHECK_RC(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used), cudaSuccess);
  CHECK(used == 0);
  CHECK_RC(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &used), cudaSuccess);
  CHECK(used == 3 * kMiB);
  CHECK(pypoolsim_sync_calls() == syncs);
  CHECK(pypoolsim_pending_work(handle(s)) == 1);
  CHECK(pypoolsim_hold_stream(handle(s), 0) == 0);

  // Timing events.
  cudaEvent_t t0 = nullptr, t1 = nullptr;
  CHECK_RC(cudaEventCreate(&t0), cudaSuccess);
  CHECK_RC(cudaEventCreate(&t1), cudaSuccess);
  CHECK_RC(cudaEventRecord(t0, s), cudaSuccess);
  CHECK_RC(cudaEventRecord(t1, s), cudaSuccess);
  float ms = -1;
  CHECK_RC(cudaEventElapsedTime(&ms, t0, t1), cudaSuccess);
  CHECK(ms >= 0);

  // The default-stream aliases all work.
  CHECK_RC(cudaStreamSynchronize(nullptr), cudaSuccess);
  CHECK_RC(cudaStreamSynchronize(cudaStreamLegacy), cudaSuccess);
  CHECK_RC(cudaStreamSynchronize(cudaStreamPerThread), cudaSuccess);
  CHECK_RC(cudaDeviceSynchronize(), cudaSuccess);

  // Capture is never active; graphs are not simulated.
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusActive;
  CHECK_RC(cudaStreamIsCapturing(s, &cs), cudaSuccess);
  CHECK(cs == cudaStreamCaptureStatusNone);
  cs = cudaStreamCaptureStatusActive;
  unsigned long long id = 99;
  CHECK_RC(cudaStreamGetCaptureInfo(s, &cs, &id, nullptr, nullptr, nullptr, nullptr), cudaSuccess);
  CHECK(cs == cudaStreamCaptureStatusNone);
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  CHECK_RC(cudaThreadExchangeStreamCaptureMode(&mode), cudaSuccess);
  CHECK(mode == cudaStreamCaptureModeGlobal);
  CHECK_RC(cudaThreadExchangeStreamCaptureMode(&mode), cudaSuccess);
  CHECK(mode == cudaStreamCaptureModeRelaxed);
  CHECK_RC(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaErrorNotSupported);
  cudaGetLastError();

  // Host functions run.
  int ran = 0;
  CHECK_RC(cudaLaunchHostFunc(s, [](void* p) { ++*static_cast<int*>(p); }, &ran), cudaSuccess);
  CHECK(ran == 1);

  CHECK_RC(cudaEventDestroy(t0), cudaSuccess);
  CHECK_RC(cudaEventDestroy(t1), cudaSuccess);
  CHECK_RC(cudaEventDestroy(e), cudaSuccess);
  CHECK_RC(cudaStreamDestroy(s2), cudaSuccess);
  CHECK_RC(cudaStreamDestroy(s), cudaSuccess);
  CHECK_RC(cudaStreamQuery(s), cudaErrorInvalidResourceHandle);
  cudaGetLastError();
}

void test_launch_configuration() {
  // The hardware's limits on a launch.
  CHECK_RC(triple_chevron(dim3(1), dim3(2048), 0, nullptr), cudaErrorInvalidConfiguration);
  CHECK_RC(triple_chevron(dim3(0), dim3(32), 0, nullptr), cudaErrorInvalidConfiguration);
  CHECK_RC(triple_chevron(dim3(1, 70000), dim3(32), 0, nullptr), cudaErrorInvalidConfiguration);
  CHECK_RC(cudaGetLastError(), cudaErrorInvalidConfiguration);
  // Nested pushes pop in LIFO order.
  CHECK(__cudaPushCallConfiguration(dim3(1), dim3(1), 0, nullptr) == 0);
  CHECK(__cudaPushCallConfiguration(dim3(2), dim3(2), 16, nullptr) == 0);
  dim3 g, b;
  size_t sm = 0;
  cudaStream_t st = nullptr;
  CHECK_RC(__cudaPopCallConfiguration(&g, &b, &sm, &st), cudaSuccess);
  CHECK(g.x == 2 && sm == 16);
  CHECK_RC(__cudaPopCallConfiguration(&g, &b, &sm, &st), cudaSuccess);
  CHECK(g.x == 1 && sm == 0);
  CHECK_RC(__cudaPopCallConfiguration(&g, &b, &sm, &st), cudaErrorMissingConfiguration);
  cudaGetLastError();

  cudaFuncAttributes fa;
  CHECK_RC(cudaFuncGetAttributes(&fa, reinterpret_cast<const void*>(&fake_kernel)), cudaSuccess);
  CHECK(fa.maxThreadsPerBlock == 1024 && fa.binaryVersion == 90);
  int blocks = 0;
  CHECK_RC(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
               &blocks, reinterpret_cast<const void*>(&fake_kernel), 256, 0),
           cudaSuccess);
  CHECK(blocks >= 1 && blocks <= 32);
}

// What nvcc's static initializer does for a translation unit with a __device__ variable,
// then the symbol API on it.
int g_device_var_shadow[4];
void test_registration() {
  static int fat_binary_stand_in = 0;
  void** module = __cudaRegisterFatBinary(&fat_binary_stand_in);
  CHECK(module != nullptr);
  __cudaRegisterFunction(module, reinterpret_cast<const char*>(&fake_kernel),
                         const_cast<char*>("fake_kernel"), "fake_kernel", -1, nullptr, nullptr,
                         nullptr, nullptr, nullptr);
  __cudaRegisterVar(module, reinterpret_cast<char*>(g_device_var_shadow),
                    const_cast<char*>("g_device_var"), "g_device_var", 0,
                    sizeof g_device_var_shadow, 0, 0);
  __cudaRegisterFatBinaryEnd(module);

  void* addr = nullptr;
  CHECK_RC(cudaGetSymbolAddress(&addr, g_device_var_shadow), cudaSuccess);
  CHECK(addr != nullptr && addr != static_cast<void*>(g_device_var_shadow));
  CHECK(static_cast<int*>(addr)[3] == 0);  // zeroed
  const int values[4] = {1, 2, 3, 4};
  CHECK_RC(cudaMemcpyToSymbol(g_device_var_shadow, values, sizeof values, 0,
                              cudaMemcpyHostToDevice),
           cudaSuccess);
  CHECK(static_cast<int*>(addr)[3] == 4);
  CHECK_RC(cudaMemcpyToSymbol(g_device_var_shadow, values, sizeof values, 4,
                              cudaMemcpyHostToDevice),
           cudaErrorInvalidValue);
  int unregistered = 0;
  CHECK_RC(cudaGetSymbolAddress(&addr, &unregistered), cudaErrorInvalidSymbol);
  cudaGetLastError();
  __cudaUnregisterFatBinary(module);
  CHECK_RC(cudaGetSymbolAddress(&addr, g_device_var_shadow), cudaErrorInvalidSymbol);
  cudaGetLastError();
}

void test_entry_points() {
  void* fn = reinterpret_cast<void*>(1);
  cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSuccess;
  CHECK_RC(cudaGetDriverEntryPointByVersion("cuNoSuchFunction", &fn, 13000, cudaEnableDefault, &q),
           cudaSuccess);
  CHECK(fn == nullptr && q == cudaDriverEntryPointSymbolNotFound);
  // Known symbols resolve to the driver stand-in's functions.
  CHECK_RC(cudaGetDriverEntryPointByVersion("cuGetErrorString", &fn, 12000, cudaEnableDefault, &q),
           cudaSuccess);
  CHECK(fn != nullptr && q == cudaDriverEntryPointSuccess);
  fn = nullptr;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"  // the older form, still exported
  CHECK_RC(cudaGetDriverEntryPoint("cuMemCreate", &fn, cudaEnableDefault, &q), cudaSuccess);
#pragma GCC diagnostic pop
  CHECK(fn != nullptr && q == cudaDriverEntryPointSuccess);
  CHECK_RC(cudaGetDriverEntryPointByVersion(nullptr, &fn, 13000, 0, &q), cudaErrorInvalidValue);
  cudaGetLastError();
}

// Many threads through the runtime's own bookkeeping at once (pinned-host ranges,
// managed/async allocations, symbols, per-thread state); meant to run under TSan too.
void test_threads() {
  constexpr int kThreads = 8, kIters = 200;
  std::vector<std::thread> threads;
  int bad[kThreads] = {};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &bad] {
      cudaSetDevice(t % 2);
      cudaStream_t s = nullptr;
      if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) ++bad[t];
      cudaEvent_t e = nullptr;
      if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming) != cudaSuccess) ++bad[t];
      for (int i = 0; i < kIters; ++i) {
        void *d = nullptr, *h = nullptr, *a = nullptr, *m = nullptr;
        cudaPointerAttributes attr;
        if (cudaMalloc(&d, 4096) != cudaSuccess) ++bad[t];
        if (cudaHostAlloc(&h, 4096, cudaHostAllocDefault) != cudaSuccess) ++bad[t];
        if (cudaMallocAsync(&a, 4096, s) != cudaSuccess) ++bad[t];
        if (cudaMallocManaged(&m, 4096, cudaMemAttachGlobal) != cudaSuccess) ++bad[t];
        if (cudaMemcpyAsync(d, h, 4096, cudaMemcpyHostToDevice, s) != cudaSuccess) ++bad[t];
        if (cudaMemsetAsync(a, 0, 4096, s) != cudaSuccess) ++bad[t];
        if (cudaEventRecord(e, s) != cudaSuccess) ++bad[t];
        const cudaError_t q = cudaEventQuery(e);
        if (q != cudaSuccess && q != cudaErrorNotReady) ++bad[t];
        if (cudaPointerGetAttributes(&attr, h) != cudaSuccess || attr.type != cudaMemoryTypeHost) ++bad[t];
        if (cudaPointerGetAttributes(&attr, m) != cudaSuccess || attr.type != cudaMemoryTypeManaged) ++bad[t];
        if (cudaPointerGetAttributes(&attr, a) != cudaSuccess || attr.type != cudaMemoryTypeDevice ||
            attr.device != t % 2) {
          ++bad[t];
        }
        if (cudaFreeAsync(a, s) != cudaSuccess) ++bad[t];
        if (cudaFree(m) != cudaSuccess) ++bad[t];
        if (cudaFreeHost(h) != cudaSuccess) ++bad[t];
        if (cudaFree(d) != cudaSuccess) ++bad[t];
      }
      if (cudaStreamSynchronize(s) != cudaSuccess) ++bad[t];
      cudaEventDestroy(e);
      cudaStreamDestroy(s);
      if (cudaGetLastError() != cudaSuccess) ++bad[t];
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) CHECK(bad[t] == 0);
  cudaMemPool_t pool = nullptr;
  std::uint64_t used = 1;
  for (int dev = 0; dev < 2; ++dev) {
    CHECK_RC(cudaDeviceGetDefaultMemPool(&pool, dev), cudaSuccess);
    CHECK_RC(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used), cudaSuccess);
    CHECK(used == 0);
  }
}

}  // namespace

int main() {
  // Two 1 GiB devices; must precede the first allocation.
  if (pypoolsim_configure(2, kCapacity) != 0) {
    std::fprintf(stderr, "pypoolsim_configure failed\n");
    return 2;
  }
  test_devices();
  test_errors();
  test_memory();
  test_streams_and_events();
  test_launch_configuration();
  test_registration();
  test_entry_points();
  test_threads();
  const unsigned long long used0 = pypoolsim_device_used(0), used1 = pypoolsim_device_used(1);
  CHECK(used0 == 0 && used1 == 0);  // everything the test allocated was given back
  std::printf("runtime_smoke: %d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
