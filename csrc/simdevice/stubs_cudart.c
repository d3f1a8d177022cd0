/* Runtime API stubs: cudaErrorNotSupported (801) for what runtime.cpp does not define. */
#include "stubs.h"

#define X(name) PYPOOLSIM_STUB(name, 801)
#include "symbols/cudart.inc"
#undef X
