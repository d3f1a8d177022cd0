/* The C ABI that PyTorch's CUDAPluggableAllocator loads with ctypes.
 *
 * pypool_malloc / pypool_free have exactly the signatures torch calls. No C++ exception
 * crosses this boundary except from pypool_malloc, which throws when memory cannot be
 * had: torch's own c10::OutOfMemoryError once pypool_use_torch_oom has enabled it
 * (torch.OutOfMemoryError in Python), else pypool::OutOfMemoryError (a
 * std::runtime_error; a Python RuntimeError with the same message). Errors in the other entry points are reported on
 * stderr and counted (pypool_error_count), never thrown. */
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

PYPOOL_API void* pypool_malloc(size_t size, int device, void* stream);
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
/* Bytes reserved for the c10::OutOfMemoryError object (>= its sizeof, checked by tests). */
PYPOOL_API size_t pypool_torch_oom_capacity(void);
/* Errors swallowed at this boundary since the process started. */
PYPOOL_API uint64_t pypool_error_count(void);

#ifdef __cplusplus
}
#endif
