// The pool lock.
//
// Note [Spin mutex]: the pool lock (Impl::mu) is taken by every malloc and free, and the
// usual critical section, a cache hit or a free, is a few hundred instructions that never
// wait for the device: backend calls that can block run with it dropped (Note [Locking
// rule]). So a test-and-test-and-set lock beats std::mutex on the hot path: one atomic
// exchange to lock, a plain release store to unlock, no call into libc. Under contention
// it spins briefly, then yields, which also covers the rare long sections (the walks of
// check_invariants and segments). Waits that can last, for a growth or release in flight,
// are on the blocking grow_mu instead, where waiters park.
#pragma once

#include <atomic>
#include <thread>

namespace pypool {

class SpinMutex {
 public:
  void lock() noexcept {
    while (locked_.exchange(true, std::memory_order_acquire)) {
      int spins = 0;
      while (locked_.load(std::memory_order_relaxed)) {
        if (++spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
          __builtin_ia32_pause();
#endif
        } else {
          std::this_thread::yield();
        }
      }
    }
  }
  bool try_lock() noexcept { return !locked_.exchange(true, std::memory_order_acquire); }
  void unlock() noexcept { locked_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> locked_{false};
};

}  // namespace pypool
