// Throwing PyTorch's own c10::OutOfMemoryError from pypool_malloc (Note [torch
// OutOfMemoryError] in torch_oom.cpp). Internal header of the C ABI.
#pragma once

namespace pypool::abi {

// Throws c10::OutOfMemoryError carrying `msg` when pypool_use_torch_oom has enabled it,
// else pypool::OutOfMemoryError(msg). Never returns.
[[noreturn]] void throw_oom(const char* msg);

}  // namespace pypool::abi
