// The caching block-pool allocator for one device.
//
// Note [Locking rule]: a pool has two locks, taken in this order.
//   * Impl::grow_mu, a blocking std::mutex, is held across the backend calls that grow
//     or release the pool's device memory (allocate, deallocate, VMM map and unmap, and
//     the mem_info pre-check before a growth) and across the OOM retry: these calls can
//     take milliseconds, and a thread that waits for them parks in the kernel
//     (Note [Growth and release protocol] in csrc/pool/device_pool.cpp). Two releases in
//     empty_cache wait for a stream's kernels and hold neither lock
//     (Note [Shrink outside grow_mu]). check_invariants holds grow_mu to keep growth and
//     release out of its walk.
//   * Impl::mu, a spin lock (Note [Spin mutex]), guards the pool's state: blocks, free
//     indexes, the pointer map, stats, the event FIFOs, the trace ring. Every public method
//     that reads or changes that state takes it, and mu is not recursive, so no public
//     method is called with it held; private methods (suffix _locked, or documented "lock
//     held") assume it is held. mu is never held across a backend call that can block:
//     those above run with mu dropped, and so do mem_info for set_memory_fraction, event
//     synchronize (record_stream events are taken out of the FIFOs under mu first) and the
//     context hook (it may take the GIL). Under mu run cache hits, frees and their
//     bookkeeping, event record / query / release (they do not block), and the walks over
//     every block or segment (check_invariants, segments, live_blocks, a release's scan
//     for free segments, a foreign pointer's lookup): linear or O(n log n), and a cache
//     hit waits for them.
// A thread waits for grow_mu only with mu dropped (malloc try_locks it with mu held), and
// waits for another thread's VMM claim or shrink on vmm_cv, which drops mu.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "pypool/backend.h"
#include "pypool/config.h"
#include "pypool/size_policy.h"
#include "pypool/spin_mutex.h"
#include "pypool/stats.h"

namespace pypool {

namespace detail {
struct Block;
class FreeIndex;
struct DeviceRoom;
}  // namespace detail

// Thrown when a request cannot be met after release-and-retry. The message is the full
// report (sizes, fragmentation, what to try). The C ABI lets it through from
// pypool_malloc, torch's entry, only (with std::invalid_argument for a bad device index);
// pypool_try_malloc returns an error code instead (c_api.h).
struct OutOfMemoryError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Double free, foreign pointer, record_stream on a pointer not allocated here.
struct InvalidPointerError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
// check_invariants() found a broken structure.
struct InvariantError : std::logic_error {
  using std::logic_error::logic_error;
};

enum class BlockState : std::uint8_t { kFree = 0, kAllocated = 1, kPendingFree = 2 };

struct BlockInfo {
  std::uintptr_t address;
  std::size_t size;
  std::size_t requested;  // 0 for free blocks
  BlockState state;
  Stream stream;
  std::uint64_t seq;      // allocation sequence number (0 for free blocks)
  std::uint64_t context;  // context id given by the context hook (0 = none)
  double time_us;         // allocation time (steady clock)
  // The request this block last served (free blocks too; Note [Last requested size]).
  std::size_t last_requested;
};

struct SegmentInfo {
  std::uintptr_t address;
  std::size_t size;         // reserved (mapped) bytes
  PoolKind kind;
  Stream stream;
  bool expandable;
  std::size_t reserved_va;  // virtual range for expandable segments, else == size
  std::vector<BlockInfo> blocks;
};

// Trace entry kinds, named as torch's memory snapshot "action" strings.
enum class TraceAction : std::uint8_t {
  kAlloc = 0,
  kFreeRequested,
  kFreeCompleted,
  kSegmentAlloc,
  kSegmentFree,
  kSegmentMap,
  kSegmentUnmap,
  kOom,
};
const char* trace_action_name(TraceAction a) noexcept;

// Note [Trace metadata]: torch's _set_memory_metadata labels every trace entry a thread
// makes while the label is set (thread-local). The label is an id (0: none) that the
// binding interns; record() copies the recording thread's id into each entry. Ids are
// never reused, so an entry's label stays right however many are set later; past 2**20
// distinct labels (the table's cap) new labels share one id whose label says it was not
// kept, with a RuntimeWarning once: setting a label never raises.
inline thread_local std::uint32_t t_trace_metadata = 0;

struct TraceEntry {
  TraceAction action;
  std::uint32_t metadata;  // Note [Trace metadata]
  std::uintptr_t addr;
  std::size_t size;
  Stream stream;
  double time_us;
  std::uint64_t context;
  std::uint64_t seq;
};

// Called on each allocation while context capture is on, before the pool lock is taken
// (a Python hook takes the GIL); returns an id stored with the block and trace entries.
using ContextHook = std::uint64_t (*)(void* user);

class DevicePool {
 public:
  DevicePool(const Config& cfg, std::shared_ptr<Backend> backend, int device = 0);
  ~DevicePool();
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  // size == 0 returns nullptr and records nothing. Throws OutOfMemoryError, also for a
  // size beyond policy::kMaxRequest (beyond any device).
  void* malloc(std::size_t size, Stream stream = 0);
  // nullptr is a no-op. Throws InvalidPointerError for a pointer that is not a live
  // allocation of this pool; the pool is left unchanged.
  void free(void* p);
  // The block stays out of reuse until work queued on `stream` before its free is done.
  void record_stream(void* p, Stream stream);
  // record_stream for a pointer that may belong to another device's pool (the C ABI is
  // not told the device): false, with nothing changed and nothing thrown, when p lies
  // in none of this pool's segments; throws InvalidPointerError as record_stream does
  // when it lies in one but is not a live allocation.
  bool record_stream_if_owned(void* p, Stream stream);
  // Waits for pending cross-stream frees, then releases cached segments that hold no
  // live block (down to release_threshold), like torch.cuda.empty_cache().
  void empty_cache();
  // The same, ignoring release_threshold.
  void release_all_cached();

  Stats stats() const;
  void reset_peak_stats();
  void reset_accumulated_stats();
  std::vector<SegmentInfo> segments() const;
  // Live allocations with seq >= min_seq (leak tracking).
  std::vector<BlockInfo> live_blocks(std::uint64_t min_seq = 0) const;
  // Throws InvariantError describing the first violation found.
  void check_invariants() const;

  // Cap = min(max_pool_size, fraction * device total); fraction <= 0 clears it.
  void set_memory_fraction(double fraction);
  // The fraction set last (0: none), for torch.cuda.get_per_process_memory_fraction.
  double memory_fraction() const;
  std::size_t cap() const;
  std::uint64_t next_seq() const;
  // A copy: the live fields may change (update_config).
  Config config() const;
  // Takes the fields of Note [Live settings] (pypool/config.h) from `next` while the pool
  // is in use. Throws std::invalid_argument, with the pool unchanged, when `next` fails
  // validation or differs in a field that is fixed for the pool's life (named).
  void update_config(const Config& next);
  // The check update_config makes, without changing anything.
  void check_update(const Config& next) const;
  int device() const noexcept { return device_; }
  Backend& backend() noexcept { return *backend_; }
  std::size_t size_of(void* p) const;  // block size of a live allocation, or throws

  // Tracing / context capture (Note [Trace ring]).
  void set_history(bool enabled, std::size_t max_entries);
  std::vector<TraceEntry> history() const;
  void set_context_hook(ContextHook hook, void* user);
  void set_capture_context(bool on);
  // Frees and empty_cache call the context hook too (Note [Free stacks]).
  void set_capture_free_context(bool on);

  // Opaque implementation (block bookkeeping, free index, pointer map).
  struct Impl;

 private:
  // Waits for pending record_stream events with mu released (lk is relocked before
  // it returns) and frees their blocks.
  void sync_pending_locked(std::unique_lock<SpinMutex>& lk);
  void release_cached(bool respect_threshold);
  // malloc after the bounded search missed: the fallback chain. Returns a block taken out
  // of its free index, or throws OutOfMemoryError.
  detail::Block* fallback_locked(std::unique_lock<SpinMutex>& lk, detail::FreeIndex* idx,
                                 std::size_t size, std::size_t rounded, Stream stream,
                                 std::uint64_t context);
  [[noreturn]] void throw_bad_pointer_locked(const char* op, std::uintptr_t addr) const;
  // nullptr when the cap or the device refuses; `room` says what the device had
  // (Note [Device pre-check]).
  detail::Block* grow_locked(std::unique_lock<SpinMutex>& lk, detail::FreeIndex* idx,
                             std::size_t rounded, detail::DeviceRoom& room);
  // Whether reserved + `growth` passes reclaim_threshold of the pool's room (Note
  // [Reclaim under pressure]); may drop and retake lk to ask the device, into `room`
  // (then marked fresh for the growth that follows).
  bool reclaim_pressure_locked(std::unique_lock<SpinMutex>& lk, std::size_t growth,
                               detail::DeviceRoom& room);
  // reclaim > 0: release only `only`'s fully free large segments, all of them if they
  // cover `reclaim` bytes, or none if they cannot (Note [Reclaim under pressure]).
  // shrink_vmm = false: fixed segments only; the caller shrinks expandable segments
  // itself, without grow_mu (Note [Shrink outside grow_mu]).
  void release_cached_locked(std::unique_lock<SpinMutex>& lk, bool respect_threshold,
                             std::size_t reclaim = 0, const detail::FreeIndex* only = nullptr,
                             bool shrink_vmm = true);

  Config cfg_;
  std::shared_ptr<Backend> backend_;
  int device_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pypool
