// The cuBLASLt stand-in (libpypool_simcublasLt.so, SONAME libcublasLt.so.13): the
// matmul API torch uses for addmm with a bias epilogue (nn.Linear) and, when asked, for
// every gemm, over the simulated device (Note [Simulated device] in sim_state.h). A
// cublasLtMatmul is one unit of work enqueued on the stream it is given and counted; no
// math is done.
//
// What is here: cublasLtCreate/Destroy; matmul, matrix-layout and preference descriptors
// (Create/Destroy/SetAttribute/GetAttribute: attributes are kept as the bytes set, so a
// Get returns what was Set or given at Create); cublasLtMatmulAlgoGetHeuristic, which
// answers exactly one algorithm, state CUBLAS_STATUS_SUCCESS, needing no workspace;
// cublasLtMatmulAlgoGetIds/Init/Check and AlgoConfigSet/GetAttribute over that one
// algorithm; cublasLtMatmul; versions, properties and status names. The rest (matrix
// transforms, the *Init_internal forms that build descriptors in caller memory, logging,
// the per-architecture entry points) are weak "not supported" stubs (stubs_cublasLt.c,
// symbols/cublasLt.inc).
//
// Handles: torch passes its cuBLAS handle (libcublas.so.13) as the cublasLtHandle_t, as
// the real libraries allow, so a handle from either stand-in is accepted (tagged in
// cublas_common.h); cuBLASLt itself keeps no per-handle state.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <vector>

#include "cublas_common.h"
#include "sim_state.h"

#define CUBLASLT_API extern "C" __attribute__((visibility("default")))

using cublasStatus_t = int;
using cudaStream_t = void*;
using simblas::kInvalidValue;
using simblas::kNotInitialized;
using simblas::kSuccess;

namespace {

constexpr std::uint32_t kDescTag = 0x50534c44u;    // matmul descriptor
constexpr std::uint32_t kLayoutTag = 0x50534c4cu;  // matrix layout
constexpr std::uint32_t kPrefTag = 0x50534c50u;    // preference

struct Attributes {
  std::uint32_t tag;
  std::map<int, std::vector<unsigned char>> values;

  explicit Attributes(std::uint32_t t) : tag(t) {}

  template <typename T>
  void put(int attr, T v) {
    auto* p = reinterpret_cast<const unsigned char*>(&v);
    values[attr].assign(p, p + sizeof v);
  }
};

struct LtHandle {
  std::uint32_t tag = simblas::kCublasLtHandleTag;
};

bool is_handle(const void* h) {
  if (h == nullptr) return false;
  std::uint32_t tag;
  std::memcpy(&tag, h, sizeof tag);
  return tag == simblas::kCublasLtHandleTag || tag == simblas::kCublasHandleTag;
}

Attributes* as(void* p, std::uint32_t tag) {
  auto* a = static_cast<Attributes*>(p);
  return a != nullptr && a->tag == tag ? a : nullptr;
}

template <typename T>
cublasStatus_t create(T** out, std::uint32_t tag) {
  if (out == nullptr) return kInvalidValue;
  *out = reinterpret_cast<T*>(new Attributes(tag));
  return kSuccess;
}

cublasStatus_t destroy(void* p, std::uint32_t tag) {
  if (p == nullptr) return kSuccess;  // as cuBLASLt: destroying NULL is fine
  Attributes* a = as(p, tag);
  if (a == nullptr) return kInvalidValue;
  a->tag = 0;
  delete a;
  return kSuccess;
}

cublasStatus_t set_attr(void* p, std::uint32_t tag, int attr, const void* buf, std::size_t size) {
  Attributes* a = as(p, tag);
  if (a == nullptr || attr < 0 || (buf == nullptr && size != 0) || size > 4096) return kInvalidValue;
  auto* b = static_cast<const unsigned char*>(buf);
  a->values[attr].assign(b, b + size);
  return kSuccess;
}

// cuBLASLt's GetAttribute contract: sizeInBytes 0 asks for the size (in *sizeWritten);
// otherwise the buffer must hold the value.
cublasStatus_t get_attr(void* p, std::uint32_t tag, int attr, void* buf, std::size_t size, std::size_t* written) {
  Attributes* a = as(p, tag);
  if (a == nullptr) return kInvalidValue;
  auto it = a->values.find(attr);
  if (it == a->values.end()) return kInvalidValue;  // not set: the simulation knows no default
  const std::size_t need = it->second.size();
  if (size == 0) {
    if (written == nullptr) return kInvalidValue;
    *written = need;
    return kSuccess;
  }
  if (buf == nullptr || size < need) return kInvalidValue;
  std::memcpy(buf, it->second.data(), need);
  if (written != nullptr) *written = need;
  return kSuccess;
}

// cublasLtMatmulAlgo_t: 8 x uint64, opaque. The one algorithm of the simulation keeps
// its id and the AlgoConfig attributes (all 32 bits or less) as uint32 words 0..8, with
// a marker in the last word so that AlgoCheck and Matmul know it was initialized.
struct Algo {
  std::uint64_t data[8];
};
constexpr std::uint32_t kAlgoMarker = 0x50534c41u;
constexpr int kAlgoConfigAttrs = 9;  // CUBLASLT_ALGO_CONFIG_ID .. CLUSTER_SHAPE_ID

void init_algo(Algo* algo, int id) {
  std::memset(algo, 0, sizeof *algo);
  std::uint32_t words[16] = {};
  words[0] = static_cast<std::uint32_t>(id);
  words[15] = kAlgoMarker;
  std::memcpy(algo->data, words, sizeof words);
}

std::uint32_t* algo_words(Algo* algo) { return reinterpret_cast<std::uint32_t*>(algo->data); }

bool algo_ok(const Algo* algo) {
  std::uint32_t words[16];
  std::memcpy(words, algo->data, sizeof words);
  return words[15] == kAlgoMarker;
}

// cublasLtMatmulHeuristicResult_t
struct HeuristicResult {
  Algo algo;
  std::size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
};

bool layouts_ok(void* a, void* b, void* c, void* d) {
  return as(a, kLayoutTag) != nullptr && as(b, kLayoutTag) != nullptr && as(c, kLayoutTag) != nullptr &&
         as(d, kLayoutTag) != nullptr;
}

void fill_result(HeuristicResult* r) {
  std::memset(r, 0, sizeof *r);
  init_algo(&r->algo, 0);
  r->workspaceSize = 0;
  r->state = kSuccess;
  r->wavesCount = 1.0f;
}

}  // namespace

using cublasLtHandle_t = void*;
using cublasLtMatmulDesc_t = void*;
using cublasLtMatrixLayout_t = void*;
using cublasLtMatmulPreference_t = void*;

// =====================================================================================
// Library
// =====================================================================================

CUBLASLT_API cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  sim::count_call("cublasLtCreate", false);
  if (handle == nullptr) return kInvalidValue;
  if (sim::device_count() < 1) return kNotInitialized;
  *handle = new LtHandle();
  return kSuccess;
}

CUBLASLT_API cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  sim::count_call("cublasLtDestroy", false);
  auto* h = static_cast<LtHandle*>(handle);
  if (h == nullptr || h->tag != simblas::kCublasLtHandleTag) return kNotInitialized;
  h->tag = 0;
  delete h;
  return kSuccess;
}

CUBLASLT_API std::size_t cublasLtGetVersion(void) {
  sim::count_call("cublasLtGetVersion", false);
  return simblas::kVersion;
}

CUBLASLT_API std::size_t cublasLtGetCudartVersion(void) {
  sim::count_call("cublasLtGetCudartVersion", false);
  return simblas::kCudartVersion;
}

CUBLASLT_API cublasStatus_t cublasLtGetProperty(int type, int* value) {
  sim::count_call("cublasLtGetProperty", false);
  return simblas::version_property(type, value);
}

CUBLASLT_API const char* cublasLtGetStatusName(cublasStatus_t status) {
  sim::count_call("cublasLtGetStatusName", false);
  return simblas::status_name(status);
}

CUBLASLT_API const char* cublasLtGetStatusString(cublasStatus_t status) {
  sim::count_call("cublasLtGetStatusString", false);
  return simblas::status_string(status);
}

// =====================================================================================
// Descriptors
// =====================================================================================

// CUBLASLT_MATMUL_DESC_COMPUTE_TYPE = 0, _SCALE_TYPE = 1 (int32 each).
CUBLASLT_API cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, int computeType, int scaleType) {
  sim::count_call("cublasLtMatmulDescCreate", false);
  cublasStatus_t st = create(desc, kDescTag);
  if (st == kSuccess) {
    auto* a = static_cast<Attributes*>(*desc);
    a->put<std::int32_t>(0, computeType);
    a->put<std::int32_t>(1, scaleType);
  }
  return st;
}

CUBLASLT_API cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  sim::count_call("cublasLtMatmulDescDestroy", false);
  return destroy(desc, kDescTag);
}

CUBLASLT_API cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, int attr, const void* buf,
                                                           std::size_t size) {
  sim::count_call("cublasLtMatmulDescSetAttribute", false);
  return set_attr(desc, kDescTag, attr, buf, size);
}

CUBLASLT_API cublasStatus_t cublasLtMatmulDescGetAttribute(cublasLtMatmulDesc_t desc, int attr, void* buf,
                                                           std::size_t size, std::size_t* written) {
  sim::count_call("cublasLtMatmulDescGetAttribute", false);
  return get_attr(desc, kDescTag, attr, buf, size, written);
}

// CUBLASLT_MATRIX_LAYOUT_TYPE = 0 (uint32), ROWS = 2 / COLS = 3 (uint64), LD = 4 (int64).
CUBLASLT_API cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, int type,
                                                       std::uint64_t rows, std::uint64_t cols, std::int64_t ld) {
  sim::count_call("cublasLtMatrixLayoutCreate", false);
  if (ld < 0) return kInvalidValue;
  cublasStatus_t st = create(layout, kLayoutTag);
  if (st == kSuccess) {
    auto* a = static_cast<Attributes*>(*layout);
    a->put<std::uint32_t>(0, static_cast<std::uint32_t>(type));
    a->put<std::uint64_t>(2, rows);
    a->put<std::uint64_t>(3, cols);
    a->put<std::int64_t>(4, ld);
  }
  return st;
}

CUBLASLT_API cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  sim::count_call("cublasLtMatrixLayoutDestroy", false);
  return destroy(layout, kLayoutTag);
}

CUBLASLT_API cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout, int attr,
                                                             const void* buf, std::size_t size) {
  sim::count_call("cublasLtMatrixLayoutSetAttribute", false);
  return set_attr(layout, kLayoutTag, attr, buf, size);
}

CUBLASLT_API cublasStatus_t cublasLtMatrixLayoutGetAttribute(cublasLtMatrixLayout_t layout, int attr, void* buf,
                                                             std::size_t size, std::size_t* written) {
  sim::count_call("cublasLtMatrixLayoutGetAttribute", false);
  return get_attr(layout, kLayoutTag, attr, buf, size, written);
}

CUBLASLT_API cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  sim::count_call("cublasLtMatmulPreferenceCreate", false);
  return create(pref, kPrefTag);
}

CUBLASLT_API cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  sim::count_call("cublasLtMatmulPreferenceDestroy", false);
  return destroy(pref, kPrefTag);
}

CUBLASLT_API cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref, int attr,
                                                                 const void* buf, std::size_t size) {
  sim::count_call("cublasLtMatmulPreferenceSetAttribute", false);
  return set_attr(pref, kPrefTag, attr, buf, size);
}

CUBLASLT_API cublasStatus_t cublasLtMatmulPreferenceGetAttribute(cublasLtMatmulPreference_t pref, int attr,
                                                                 void* buf, std::size_t size, std::size_t* written) {
  sim::count_call("cublasLtMatmulPreferenceGetAttribute", false);
  return get_attr(pref, kPrefTag, attr, buf, size, written);
}

// =====================================================================================
// Algorithms: one, needing no workspace
// =====================================================================================

CUBLASLT_API cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                                           cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                                           cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                                           cublasLtMatmulPreference_t pref, int requested,
                                                           HeuristicResult* results, int* returned) {
  sim::count_call("cublasLtMatmulAlgoGetHeuristic", false);
  if (!is_handle(handle)) return kNotInitialized;
  if (as(desc, kDescTag) == nullptr || !layouts_ok(a, b, c, d) || as(pref, kPrefTag) == nullptr ||
      requested <= 0 || results == nullptr || returned == nullptr) {
    return kInvalidValue;
  }
  fill_result(&results[0]);
  *returned = 1;
  return kSuccess;
}

CUBLASLT_API cublasStatus_t cublasLtMatmulAlgoGetIds(cublasLtHandle_t handle, int, int, int, int, int, int,
                                                     int requested, int* ids, int* returned) {
  sim::count_call("cublasLtMatmulAlgoGetIds", false);
  if (!is_handle(handle)) return kNotInitialized;
  if (requested <= 0 || ids == nullptr || returned == nullptr) return kInvalidValue;
  ids[0] = 0;
  *returned = 1;
  return kSuccess;
}

CUBLASLT_API cublasStatus_t cublasLtMatmulAlgoInit(cublasLtHandle_t handle, int, int, int, int, int, int,
                                                   int algoId, Algo* algo) {
  sim::count_call("cublasLtMatmulAlgoInit", false);
  if (!is_handle(handle)) return kNotInitialized;
  if (algo == nullptr || algoId != 0) return kInvalidValue;  // GetIds lists only 0
  init_algo(algo, algoId);
  return kSuccess;
}

CUBLASLT_API cublasStatus_t cublasLtMatmulAlgoCheck(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                                    cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                                    cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                                    const Algo* algo, HeuristicResult* result) {
  sim::count_call("cublasLtMatmulAlgoCheck", false);
  if (!is_handle(handle)) return kNotInitialized;
  if (as(desc, kDescTag) == nullptr || !layouts_ok(a, b, c, d) || algo == nullptr || result == nullptr ||
      !algo_ok(algo)) {
    return kInvalidValue;
  }
  Algo copy = *algo;
  fill_result(result);
  result->algo = copy;
  return kSuccess;
}

CUBLASLT_API cublasStatus_t cublasLtMatmulAlgoConfigSetAttribute(Algo* algo, int attr, const void* buf,
                                                                 std::size_t size) {
  sim::count_call("cublasLtMatmulAlgoConfigSetAttribute", false);
  if (algo == nullptr || buf == nullptr || attr < 0 || attr >= kAlgoConfigAttrs || size == 0 || size > 4) {
    return kInvalidValue;
  }
  std::uint32_t v = 0;
  std::memcpy(&v, buf, size);
  algo_words(algo)[attr] = v;
  return kSuccess;
}

CUBLASLT_API cublasStatus_t cublasLtMatmulAlgoConfigGetAttribute(const Algo* algo, int attr, void* buf,
                                                                 std::size_t size, std::size_t* written) {
  sim::count_call("cublasLtMatmulAlgoConfigGetAttribute", false);
  if (algo == nullptr || attr < 0 || attr >= kAlgoConfigAttrs) return kInvalidValue;
  // CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID and _CLUSTER_SHAPE_ID are uint16, the rest 32 bits.
  const std::size_t need = attr >= 7 ? 2 : 4;
  if (size == 0) {
    if (written == nullptr) return kInvalidValue;
    *written = need;
    return kSuccess;
  }
  if (buf == nullptr || size < need) return kInvalidValue;
  std::uint32_t words[16];
  std::memcpy(words, algo->data, sizeof words);
  std::memcpy(buf, &words[attr], need);  // little-endian: the low bytes
  if (written != nullptr) *written = need;
  return kSuccess;
}

// =====================================================================================
// Matmul
// =====================================================================================

CUBLASLT_API cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha,
                                           const void*, cublasLtMatrixLayout_t adesc, const void*,
                                           cublasLtMatrixLayout_t bdesc, const void* beta, const void*,
                                           cublasLtMatrixLayout_t cdesc, void*, cublasLtMatrixLayout_t ddesc,
                                           const Algo* algo, void* workspace, std::size_t workspace_size,
                                           cudaStream_t stream) {
  sim::count_call("cublasLtMatmul", false);
  if (!is_handle(handle)) return kNotInitialized;
  if (as(desc, kDescTag) == nullptr || !layouts_ok(adesc, bdesc, cdesc, ddesc) || alpha == nullptr ||
      beta == nullptr || (workspace == nullptr && workspace_size != 0) || (algo != nullptr && !algo_ok(algo))) {
    return kInvalidValue;
  }
  sim::Status s = sim::stream_enqueue(static_cast<sim::Stream*>(stream));
  return s == sim::Status::ok ? kSuccess : simblas::kExecutionFailed;
}
