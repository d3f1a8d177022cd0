/* cuBLAS stubs for what cublas.cpp does not define (symbols/cublas.inc):
 *   X(name): CUBLAS_STATUS_NOT_SUPPORTED (15), naming itself once (stubs.h);
 *   W(name): a BLAS routine that takes the handle first and only computes: one unit of
 *            work on the handle's stream, counted under its name (pypoolsim_cublas_work
 *            in cublas.cpp), with no math and no argument checks beyond the handle.
 * Both weak: cublas.cpp's definitions (the gemm family, with cuBLAS's argument checks)
 * replace them at link time. */
#include "stubs.h"

int pypoolsim_cublas_work(const char* name, void* handle) __attribute__((visibility("hidden")));

#define X(name) PYPOOLSIM_STUB(name, 15)
#define W(name)                                                                 \
  __attribute__((weak, visibility("default"))) int name(void* handle) {         \
    return pypoolsim_cublas_work(#name, handle);                                \
  }
#include "symbols/cublas.inc"
#undef W
#undef X
