// Compile-time check that cuda_driver.h's declarations match the CUDA toolkit's <cuda.h>
// (Note [Driver declarations without the toolkit]). Built only when CMake finds the
// toolkit; it emits no code. A mismatch is a compile error naming the function, constant
// or struct.
#include <cuda.h>

#include <cstddef>
#include <type_traits>

#include "cuda_driver.h"

namespace {

namespace ours = pypool::cuda;

// Map a <cuda.h> type to the type cuda_driver.h uses in its place.
template <typename T> struct Ours { using type = T; };
template <typename T> struct Ours<T*> { using type = typename Ours<T>::type*; };
template <typename T> struct Ours<const T> { using type = const typename Ours<T>::type; };
template <> struct Ours<::CUresult> { using type = ours::CUresult; };
template <> struct Ours<::CUctx_st> { using type = ours::CUctx_st; };
template <> struct Ours<::CUevent_st> { using type = ours::CUevent_st; };
template <> struct Ours<::CUstream_st> { using type = ours::CUstream_st; };
template <> struct Ours<::CUdevice_attribute> { using type = ours::CUdevice_attribute; };
template <> struct Ours<::CUmemAllocationProp> { using type = ours::CUmemAllocationProp; };
template <> struct Ours<::CUmemAccessDesc> { using type = ours::CUmemAccessDesc; };
template <> struct Ours<::CUmemAllocationGranularity_flags> {
  using type = ours::CUmemAllocationGranularity_flags;
};
template <typename R, typename... A> struct Ours<R (*)(A...)> {
  using type = typename Ours<R>::type (*)(typename Ours<A>::type...);
};

#define PYPOOL_CHECK_SIGNATURE(field, symbol, params)                                           \
  static_assert(std::is_same<Ours<decltype(&::symbol)>::type, decltype(ours::Driver::field)>::value, \
                "cuda_driver.h: the signature of " #symbol " differs from <cuda.h>");
PYPOOL_CUDA_DRIVER_API(PYPOOL_CHECK_SIGNATURE)
#undef PYPOOL_CHECK_SIGNATURE

#define PYPOOL_CHECK_CONSTANT(name) \
  static_assert(static_cast<long>(ours::name) == static_cast<long>(::name), "cuda_driver.h: " #name " differs from <cuda.h>");
PYPOOL_CHECK_CONSTANT(CUDA_SUCCESS)
PYPOOL_CHECK_CONSTANT(CUDA_ERROR_OUT_OF_MEMORY)
PYPOOL_CHECK_CONSTANT(CUDA_ERROR_DEINITIALIZED)
PYPOOL_CHECK_CONSTANT(CUDA_ERROR_NO_DEVICE)
PYPOOL_CHECK_CONSTANT(CUDA_ERROR_NOT_READY)
PYPOOL_CHECK_CONSTANT(CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED)
PYPOOL_CHECK_CONSTANT(CU_EVENT_DISABLE_TIMING)
PYPOOL_CHECK_CONSTANT(CU_MEM_ALLOCATION_TYPE_PINNED)
PYPOOL_CHECK_CONSTANT(CU_MEM_HANDLE_TYPE_NONE)
PYPOOL_CHECK_CONSTANT(CU_MEM_LOCATION_TYPE_DEVICE)
PYPOOL_CHECK_CONSTANT(CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
PYPOOL_CHECK_CONSTANT(CU_MEM_ALLOC_GRANULARITY_MINIMUM)
#undef PYPOOL_CHECK_CONSTANT

#define PYPOOL_CHECK_SAME_SIZE(a, b) \
  static_assert(sizeof(a) == sizeof(b) && alignof(a) == alignof(b), "cuda_driver.h: " #b " differs from <cuda.h>");
PYPOOL_CHECK_SAME_SIZE(::CUresult, ours::CUresult)
PYPOOL_CHECK_SAME_SIZE(::CUdevice, ours::CUdevice)
PYPOOL_CHECK_SAME_SIZE(::CUdeviceptr, ours::CUdeviceptr)
PYPOOL_CHECK_SAME_SIZE(::CUmemGenericAllocationHandle, ours::CUmemGenericAllocationHandle)
PYPOOL_CHECK_SAME_SIZE(::CUmemLocation, ours::CUmemLocation)
PYPOOL_CHECK_SAME_SIZE(::CUmemAllocationProp, ours::CUmemAllocationProp)
PYPOOL_CHECK_SAME_SIZE(::CUmemAccessDesc, ours::CUmemAccessDesc)
#undef PYPOOL_CHECK_SAME_SIZE

#define PYPOOL_CHECK_OFFSET(type, member)                                                      \
  static_assert(offsetof(::type, member) == offsetof(ours::type, member) &&                   \
                    sizeof(::type::member) == sizeof(ours::type::member),                      \
                "cuda_driver.h: " #type "." #member " differs from <cuda.h>");
PYPOOL_CHECK_OFFSET(CUmemLocation, type)
PYPOOL_CHECK_OFFSET(CUmemLocation, id)
PYPOOL_CHECK_OFFSET(CUmemAllocationProp, type)
PYPOOL_CHECK_OFFSET(CUmemAllocationProp, requestedHandleTypes)
PYPOOL_CHECK_OFFSET(CUmemAllocationProp, location)
PYPOOL_CHECK_OFFSET(CUmemAllocationProp, win32HandleMetaData)
PYPOOL_CHECK_OFFSET(CUmemAllocationProp, allocFlags)
PYPOOL_CHECK_OFFSET(CUmemAccessDesc, location)
PYPOOL_CHECK_OFFSET(CUmemAccessDesc, flags)
#undef PYPOOL_CHECK_OFFSET

}  // namespace
