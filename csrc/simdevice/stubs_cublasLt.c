/* cuBLASLt stubs: CUBLAS_STATUS_NOT_SUPPORTED (15) for what cublaslt.cpp does not define. */
#include "stubs.h"

#define X(name) PYPOOLSIM_STUB(name, 15)
#include "symbols/cublasLt.inc"
#undef X
