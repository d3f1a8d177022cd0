// Reporting allocations to torch.profiler (Note [torch profiler bridge] in
// torch_profiler.cpp). Internal header of the C ABI.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pypool::abi {

// True when the bridge is on and torch's profiler records memory on this thread.
bool profiler_wants_memory() noexcept;
// c10::reportMemoryUsageToProfiler for CUDA device `device` (size < 0: a free).
void profiler_report(void* ptr, std::int64_t size, std::size_t allocated, std::size_t reserved,
                     int device) noexcept;
// c10::reportOutOfMemoryToProfiler.
void profiler_report_oom(std::int64_t size, std::size_t allocated, std::size_t reserved,
                         int device) noexcept;

// Defined in c_api.cpp: turns the profiler bit of the torch entry points' mode on or off.
void set_profiler_mode(bool on) noexcept;

}  // namespace pypool::abi
