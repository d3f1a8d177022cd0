/* The C ABI that PyTorch's CUDAPluggableAllocator loads with ctypes.
 *
 * pypool_malloc / pypool_free have exactly the signatures torch calls. No C++ exception
 * crosses this boundary except from pypool_malloc, which throws pypool::OutOfMemoryError
 * (a std::runtime_error) when memory cannot be had: torch turns it into a Python
 * RuntimeError carrying the message. Errors in the other entry points are reported on
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
/* Errors swallowed at this boundary since the process started. */
PYPOOL_API uint64_t pypool_error_count(void);

#ifdef __cplusplus
}
#endif
