/* NVML stubs: NVML_ERROR_NOT_SUPPORTED (3) for what nvml.cpp does not define. */
#include "stubs.h"

#define X(name) PYPOOLSIM_STUB(name, 3)
#include "symbols/nvml.inc"
#undef X
