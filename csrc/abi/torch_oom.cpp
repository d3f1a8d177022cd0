// Note [torch OutOfMemoryError]: torch turns a c10::OutOfMemoryError that reaches its
// Python bindings into torch.OutOfMemoryError (torch/csrc/Exceptions.h), and any other
// std::exception into a plain RuntimeError. A pluggable allocator's alloc function is
// called from inside torch (CUDAPluggableAllocator::malloc), so an exception it throws
// unwinds through torch to those handlers. pypool is built without torch, so it cannot
// name c10's types; instead it throws torch's own type through the C++ ABI, with the
// pieces libc10.so exports:
//   * the constructor c10::OutOfMemoryError(c10::SourceLocation, std::string) (C1);
//   * the type_info object of c10::OutOfMemoryError (_ZTI...).
// The object is built by torch's constructor in memory from __cxa_allocate_exception
// and thrown with torch's type_info, so torch's `catch (const c10::OutOfMemoryError&)`
// matches it exactly (the same type_info object, no name comparison) and reads it with
// torch's own layout. What pypool assumes, and how each assumption is guarded:
//   * the constructor's signature: it is in the mangled symbol name, so a torch that
//     changes it lacks the symbol and pypool keeps throwing its own type (a plain
//     RuntimeError with the same text);
//   * std::string is the C++11 ABI string on both sides: the mangled name says
//     __cxx11 for torch, and pypool enables this only when it is built with that ABI;
//   * c10::SourceLocation is {const char*, const char*, uint32_t} (unchanged since
//     2018; trivially copyable, so passed the same way whatever its name);
//   * sizeof(c10::OutOfMemoryError) fits kUsableBytes: 128 bytes in torch 2.13 and
//     2.14, 1024 allowed; tests/gpu/test_torch_parity.py compiles sizeof against the
//     installed torch's headers and fails if it ever outgrows that. At run time, for a
//     torch that was never tested, the buffer is kExceptionBytes (4x more) filled with a
//     pattern: if the constructor wrote past kUsableBytes the layout is not the one
//     assumed, so the object is destroyed, the feature turned off for the process and
//     pypool's own type thrown (a layout over kExceptionBytes would still overflow; that
//     is 32x today's size);
//   * its destructor is vtable slot 0 (the complete-object destructor of a class whose
//     primary base is std::exception, Itanium C++ ABI), since libc10 exports none.
// Only Linux/Itanium-ABI builds do this (dlopen/dlsym, __cxa_*); elsewhere, or when any
// symbol is missing, pypool_use_torch_oom returns an error code and nothing changes.
#include "torch_oom.h"

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "pypool/device_pool.h"
#include "pypool/c_api.h"

#if defined(__linux__) && defined(__GXX_ABI_VERSION)
#include <cxxabi.h>
#include <dlfcn.h>
#define PYPOOL_TORCH_OOM 1
#else
#define PYPOOL_TORCH_OOM 0
#endif

namespace {

constexpr std::size_t kUsableBytes = 1024;
constexpr std::size_t kExceptionBytes = 4 * kUsableBytes;
constexpr unsigned char kFill = 0xA5;

#if PYPOOL_TORCH_OOM
// Same layout as c10::SourceLocation.
struct SourceLocation {
  const char* function;
  const char* file;
  std::uint32_t line;
};
using Ctor = void (*)(void* self, SourceLocation where, std::string msg);

constexpr const char* kCtorSymbol =
    "_ZN3c1016OutOfMemoryErrorC1ENS_14SourceLocationENSt7__cxx1112basic_stringIcSt11char_"
    "traitsIcESaIcEEE";
constexpr const char* kTypeInfoSymbol = "_ZTIN3c1016OutOfMemoryErrorE";

std::atomic<Ctor> g_ctor{nullptr};
std::atomic<std::type_info*> g_type{nullptr};

void destroy(void* obj) {
  using Dtor = void (*)(void*);
  (*static_cast<Dtor**>(obj))[0](obj);
}

[[noreturn]] void throw_c10(Ctor ctor, std::type_info* type, const char* msg) {
  void* obj = __cxxabiv1::__cxa_allocate_exception(kExceptionBytes);
  std::memset(obj, kFill, kExceptionBytes);
  try {
    ctor(obj, SourceLocation{"pypool_malloc", __FILE__, static_cast<std::uint32_t>(__LINE__)},
         std::string(msg));
  } catch (...) {
    __cxxabiv1::__cxa_free_exception(obj);
    throw pypool::OutOfMemoryError(msg);
  }
  const auto* tail = static_cast<const unsigned char*>(obj) + kUsableBytes;
  for (std::size_t i = 0; i < kExceptionBytes - kUsableBytes; ++i) {
    if (tail[i] != kFill) {  // an object larger than assumed: not torch's known layout
      destroy(obj);
      __cxxabiv1::__cxa_free_exception(obj);
      g_ctor.store(nullptr, std::memory_order_release);
      std::fprintf(stderr, "pypool: c10::OutOfMemoryError is larger than %zu bytes in this torch; "
                   "out-of-memory errors are RuntimeError from now on\n", kUsableBytes);
      throw pypool::OutOfMemoryError(msg);
    }
  }
  __cxxabiv1::__cxa_throw(obj, type, &destroy);
}
#endif

}  // namespace

namespace pypool::abi {

void throw_oom(const char* msg) {
#if PYPOOL_TORCH_OOM
  Ctor ctor = g_ctor.load(std::memory_order_acquire);
  std::type_info* type = g_type.load(std::memory_order_acquire);
  if (ctor != nullptr && type != nullptr) throw_c10(ctor, type, msg);
#endif
  throw OutOfMemoryError(msg);
}

}  // namespace pypool::abi

extern "C" {

int pypool_use_torch_oom(const char* libc10_path) {
#if PYPOOL_TORCH_OOM
  if (libc10_path == nullptr) {
    g_ctor.store(nullptr, std::memory_order_release);
    g_type.store(nullptr, std::memory_order_release);
    return 0;
  }
#if !defined(_GLIBCXX_USE_CXX11_ABI) || !_GLIBCXX_USE_CXX11_ABI
  return -4;  // pypool's std::string is not torch's
#endif
  // RTLD_NOLOAD: only a libc10 that torch has already loaded (the one its catch sites
  // belong to); the handle is never closed, as torch never unloads it.
  void* lib = dlopen(libc10_path, RTLD_NOW | RTLD_NOLOAD);
  if (lib == nullptr) return -1;
  void* ctor = dlsym(lib, kCtorSymbol);
  if (ctor == nullptr) return -2;
  void* type = dlsym(lib, kTypeInfoSymbol);
  if (type == nullptr) return -3;
  g_type.store(static_cast<std::type_info*>(type), std::memory_order_release);
  g_ctor.store(reinterpret_cast<Ctor>(ctor), std::memory_order_release);
  return 1;
#else
  (void)libc10_path;
  return -5;
#endif
}

size_t pypool_torch_oom_capacity(void) { return kUsableBytes; }

int pypool_torch_oom_active(void) {
#if PYPOOL_TORCH_OOM
  return g_ctor.load(std::memory_order_acquire) != nullptr &&
         g_type.load(std::memory_order_acquire) != nullptr;
#else
  return 0;
#endif
}

}  // extern "C"
