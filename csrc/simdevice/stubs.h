/* Weak "not simulated" stubs for every function a real CUDA library exports.
 *
 * The stand-ins must export what the real libraries export: a program or library that
 * resolves a function it never calls must still load, and one that calls it must get
 * an error it understands instead of a crash. Each stub names itself once on stderr
 * (unless PYPOOL_SIM_QUIET=1), counts the call and returns the library's "not
 * supported" code. They are weak, so the real definitions in driver.cpp, runtime.cpp
 * and nvml.cpp replace them at link time. Plain C: `int name(void)` is enough to make
 * the symbol exist, and callers pass arguments a stub ignores. */
#ifndef PYPOOL_SIMDEVICE_STUBS_H
#define PYPOOL_SIMDEVICE_STUBS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Counts the call in the simulated device's counters (driver.cpp). */
void pypoolsim_count_stub(const char* name);

static int pypoolsim_not_supported(const char* name, int* warned, int code) {
  pypoolsim_count_stub(name);
  if (!__atomic_exchange_n(warned, 1, __ATOMIC_RELAXED)) {
    const char* q = getenv("PYPOOL_SIM_QUIET");
    if (q == NULL || strcmp(q, "1") != 0)
      fprintf(stderr, "pypool-simdevice: %s is not simulated; it returns 'not supported' (%d)\n", name, code);
  }
  return code;
}

#define PYPOOLSIM_STUB(name, code)                                                   \
  static int pypoolsim_warned_##name;                                                \
  __attribute__((weak, visibility("default"))) int name(void) {                      \
    return pypoolsim_not_supported(#name, &pypoolsim_warned_##name, code);           \
  }

#endif
