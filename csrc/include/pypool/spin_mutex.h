// The pool lock.
//
// Note [Spin mutex]: the pool's critical sections are a few hundred instructions and
// never include a blocking call (Note [Locking rule]), so a test-and-test-and-set lock
// beats std::mutex on the hot path: one atomic exchange to lock, a plain release store
// to unlock, no call into libc. Under contention it spins briefly, then yields.
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
