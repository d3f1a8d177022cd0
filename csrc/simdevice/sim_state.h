// The simulated CUDA device's state: devices, device memory, virtual memory, streams,
// events and call counters. Shared by the stand-in libraries:
//
//   libpypool_simcuda.so  (SONAME libcuda.so.1)        owns this state, the driver API and
//                                                      the pypoolsim_* control API
//   libpypool_simcudart.so (SONAME libcudart.so.13)     the runtime API, links the above
//   libpypool_simnvml.so  (SONAME libnvidia-ml.so.1)   NVML, links the above
//   libpypool_simcublas.so (SONAME libcublas.so.13)     cuBLAS: BLAS calls are work on the
//   libpypool_simcublasLt.so (SONAME libcublasLt.so.13) handle's/given stream, link the above
//
// Nothing here touches a GPU: device memory is host memory (mmap MAP_NORESERVE), streams
// are counters and events complete when the test says so. See Note [Simulated device].
//
// Every function is thread-safe. Errors are returned as sim::Status (mapped to
// cudaError_t / CUresult / nvmlReturn_t by each front end); nothing throws across the
// C ABI.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sim {

// Note [Simulated device]
// ~~~~~~~~~~~~~~~~~~~~~~~
// The point of the simulation is to run the real PyTorch CUDA binary's *allocator paths*
// without a GPU, so that pypool and PyTorch's own CUDACachingAllocator can be checked and
// measured side by side on every commit. It must therefore be truthful where allocators
// look (capacity, free memory, error codes, VMM misuse, event completion, which calls
// synchronize) and may be a no-op where they do not (kernels).
//
//  * Memory: cudaMalloc/cuMemAlloc return host memory from mmap(MAP_NORESERVE), so an
//    80 GiB device costs nothing until touched. Each device has a capacity; every byte
//    of device memory (plain allocations and VMM physical handles) counts against it
//    until freed/released, exactly as on a GPU, and an allocation past it fails with
//    the real out-of-memory code.
//  * Streams and events: work on a stream is a sequence number. A stream is either
//    free-running (work completes at once, or after PYPOOL_SIM_EVENT_DELAY_US) or held
//    by the test (pypoolsim_hold_stream), in which case nothing enqueued on it
//    completes until the test releases it or someone synchronizes it. An event records
//    the stream's sequence number; it is complete once the stream has completed that
//    far. Synchronizing a stream, an event or the device completes what is pending
//    (on a GPU it would wait for it), and counts as a synchronizing call.
//  * cuBLAS and cuBLASLt: a gemm (or any BLAS routine) is one unit of work on its stream,
//    like a kernel launch; no math is done. cuDNN is not simulated (torch runs with
//    torch.backends.cudnn.enabled = False and takes its own convolution path).
//  * Counters: every entry point counts its calls by name, and the calls that
//    synchronize the device on real hardware (cudaFree, cuMemFree, cudaFreeHost,
//    cuMemFreeHost, cuMemUnmap, the *Synchronize calls, blocking memcpy) are also
//    counted as "sync". cuMemUnmap is counted (cuda.h marks it synchronous) but completes
//    nothing: it does not wait in every case on a GPU (PyTorch waits for the stream
//    itself before unmapping), so an allocator must not rely on it here either.

enum class Status : int {
  ok = 0,
  invalid_value,        // bad argument (null pointer, bad flags, zero size where refused)
  out_of_memory,        // device capacity exhausted
  invalid_device,       // device ordinal out of range
  invalid_handle,       // unknown stream/event/physical handle
  not_mapped,           // unmap/access of a range that is not mapped
  already_mapped,       // map over a mapped range
  not_ready,            // query of incomplete work
  in_use,               // release of a reservation that is still mapped, etc.
  not_supported,
};

// ---- configuration (read once from the environment at first use) ----
// PYPOOL_SIM_DEVICES          number of devices (default 1, 1..16)
// PYPOOL_SIM_MEMORY           bytes per device, e.g. "80GiB", "512MiB", "1073741824"
//                             (default 80GiB); PYPOOL_SIM_MEMORY_<i> overrides device i
// PYPOOL_SIM_EVENT_DELAY_US   free-running work completes this long after it is
//                             enqueued (default 0: at once)
// PYPOOL_SIM_GRANULARITY      VMM granularity (default 2MiB, a power of two >= 64KiB)
// PYPOOL_SIM_QUIET            "1": do not print "not simulated" notices
// PYPOOL_SIM_TRACE            "1": print every counted call to stderr (debugging)
int device_count();
std::uint64_t device_total(int dev);   // capacity in bytes (0 for a bad ordinal)
std::uint64_t device_used(int dev);    // bytes of device memory in use now
std::uint64_t granularity();
bool quiet();

// Current device of the calling thread (cudaSetDevice / cuCtxSetCurrent); default 0.
int current_device();
Status set_current_device(int dev);

// ---- plain device memory (cudaMalloc / cuMemAlloc / cudaMallocAsync) ----
// size 0 gives *out = nullptr and ok. Alignment: 256 B at least (real: 256/512).
Status mem_alloc(int dev, std::size_t size, void** out);
// Frees what mem_alloc returned. nullptr: ok. Anything else: invalid_value.
Status mem_free(void* p);
// Pinned host memory (cudaHostAlloc / cudaMallocHost / cuMemHostAlloc): plain host
// memory, not counted against any device.
Status host_alloc(std::size_t size, void** out);
Status host_free(void* p);

// Which device memory holds `p` (plain allocation or mapped VMM range), with the
// allocation's base and size. false for host or unknown pointers.
bool find_device_pointer(const void* p, int* dev, void** base, std::size_t* size);

// ---- virtual memory management (cuMem* VMM) ----
// Reserve `size` (multiple of granularity) bytes of address space; no memory.
// `addr_hint` may be null. `alignment`: a power of two (or 0); the reservation is
// aligned to it and to the granularity at least.
Status vmm_reserve(std::size_t size, std::size_t alignment, void* addr_hint, void** out);
// Free a reservation; in_use if any part is still mapped; invalid_value if `p`/`size`
// is not exactly a reservation.
Status vmm_free_reservation(void* p, std::size_t size);
// Physical memory: `size` a multiple of granularity; counts against dev's capacity;
// out_of_memory past it. The handle is an opaque non-zero integer.
Status vmm_create(int dev, std::size_t size, std::uint64_t* handle);
// Release: the memory returns to the device once the handle is released *and* unmapped
// everywhere (as on a GPU).
Status vmm_release(std::uint64_t handle);
// Map the first `size` bytes of `handle` at `p`: p and size multiples of granularity;
// `offset` 0 (cuda.h: "currently must be zero"); the range inside one reservation; not
// mapped yet (already_mapped).
Status vmm_map(void* p, std::size_t size, std::size_t offset, std::uint64_t handle);
// Unmap: the range must be mapped (not_mapped otherwise) and consist of whole mappings,
// one or several; part of a mapping is invalid_value, as cuMemUnmap documents.
Status vmm_unmap(void* p, std::size_t size);
// Make a mapped range readable/writable (cuMemSetAccess). not_mapped if any part is not.
Status vmm_set_access(void* p, std::size_t size, int dev);
// Size of a physical handle (cuMemGetAllocationPropertiesFromHandle etc.).
Status vmm_handle_info(std::uint64_t handle, int* dev, std::size_t* size);
// The handle mapped at `p` (cuMemRetainAllocationHandle); retains it (release once more).
Status vmm_retain_handle(void* p, std::uint64_t* handle);

// ---- streams and events ----
// Streams are opaque pointers (cudaStream_t == CUstream). nullptr is the legacy default
// stream of the current device; (void*)1 and (void*)2 are cudaStreamLegacy and
// cudaStreamPerThread: all three map to the device's default stream.
struct Stream;
struct Event;
Status stream_create(int dev, unsigned flags, int priority, Stream** out);
Status stream_destroy(Stream* s);
Status stream_info(Stream* s, int* dev, unsigned* flags, int* priority);
// Enqueue one unit of work (a kernel launch, an async copy or memset) on `s`.
Status stream_enqueue(Stream* s);
Status stream_query(Stream* s);        // ok or not_ready
Status stream_synchronize(Stream* s);  // completes all pending work on s
// `s` waits for `e` (cudaStreamWaitEvent): work enqueued on s later completes only
// after e has. Simulated as on a GPU: a wait on an incomplete event is an item of its own
// on s (s is busy until e completes; every wait counts, not only the last).
Status stream_wait_event(Stream* s, Event* e);
Status device_synchronize(int dev);    // completes all pending work on every stream of dev

Status event_create(unsigned flags, Event** out);
Status event_destroy(Event* e);
Status event_record(Event* e, Stream* s);
Status event_query(Event* e);          // ok or not_ready (never-recorded events are ok)
Status event_synchronize(Event* e);    // completes the stream's work up to the event
// Milliseconds between two completed events (host clock when recorded: kernels take no
// time here). invalid_handle for events created with timing disabled, as on a GPU.
Status event_elapsed_ms(Event* start, Event* end, float* ms);

// ---- driver entry points (cudaGetDriverEntryPoint[ByVersion], cuGetProcAddress) ----
// The driver function `name` ("cuMemCreate", no _v2 suffix) as <cuda.h> of
// `cuda_version` (e.g. 12090) maps it to a versioned symbol (cuCtxPushCurrent ->
// cuCtxPushCurrent_v2). Unknown names give nullptr. Implemented in driver.cpp.
void* driver_entry_point(const char* name, unsigned cuda_version);

// ---- counters ----
// Count one call to `name` (a string literal: the pointer is kept). `syncs`: the call
// synchronizes the device on real hardware. The flag is fixed per name literal by its
// first call, so a call that syncs only sometimes (cudaFree(nullptr) does not) must use
// a name of its own for the non-syncing case.
void count_call(const char* name, bool syncs);

}  // namespace sim

// ---- the control API, for tests and benchmarks (ctypes on libcuda.so.1) ----
// All return 0 on success, -1 on a bad argument.
extern "C" {
// Device configuration can change only before the first allocation (returns -1 after).
int pypoolsim_configure(int devices, unsigned long long bytes_per_device);
int pypoolsim_set_memory(int dev, unsigned long long bytes);
int pypoolsim_device_count(void);
unsigned long long pypoolsim_device_total(int dev);
unsigned long long pypoolsim_device_used(int dev);
unsigned long long pypoolsim_device_peak(int dev);   // peak of device_used since reset
int pypoolsim_reset_peak(int dev);

// Streams: hold = work enqueued from now on stays pending; release = let it complete.
// `stream` is the raw cudaStream_t (torch.cuda.Stream.cuda_stream); 0 = default stream
// of the current device.
int pypoolsim_hold_stream(unsigned long long stream, int hold);
int pypoolsim_complete_stream(unsigned long long stream);   // completes what is pending
int pypoolsim_hold_all(int hold);  // every stream, including ones created later
int pypoolsim_pending_work(unsigned long long stream);      // pending units, or -1
int pypoolsim_set_event_delay_us(long long us);

// Counters. calls(name) = calls to that entry point; name NULL = all calls.
unsigned long long pypoolsim_calls(const char* name);
unsigned long long pypoolsim_sync_calls(void);
void pypoolsim_reset_counters(void);
// Writes "name count sync\n" lines for every entry point called so far into buf
// (NUL-terminated, truncated to len); returns the length needed.
unsigned long long pypoolsim_counters_text(char* buf, unsigned long long len);
// Fault injection: the next `n` device allocations (cudaMalloc/cuMemAlloc/cuMemCreate)
// fail with out-of-memory; -1 = clear.
int pypoolsim_fail_next_allocs(int n);
// Identifies the simulation: "pypool-simdevice <version>".
const char* pypoolsim_version(void);
}
