// The cuBLAS stand-in (libpypool_simcublas.so, SONAME libcublas.so.13): handles and the
// BLAS routines torch calls, over the simulated device (sim_state.h; Note [Simulated
// device]). Like a kernel launch in the runtime stand-in, a BLAS routine is one unit of
// work enqueued on the handle's stream and counted by name; no math is done, so results
// are junk, exactly as tensor values are on the simulated device.
//
// What is here:
//  * handles: cublasCreate_v2/Destroy_v2, Set/GetStream_v2, SetWorkspace_v2 (torch's
//    workspace comes from its caching allocator, so it is part of every recorded
//    allocation trace), Set/GetMathMode, Set/GetPointerMode_v2, Set/GetAtomicsMode,
//    Set/GetSmCountTarget, Set/GetEmulationStrategy, cublasGetVersion(_v2),
//    cublasGetProperty, cublasGetCudartVersion, cublasGetStatusName/String;
//  * the gemm family torch calls, with cuBLAS's argument checks (dimensions, leading
//    dimensions, batch counts give CUBLAS_STATUS_INVALID_VALUE as the real library
//    does): cublas{S,D,C,Z}gemm_v2, cublasHgemm, cublas{C,Z}gemm3m, cublas{S,C}gemmEx,
//    cublasGemmEx, the *StridedBatched and *Batched forms, cublas{S,D,C,Z}gemv_v2;
//  * every other handle-first BLAS routine (W(name) in symbols/cublas.inc: level 1-3,
//    Ex, _64, grouped): the same enqueue without argument checks (stubs_cublas.c);
//  * host<->device copies cublasSet/GetMatrix, Set/GetVector and their Async and _64
//    forms: real copies (device memory is host memory here), MAPPING_ERROR when the
//    device side is not simulated device memory.
// Everything else (the legacy handle-less API, cublasXt, the batched LAPACK-like
// routines whose `info` outputs callers read, logging) is a weak stub that answers
// CUBLAS_STATUS_NOT_SUPPORTED (stubs_cublas.c, symbols/cublas.inc).
//
// What is not simulated: the device memory the real cublasCreate allocates for itself
// (a small default workspace, outside any caching allocator), and the real library's
// algorithm choices.
//
// The handle is looked up in a registry on every call, so a destroyed or foreign handle
// (or a first argument that is not a handle at all) gives NOT_INITIALIZED, not a crash.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <unordered_set>

#include "cublas_common.h"
#include "sim_state.h"

#define CUBLAS_API extern "C" __attribute__((visibility("default")))

using cublasStatus_t = int;
using cudaStream_t = void*;
using simblas::kExecutionFailed;
using simblas::kInternalError;
using simblas::kInvalidValue;
using simblas::kMappingError;
using simblas::kNotInitialized;
using simblas::kSuccess;

struct cublasContext {
  std::uint32_t tag = simblas::kCublasHandleTag;
  int device = 0;
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_size = 0;
  int math_mode = 0;        // CUBLAS_DEFAULT_MATH
  int pointer_mode = 0;     // CUBLAS_POINTER_MODE_HOST
  int atomics_mode = 0;     // CUBLAS_ATOMICS_NOT_ALLOWED
  int sm_count_target = 0;  // 0: all SMs
  int emulation_strategy = 0;
};
using cublasHandle_t = cublasContext*;

namespace {

std::mutex reg_mu;
// Leaked on purpose: handles may be destroyed by other libraries' static destructors.
std::unordered_set<cublasContext*>& registry() {
  static auto* r = new std::unordered_set<cublasContext*>();
  return *r;
}

// Runs f(h) under the registry lock if h is a live handle.
template <typename F>
cublasStatus_t with_handle(cublasHandle_t h, F&& f) {
  std::lock_guard<std::mutex> g(reg_mu);
  if (h == nullptr || registry().count(h) == 0) return kNotInitialized;
  return f(*h);
}

cublasStatus_t to_status(sim::Status s) {
  switch (s) {
    case sim::Status::ok: return kSuccess;
    case sim::Status::invalid_handle: return kExecutionFailed;  // a launch on a bad stream fails
    case sim::Status::invalid_value: return kInvalidValue;
    default: return kInternalError;
  }
}

// One unit of work on the handle's stream. The legacy default stream is the handle's
// device's, whichever device is current on the calling thread.
cublasStatus_t enqueue(cublasHandle_t h) {
  cudaStream_t stream = nullptr;
  int dev = 0;
  cublasStatus_t st = with_handle(h, [&](cublasContext& c) {
    stream = c.stream;
    dev = c.device;
    return kSuccess;
  });
  if (st != kSuccess) return st;
  auto* s = reinterpret_cast<sim::Stream*>(stream);
  const bool legacy = stream == nullptr || stream == reinterpret_cast<void*>(1) ||
                      stream == reinterpret_cast<void*>(2);
  int cur = sim::current_device();
  if (legacy && cur != dev) {
    sim::set_current_device(dev);
    sim::Status r = sim::stream_enqueue(s);
    sim::set_current_device(cur);
    return to_status(r);
  }
  return to_status(sim::stream_enqueue(s));
}

constexpr int kOpN = 0, kOpConjg = 3;

template <typename I>
I at_least_one(I v) {
  return v < 1 ? 1 : v;
}

// cuBLAS's gemm argument checks: C = op(A) op(B), op(A) m x k, op(B) k x n, C m x n,
// column-major.
template <typename I>
bool gemm_args_ok(int ta, int tb, I m, I n, I k, I lda, I ldb, I ldc, I batch = 1) {
  if (ta < kOpN || ta > kOpConjg || tb < kOpN || tb > kOpConjg) return false;
  if (m < 0 || n < 0 || k < 0 || batch < 0) return false;
  const I rows_a = ta == kOpN ? m : k;
  const I rows_b = tb == kOpN ? k : n;
  return lda >= at_least_one(rows_a) && ldb >= at_least_one(rows_b) && ldc >= at_least_one(m);
}

cublasStatus_t gemm(cublasHandle_t h, bool ok) {
  // Handle first, as cuBLAS does: a bad handle is NOT_INITIALIZED whatever the rest.
  cublasStatus_t st = with_handle(h, [](cublasContext&) { return kSuccess; });
  if (st != kSuccess) return st;
  if (!ok) return kInvalidValue;
  return enqueue(h);
}

// ---- host <-> device copies ----
// `dev_side` must lie in simulated device memory, `bytes` from it inside one allocation.
bool device_range_ok(const void* dev_side, std::size_t bytes) {
  int dev = 0;
  void* base = nullptr;
  std::size_t size = 0;
  if (!sim::find_device_pointer(dev_side, &dev, &base, &size)) return false;
  auto off = static_cast<std::size_t>(static_cast<const char*>(dev_side) - static_cast<char*>(base));
  return off <= size && bytes <= size - off;
}

template <typename I>
cublasStatus_t copy_matrix(I rows_, I cols_, I elem_, const void* src, I lds_, void* dst, I ldd_,
                           const void* dev_side, I ld_dev_) {
  const std::int64_t rows = rows_, cols = cols_, elem = elem_, lds = lds_, ldd = ldd_, ld_dev = ld_dev_;
  if (rows < 0 || cols < 0 || elem <= 0 || lds < at_least_one(rows) || ldd < at_least_one(rows)) {
    return kInvalidValue;
  }
  if (rows == 0 || cols == 0) return kSuccess;
  if (!device_range_ok(dev_side, static_cast<std::size_t>(((cols - 1) * ld_dev + rows) * elem))) {
    return kMappingError;
  }
  for (std::int64_t j = 0; j < cols; ++j) {
    std::memcpy(static_cast<char*>(dst) + j * ldd * elem, static_cast<const char*>(src) + j * lds * elem,
                static_cast<std::size_t>(rows * elem));
  }
  return kSuccess;
}

template <typename I>
cublasStatus_t copy_vector(I n_, I elem_, const void* src, I incs_, void* dst, I incd_, const void* dev_side,
                           I inc_dev_) {
  const std::int64_t n = n_, elem = elem_, incs = incs_, incd = incd_, inc_dev = inc_dev_;
  if (n < 0 || elem <= 0 || incs <= 0 || incd <= 0) return kInvalidValue;
  if (n == 0) return kSuccess;
  if (!device_range_ok(dev_side, static_cast<std::size_t>(((n - 1) * inc_dev + 1) * elem))) {
    return kMappingError;
  }
  for (std::int64_t i = 0; i < n; ++i) {
    std::memcpy(static_cast<char*>(dst) + i * incd * elem, static_cast<const char*>(src) + i * incs * elem,
                static_cast<std::size_t>(elem));
  }
  return kSuccess;
}

// The Async forms copy at once (the simulated device has no copy engine) and put one
// unit of work on `stream`, as cudaMemcpy2DAsync does in the runtime stand-in.
cublasStatus_t after_async(cublasStatus_t st, cudaStream_t stream) {
  if (st != kSuccess) return st;
  sim::Status r = sim::stream_enqueue(reinterpret_cast<sim::Stream*>(stream));
  return r == sim::Status::ok ? kSuccess : kMappingError;
}

}  // namespace

// The generic BLAS routine of stubs_cublas.c (W(name) in symbols/cublas.inc).
extern "C" __attribute__((visibility("hidden"))) int pypoolsim_cublas_work(const char* name, void* handle) {
  sim::count_call(name, false);
  return enqueue(static_cast<cublasHandle_t>(handle));
}

// =====================================================================================
// Handles and modes
// =====================================================================================

CUBLAS_API cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  sim::count_call("cublasCreate_v2", false);
  if (handle == nullptr) return kInvalidValue;
  if (sim::device_count() < 1) return kNotInitialized;
  auto* c = new cublasContext();
  c->device = sim::current_device();
  std::lock_guard<std::mutex> g(reg_mu);
  registry().insert(c);
  *handle = c;
  return kSuccess;
}

CUBLAS_API cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  sim::count_call("cublasDestroy_v2", false);
  {
    std::lock_guard<std::mutex> g(reg_mu);
    if (handle == nullptr || registry().erase(handle) == 0) return kNotInitialized;
  }
  handle->tag = 0;
  delete handle;
  return kSuccess;
}

CUBLAS_API cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  sim::count_call("cublasSetStream_v2", false);
  return with_handle(handle, [&](cublasContext& c) {
    c.stream = stream;
    return kSuccess;
  });
}

CUBLAS_API cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t* stream) {
  sim::count_call("cublasGetStream_v2", false);
  return with_handle(handle, [&](cublasContext& c) {
    if (stream == nullptr) return kInvalidValue;
    *stream = c.stream;
    return kSuccess;
  });
}

CUBLAS_API cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace, std::size_t bytes) {
  sim::count_call("cublasSetWorkspace_v2", false);
  return with_handle(handle, [&](cublasContext& c) {
    if (workspace == nullptr && bytes != 0) return kInvalidValue;
    if (reinterpret_cast<std::uintptr_t>(workspace) % 256 != 0) return kInvalidValue;  // cuBLAS wants 256 B
    c.workspace = workspace;
    c.workspace_size = bytes;
    return kSuccess;
  });
}

CUBLAS_API cublasStatus_t cublasSetMathMode(cublasHandle_t handle, int mode) {
  sim::count_call("cublasSetMathMode", false);
  return with_handle(handle, [&](cublasContext& c) {
    // CUBLAS_DEFAULT_MATH .. CUBLAS_FP64_EMULATED_FIXEDPOINT_MATH in the low bits, plus
    // CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION (16).
    if (mode < 0 || (mode & ~(16 | 15)) != 0) return kInvalidValue;
    c.math_mode = mode;
    return kSuccess;
  });
}

CUBLAS_API cublasStatus_t cublasGetMathMode(cublasHandle_t handle, int* mode) {
  sim::count_call("cublasGetMathMode", false);
  return with_handle(handle, [&](cublasContext& c) {
    if (mode == nullptr) return kInvalidValue;
    *mode = c.math_mode;
    return kSuccess;
  });
}

CUBLAS_API cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, int mode) {
  sim::count_call("cublasSetPointerMode_v2", false);
  return with_handle(handle, [&](cublasContext& c) {
    if (mode != 0 && mode != 1) return kInvalidValue;  // HOST, DEVICE
    c.pointer_mode = mode;
    return kSuccess;
  });
}

CUBLAS_API cublasStatus_t cublasGetPointerMode_v2(cublasHandle_t handle, int* mode) {
  sim::count_call("cublasGetPointerMode_v2", false);
  return with_handle(handle, [&](cublasContext& c) {
    if (mode == nullptr) return kInvalidValue;
    *mode = c.pointer_mode;
    return kSuccess;
  });
}

CUBLAS_API cublasStatus_t cublasSetAtomicsMode(cublasHandle_t handle, int mode) {
  sim::count_call("cublasSetAtomicsMode", false);
  return with_handle(handle, [&](cublasContext& c) {
    if (mode != 0 && mode != 1) return kInvalidValue;
    c.atomics_mode = mode;
    return kSuccess;
  });
}

CUBLAS_API cublasStatus_t cublasGetAtomicsMode(cublasHandle_t handle, int* mode) {
  sim::count_call("cublasGetAtomicsMode", false);
  return with_handle(handle, [&](cublasContext& c) {
    if (mode == nullptr) return kInvalidValue;
    *mode = c.atomics_mode;
    return kSuccess;
  });
}

CUBLAS_API cublasStatus_t cublasSetSmCountTarget(cublasHandle_t handle, int count) {
  sim::count_call("cublasSetSmCountTarget", false);
  return with_handle(handle, [&](cublasContext& c) {
    if (count < 0) return kInvalidValue;
    c.sm_count_target = count;
    return kSuccess;
  });
}

CUBLAS_API cublasStatus_t cublasGetSmCountTarget(cublasHandle_t handle, int* count) {
  sim::count_call("cublasGetSmCountTarget", false);
  return with_handle(handle, [&](cublasContext& c) {
    if (count == nullptr) return kInvalidValue;
    *count = c.sm_count_target;
    return kSuccess;
  });
}

CUBLAS_API cublasStatus_t cublasSetEmulationStrategy(cublasHandle_t handle, int strategy) {
  sim::count_call("cublasSetEmulationStrategy", false);
  return with_handle(handle, [&](cublasContext& c) {
    if (strategy < 0) return kInvalidValue;
    c.emulation_strategy = strategy;
    return kSuccess;
  });
}

CUBLAS_API cublasStatus_t cublasGetEmulationStrategy(cublasHandle_t handle, int* strategy) {
  sim::count_call("cublasGetEmulationStrategy", false);
  return with_handle(handle, [&](cublasContext& c) {
    if (strategy == nullptr) return kInvalidValue;
    *strategy = c.emulation_strategy;
    return kSuccess;
  });
}

// The real library answers without a valid handle (torch asks before creating one).
CUBLAS_API cublasStatus_t cublasGetVersion_v2(cublasHandle_t, int* version) {
  sim::count_call("cublasGetVersion_v2", false);
  if (version == nullptr) return kInvalidValue;
  *version = simblas::kVersion;
  return kSuccess;
}

CUBLAS_API cublasStatus_t cublasGetVersion(int* version) {  // legacy cublas.h
  sim::count_call("cublasGetVersion", false);
  if (version == nullptr) return kInvalidValue;
  *version = simblas::kVersion;
  return kSuccess;
}

CUBLAS_API cublasStatus_t cublasGetProperty(int type, int* value) {
  sim::count_call("cublasGetProperty", false);
  return simblas::version_property(type, value);
}

CUBLAS_API std::size_t cublasGetCudartVersion(void) {
  sim::count_call("cublasGetCudartVersion", false);
  return simblas::kCudartVersion;
}

CUBLAS_API const char* cublasGetStatusName(cublasStatus_t status) {
  sim::count_call("cublasGetStatusName", false);
  return simblas::status_name(status);
}

CUBLAS_API const char* cublasGetStatusString(cublasStatus_t status) {
  sim::count_call("cublasGetStatusString", false);
  return simblas::status_string(status);
}

// =====================================================================================
// The gemm family (column-major; pointers are never read: no math is done)
// =====================================================================================

using cv = const void*;
using mv = void*;

#define SIM_GEMM(name)                                                                                  \
  CUBLAS_API cublasStatus_t name(cublasHandle_t h, int ta, int tb, int m, int n, int k, cv, cv, int lda, \
                                 cv, int ldb, cv, mv, int ldc) {                                         \
    sim::count_call(#name, false);                                                                       \
    return gemm(h, gemm_args_ok(ta, tb, m, n, k, lda, ldb, ldc));                                        \
  }
SIM_GEMM(cublasSgemm_v2)
SIM_GEMM(cublasDgemm_v2)
SIM_GEMM(cublasCgemm_v2)
SIM_GEMM(cublasZgemm_v2)
SIM_GEMM(cublasHgemm)
SIM_GEMM(cublasCgemm3m)
SIM_GEMM(cublasZgemm3m)
#undef SIM_GEMM

// (h, ta, tb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc)
#define SIM_GEMM_EX(name)                                                                                  \
  CUBLAS_API cublasStatus_t name(cublasHandle_t h, int ta, int tb, int m, int n, int k, cv, cv, int, int lda, \
                                 cv, int, int ldb, cv, mv, int, int ldc) {                                  \
    sim::count_call(#name, false);                                                                          \
    return gemm(h, gemm_args_ok(ta, tb, m, n, k, lda, ldb, ldc));                                           \
  }
SIM_GEMM_EX(cublasSgemmEx)
SIM_GEMM_EX(cublasCgemmEx)
SIM_GEMM_EX(cublasCgemm3mEx)
#undef SIM_GEMM_EX

// cublasGemmEx: ... C, Ctype, ldc, computeType, algo
CUBLAS_API cublasStatus_t cublasGemmEx(cublasHandle_t h, int ta, int tb, int m, int n, int k, cv, cv, int, int lda,
                                       cv, int, int ldb, cv, mv, int, int ldc, int, int) {
  sim::count_call("cublasGemmEx", false);
  return gemm(h, gemm_args_ok(ta, tb, m, n, k, lda, ldb, ldc));
}

// (h, ta, tb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB, beta, C, ldc, strideC, batch)
#define SIM_GEMM_STRIDED(name)                                                                              \
  CUBLAS_API cublasStatus_t name(cublasHandle_t h, int ta, int tb, int m, int n, int k, cv, cv, int lda,     \
                                 long long, cv, int ldb, long long, cv, mv, int ldc, long long, int batch) { \
    sim::count_call(#name, false);                                                                           \
    return gemm(h, gemm_args_ok(ta, tb, m, n, k, lda, ldb, ldc, batch));                                     \
  }
SIM_GEMM_STRIDED(cublasSgemmStridedBatched)
SIM_GEMM_STRIDED(cublasDgemmStridedBatched)
SIM_GEMM_STRIDED(cublasCgemmStridedBatched)
SIM_GEMM_STRIDED(cublasZgemmStridedBatched)
SIM_GEMM_STRIDED(cublasHgemmStridedBatched)
SIM_GEMM_STRIDED(cublasCgemm3mStridedBatched)
#undef SIM_GEMM_STRIDED

// (h, ta, tb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype, ldb, strideB, beta, C, Ctype, ldc,
//  strideC, batch, computeType, algo)
CUBLAS_API cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, int ta, int tb, int m, int n, int k, cv, cv,
                                                     int, int lda, long long, cv, int, int ldb, long long, cv, mv,
                                                     int, int ldc, long long, int batch, int, int) {
  sim::count_call("cublasGemmStridedBatchedEx", false);
  return gemm(h, gemm_args_ok(ta, tb, m, n, k, lda, ldb, ldc, batch));
}

// (h, ta, tb, m, n, k, alpha, Aarray, lda, Barray, ldb, beta, Carray, ldc, batch)
#define SIM_GEMM_BATCHED(name)                                                                                 \
  CUBLAS_API cublasStatus_t name(cublasHandle_t h, int ta, int tb, int m, int n, int k, cv, cv, int lda, cv, \
                                 int ldb, cv, cv, int ldc, int batch) {                                       \
    sim::count_call(#name, false);                                                                            \
    return gemm(h, gemm_args_ok(ta, tb, m, n, k, lda, ldb, ldc, batch));                                      \
  }
SIM_GEMM_BATCHED(cublasSgemmBatched)
SIM_GEMM_BATCHED(cublasDgemmBatched)
SIM_GEMM_BATCHED(cublasCgemmBatched)
SIM_GEMM_BATCHED(cublasZgemmBatched)
SIM_GEMM_BATCHED(cublasHgemmBatched)
SIM_GEMM_BATCHED(cublasCgemm3mBatched)
#undef SIM_GEMM_BATCHED

// (h, ta, tb, m, n, k, alpha, Aarray, Atype, lda, Barray, Btype, ldb, beta, Carray, Ctype, ldc, batch,
//  computeType, algo)
CUBLAS_API cublasStatus_t cublasGemmBatchedEx(cublasHandle_t h, int ta, int tb, int m, int n, int k, cv, cv, int,
                                              int lda, cv, int, int ldb, cv, cv, int, int ldc, int batch, int, int) {
  sim::count_call("cublasGemmBatchedEx", false);
  return gemm(h, gemm_args_ok(ta, tb, m, n, k, lda, ldb, ldc, batch));
}

// y = op(A) x: (h, trans, m, n, alpha, A, lda, x, incx, beta, y, incy); A is m x n.
#define SIM_GEMV(name)                                                                                     \
  CUBLAS_API cublasStatus_t name(cublasHandle_t h, int trans, int m, int n, cv, cv, int lda, cv, int incx, \
                                 cv, mv, int incy) {                                                        \
    sim::count_call(#name, false);                                                                          \
    const bool ok = trans >= kOpN && trans <= kOpConjg && m >= 0 && n >= 0 && lda >= at_least_one(m) &&     \
                    incx != 0 && incy != 0;                                                                 \
    return gemm(h, ok);                                                                                     \
  }
SIM_GEMV(cublasSgemv_v2)
SIM_GEMV(cublasDgemv_v2)
SIM_GEMV(cublasCgemv_v2)
SIM_GEMV(cublasZgemv_v2)
#undef SIM_GEMV

// =====================================================================================
// Host <-> device copies (cublas_api.h: no handle)
// =====================================================================================

#define SIM_STR(x) #x
#define SIM_MATRIX(I, suffix)                                                                                  \
  CUBLAS_API cublasStatus_t cublasSetMatrix##suffix(I rows, I cols, I elem, cv a, I lda, mv b, I ldb) {       \
    sim::count_call(SIM_STR(cublasSetMatrix##suffix), true); /* a blocking copy */                           \
    return copy_matrix<I>(rows, cols, elem, a, lda, b, ldb, b, ldb);                                          \
  }                                                                                                           \
  CUBLAS_API cublasStatus_t cublasGetMatrix##suffix(I rows, I cols, I elem, cv a, I lda, mv b, I ldb) {       \
    sim::count_call(SIM_STR(cublasGetMatrix##suffix), true);                                                  \
    return copy_matrix<I>(rows, cols, elem, a, lda, b, ldb, a, lda);                                          \
  }                                                                                                           \
  CUBLAS_API cublasStatus_t cublasSetMatrixAsync##suffix(I rows, I cols, I elem, cv a, I lda, mv b, I ldb,    \
                                                         cudaStream_t s) {                                    \
    sim::count_call(SIM_STR(cublasSetMatrixAsync##suffix), false);                                            \
    return after_async(copy_matrix<I>(rows, cols, elem, a, lda, b, ldb, b, ldb), s);                          \
  }                                                                                                           \
  CUBLAS_API cublasStatus_t cublasGetMatrixAsync##suffix(I rows, I cols, I elem, cv a, I lda, mv b, I ldb,    \
                                                         cudaStream_t s) {                                    \
    sim::count_call(SIM_STR(cublasGetMatrixAsync##suffix), false);                                            \
    return after_async(copy_matrix<I>(rows, cols, elem, a, lda, b, ldb, a, lda), s);                          \
  }

#define SIM_VECTOR(I, suffix)                                                                                  \
  CUBLAS_API cublasStatus_t cublasSetVector##suffix(I n, I elem, cv x, I incx, mv y, I incy) {                \
    sim::count_call(SIM_STR(cublasSetVector##suffix), true);                                                  \
    return copy_vector<I>(n, elem, x, incx, y, incy, y, incy);                                                \
  }                                                                                                           \
  CUBLAS_API cublasStatus_t cublasGetVector##suffix(I n, I elem, cv x, I incx, mv y, I incy) {                \
    sim::count_call(SIM_STR(cublasGetVector##suffix), true);                                                  \
    return copy_vector<I>(n, elem, x, incx, y, incy, x, incx);                                                \
  }                                                                                                           \
  CUBLAS_API cublasStatus_t cublasSetVectorAsync##suffix(I n, I elem, cv x, I incx, mv y, I incy,             \
                                                         cudaStream_t s) {                                    \
    sim::count_call(SIM_STR(cublasSetVectorAsync##suffix), false);                                            \
    return after_async(copy_vector<I>(n, elem, x, incx, y, incy, y, incy), s);                                \
  }                                                                                                           \
  CUBLAS_API cublasStatus_t cublasGetVectorAsync##suffix(I n, I elem, cv x, I incx, mv y, I incy,             \
                                                         cudaStream_t s) {                                    \
    sim::count_call(SIM_STR(cublasGetVectorAsync##suffix), false);                                            \
    return after_async(copy_vector<I>(n, elem, x, incx, y, incy, x, incx), s);                                \
  }

SIM_MATRIX(int, )
SIM_MATRIX(std::int64_t, _64)
SIM_VECTOR(int, )
SIM_VECTOR(std::int64_t, _64)
#undef SIM_MATRIX
#undef SIM_VECTOR
#undef SIM_STR
