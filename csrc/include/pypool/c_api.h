/* The C ABI that PyTorch's CUDAPluggableAllocator loads with ctypes.
 *
 * pypool_malloc / pypool_free have exactly the signatures torch calls.
 *
 * Two malloc entries:
 *   pypool_malloc      THROWS a C++ exception when it fails: for torch only. torch calls
 *                      it from C++ (CUDAPluggableAllocator::malloc), catches the exception
 *                      and raises it in Python carrying pypool's message (sizes,
 *                      fragmentation, what to try); a plain C function has no other way to
 *                      hand torch that message. When memory cannot be had it throws torch's
 *                      own c10::OutOfMemoryError once pypool_use_torch_oom has enabled it
 *                      (torch.OutOfMemoryError in Python), else pypool::OutOfMemoryError (a
 *                      std::runtime_error; a Python RuntimeError with the same message); a
 *                      device index out of range throws std::invalid_argument.
 *                      From C, ctypes or cffi an exception cannot be caught: the process
 *                      ends in std::terminate (exit 134). Do not call it from there.
 *   pypool_try_malloc  NEVER throws: for C, ctypes and cffi callers. On failure it returns
 *                      NULL, stores a pypool_error code in *error (when error is not NULL)
 *                      and keeps the message for pypool_last_error().
 * Errors in the other entry points are reported on stderr and counted
 * (pypool_error_count), never thrown. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define PYPOOL_API __declspec(dllexport)
#else
#define PYPOOL_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes of pypool_try_malloc. */
enum pypool_error {
  PYPOOL_OK = 0,
  PYPOOL_ERROR_OUT_OF_MEMORY = 1,    /* the pool cannot get the memory (message says why) */
  PYPOOL_ERROR_INVALID_DEVICE = 2,   /* device index out of range */
  PYPOOL_ERROR_INVALID_ARGUMENT = 3, /* a bad argument other than the device */
  PYPOOL_ERROR_BACKEND = 4,          /* the device or driver failed */
  PYPOOL_ERROR_INTERNAL = 5          /* anything else */
};

/* For torch: throws on failure (see above). size 0 returns NULL. */
PYPOOL_API void* pypool_malloc(size_t size, int device, void* stream);
/* For C / ctypes / cffi: never throws. size 0 returns NULL with *error = PYPOOL_OK.
 * error may be NULL. */
PYPOOL_API void* pypool_try_malloc(size_t size, int device, void* stream, int* error);
/* The message of the last failure of a pypool_* call on this thread ("" if none). The
 * pointer stays valid for the thread's lifetime; the text changes at its next failure. */
PYPOOL_API const char* pypool_last_error(void);
PYPOOL_API void pypool_free(void* ptr, size_t size, int device, void* stream);
/* Hooks of torch._C._CUDAPluggableAllocator. */
PYPOOL_API void pypool_init(int device_count);
PYPOOL_API void pypool_empty_cache(void);
PYPOOL_API void pypool_set_memory_fraction(double fraction, int device);
PYPOOL_API void pypool_record_stream(void* ptr, void* stream);
/* Make pypool_malloc throw c10::OutOfMemoryError, resolved in the already loaded
 * libc10 at `libc10_path` (NULL: back to pypool's own type). Returns 1 when enabled, 0
 * when disabled, < 0 when it cannot be done here (-1 libc10 not loaded, -2 / -3 its
 * constructor / type_info missing, -4 pypool not built with the C++11 string ABI,
 * -5 not a Linux Itanium-ABI build); Note [torch OutOfMemoryError]. */
PYPOOL_API int pypool_use_torch_oom(const char* libc10_path);
/* Bytes the c10::OutOfMemoryError object may take (>= its sizeof, checked by tests; a
 * larger one is caught at run time and turns the feature off). */
PYPOOL_API size_t pypool_torch_oom_capacity(void);
/* 1 while pypool_malloc throws c10::OutOfMemoryError (it can turn itself off, see above). */
PYPOOL_API int pypool_torch_oom_active(void);
/* torch's entry points: what pypool.install() gives CUDAPluggableAllocator. They are
 * pypool_malloc / pypool_free (same signatures, same errors) plus the modes torch's own
 * allocator has, none of which costs pypool_malloc / pypool_free anything (Note [Torch
 * entry points] in csrc/abi/c_api.cpp):
 *   caching disabled  (torch.cuda.caching_allocator_enable(False),
 *                     PYTORCH_NO_CUDA_MEMORY_CACHING=1): allocations go straight to the
 *                     device and frees straight back, without the pool or its stats;
 *   profiler reports  (pypool_use_torch_profiler): each allocation and free is reported
 *                     to torch.profiler's memory events;
 *   OOM observers     (pypool_add_oom_observer): called before the error is thrown. */
PYPOOL_API void* pypool_torch_malloc(size_t size, int device, void* stream);
/* Frees a pointer of pypool_torch_malloc, cached or not. A pointer that is neither is
 * reported (stderr, pypool_error_count, pypool_last_error), never thrown. */
PYPOOL_API void pypool_torch_free(void* ptr, size_t size, int device, void* stream);
/* 0: pypool_torch_malloc allocates uncached from now on; 1: cached again. Pointers keep
 * the kind they were allocated with, whenever they are freed. */
PYPOOL_API void pypool_set_caching_enabled(int enabled);
/* The flag pypool_set_caching_enabled set last (1 at start), as torch's isEnabled. */
PYPOOL_API int pypool_caching_enabled(void);
/* 1: every allocation is uncached whatever pypool_set_caching_enabled says, as torch's
 * PYTORCH_NO_CUDA_MEMORY_CACHING=1; 0: off again. */
PYPOOL_API void pypool_force_uncached(int on);
PYPOOL_API int pypool_uncached_forced(void);
/* Live uncached allocations (count and bytes), all devices. */
PYPOOL_API size_t pypool_uncached_count(void);
PYPOOL_API size_t pypool_uncached_bytes(void);
/* Called on pypool_torch_malloc's out-of-memory, outside any pool lock, before the error
 * is thrown, with torch's arguments: the device, the bytes the pool tried to get from it
 * (the request rounded to its segment size), the memory it may use (the cap when one is
 * set, else the device's total) and the device's free memory. Returns 0, or -1 when the
 * table (64 observers) is full. */
typedef void (*pypool_oom_observer)(int64_t device, size_t alloc, size_t device_total, size_t device_free);
PYPOOL_API int pypool_add_oom_observer(pypool_oom_observer fn);
PYPOOL_API void pypool_clear_oom_observers(void);
/* Make pypool_torch_malloc / pypool_torch_free report to torch.profiler, through the
 * already loaded libc10 at `libc10_path` (NULL: stop). Returns 1 when enabled, 0 when
 * disabled, < 0 when it cannot be done here (-1 libc10 not loaded, -2 a symbol missing,
 * -5 not a Linux build); Note [torch profiler bridge]. */
PYPOOL_API int pypool_use_torch_profiler(const char* libc10_path);
/* 1: report from now on; 0: not until gated on again (the symbols stay resolved).
 * pypool.install() keeps it on only while a torch profiler runs (Note [Profiler gate]
 * in pypool/_torch.py). Returns 1, or -1 before pypool_use_torch_profiler succeeded. */
PYPOOL_API int pypool_torch_profiler_gate(int on);
/* 1 while pypool_torch_malloc / pypool_torch_free ask torch whether to report. */
PYPOOL_API int pypool_torch_profiler_active(void);
/* Errors swallowed at this boundary since the process started. */
PYPOOL_API uint64_t pypool_error_count(void);

#ifdef __cplusplus
}
#endif
