/* Driver API stubs: CUDA_ERROR_NOT_SUPPORTED (801) for what driver.cpp does not define. */
#include "stubs.h"

#define X(name) PYPOOLSIM_STUB(name, 801)
#include "symbols/cuda.inc"
#undef X
