// What the cuBLAS (cublas.cpp) and cuBLASLt (cublaslt.cpp) stand-ins share: status codes,
// their names, the version they claim and the tags that identify their handles.
//
// The toolkit here ships no cuBLAS headers (the nvidia-cublas wheel has them), so the
// few values needed are written out below, from cublas_api.h / library_types.h of cuBLAS
// 13.1; they are part of the C ABI and do not change between releases.
#pragma once

#include <cstdint>

namespace simblas {

// cublasStatus_t
constexpr int kSuccess = 0;
constexpr int kNotInitialized = 1;
constexpr int kAllocFailed = 3;
constexpr int kInvalidValue = 7;
constexpr int kArchMismatch = 8;
constexpr int kMappingError = 11;
constexpr int kExecutionFailed = 13;
constexpr int kInternalError = 14;
constexpr int kNotSupported = 15;
constexpr int kLicenseError = 16;

// The release the stand-ins answer for (cublasGetVersion, cublasLtGetVersion,
// *GetProperty): the cuBLAS that torch 2.14's CUDA 13 wheels install, 13.1.1.
constexpr int kMajor = 13;
constexpr int kMinor = 1;
constexpr int kPatch = 1;
constexpr int kVersion = kMajor * 10000 + kMinor * 100 + kPatch;  // CUBLAS_VERSION
constexpr int kCudartVersion = 13000;                              // built against CUDA 13.0

// libraryPropertyType
constexpr int kMajorVersion = 0;
constexpr int kMinorVersion = 1;
constexpr int kPatchLevel = 2;

// The first member of every handle the stand-ins hand out. torch passes its cublasHandle_t
// to the cuBLASLt calls as a cublasLtHandle_t (as the real libraries allow: a cuBLAS
// handle is a valid cuBLASLt handle), so cuBLASLt accepts either tag.
constexpr std::uint32_t kCublasHandleTag = 0x5053424cu;    // "PSBL"
constexpr std::uint32_t kCublasLtHandleTag = 0x5053424du;  // "PSBM"

inline const char* status_name(int s) {
  switch (s) {
    case kSuccess: return "CUBLAS_STATUS_SUCCESS";
    case kNotInitialized: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case kAllocFailed: return "CUBLAS_STATUS_ALLOC_FAILED";
    case kInvalidValue: return "CUBLAS_STATUS_INVALID_VALUE";
    case kArchMismatch: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case kMappingError: return "CUBLAS_STATUS_MAPPING_ERROR";
    case kExecutionFailed: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case kInternalError: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case kNotSupported: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case kLicenseError: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

inline const char* status_string(int s) {
  switch (s) {
    case kSuccess: return "success";
    case kNotInitialized: return "the library was not initialized";
    case kAllocFailed: return "the resource allocation failed";
    case kInvalidValue: return "an invalid numeric value was used as an argument";
    case kArchMismatch: return "an absent device architectural feature is required";
    case kMappingError: return "an access to GPU memory space failed";
    case kExecutionFailed: return "the GPU program failed to execute";
    case kInternalError: return "an internal operation failed";
    case kNotSupported: return "the requested functionality is not supported";
    case kLicenseError: return "error detected trying to check the license";
    default: return "unknown error";
  }
}

inline int version_property(int type, int* value) {
  if (value == nullptr) return kInvalidValue;
  switch (type) {
    case kMajorVersion: *value = kMajor; return kSuccess;
    case kMinorVersion: *value = kMinor; return kSuccess;
    case kPatchLevel: *value = kPatch; return kSuccess;
    default: return kInvalidValue;
  }
}

}  // namespace simblas
