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
/* Errors swallowed at this boundary since the process started. */
PYPOOL_API uint64_t pypool_error_count(void);

#ifdef __cplusplus
}
#endif
