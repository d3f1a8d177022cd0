// The simulated device's state (see Note [Simulated device] in sim_state.h).
//
// Locking: one mutex for memory (plain allocations, reservations, physical handles) and
// one for streams and events. Neither is held across anything that can block for long;
// mmap/munmap of host memory happen under the memory mutex, which is fine because the
// simulation has no other slow calls. Capacity is an atomic counter so that
// device_used() and cudaMemGetInfo never take a lock.
#include "sim_state.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#define SIM_EXPORT __attribute__((visibility("default")))

namespace sim {
namespace {

constexpr int kMaxDevices = 16;
constexpr std::uint32_t kStreamMagic = 0x5354524du;  // "STRM"
constexpr std::uint32_t kEventMagic = 0x45564e54u;   // "EVNT"

std::uint64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// "80GiB", "512MiB", "1.5G", "40GB", "1073741824" -> bytes; 0 on a parse error. The
// units are pypool's (pypool.config.parse_size): KiB/MiB/GiB/TiB and bare K/M/G/T are
// powers of 1024, KB/MB/GB/TB powers of 1000, so PYPOOL_SIM_MEMORY=40GB means what
// `--memory 40GB` means.
std::uint64_t parse_bytes(const char* s) {
  if (s == nullptr || *s == 0) return 0;
  char* end = nullptr;
  double v = std::strtod(s, &end);
  if (end == s || !(v >= 0)) return 0;  // also NaN
  while (*end == ' ') ++end;
  int power = 0;
  switch (*end) {
    case 'k': case 'K': power = 1; ++end; break;
    case 'm': case 'M': power = 2; ++end; break;
    case 'g': case 'G': power = 3; ++end; break;
    case 't': case 'T': power = 4; ++end; break;
    default: break;
  }
  double base = 1024.0;
  if (power > 0 && (*end == 'i' || *end == 'I')) {
    ++end;
    if (*end != 'B' && *end != 'b') return 0;  // "Ki" alone is not a unit
    ++end;
  } else if (*end == 'B' || *end == 'b') {
    ++end;
    base = 1000.0;  // KB, MB, ... (a bare "B" has power 0: bytes)
  }
  while (*end == ' ') ++end;
  if (*end != 0) return 0;
  double mult = 1;
  for (int i = 0; i < power; ++i) mult *= base;
  // 2^64 and past (and infinity) do not fit: a parse error, not a wrapped size.
  if (!(v * mult < 18446744073709551616.0)) return 0;
  return static_cast<std::uint64_t>(v * mult);
}

std::uint64_t round_up(std::uint64_t n, std::uint64_t m) { return (n + m - 1) / m * m; }

struct Item {
  std::uint64_t seq;
  std::uint64_t deadline_ns;  // 0: no delay
  Stream* dep;                // completes only after dep->completed >= dep_seq
  std::uint64_t dep_seq;
};

}  // namespace

struct Stream {
  std::uint32_t magic = kStreamMagic;
  int dev = 0;
  unsigned flags = 0;
  int priority = 0;
  bool held = false;
  bool destroyed = false;
  std::uint64_t submitted = 0;
  std::uint64_t completed = 0;
  std::deque<Item> pending;
};

struct Event {
  std::uint32_t magic = kEventMagic;
  unsigned flags = 0;
  Stream* stream = nullptr;  // null until recorded
  std::uint64_t seq = 0;
  std::uint64_t record_ns = 0;
};

namespace {

struct Device {
  std::atomic<std::uint64_t> total{0};  // pypoolsim_set_memory may change it at any time
  std::atomic<std::uint64_t> used{0};
  std::atomic<std::uint64_t> peak{0};
  Stream default_stream;
};

struct Config {
  std::atomic<int> count{1};
  Device devices[kMaxDevices];
  std::uint64_t granularity = 2u << 20;
  bool quiet = false;
  bool trace = false;
  std::atomic<std::int64_t> delay_ns{0};
  std::atomic<bool> any_alloc{false};
  std::atomic<int> fail_next{0};

  Config() {
    if (const char* s = std::getenv("PYPOOL_SIM_DEVICES")) {
      char* end = nullptr;
      const long n = std::strtol(s, &end, 10);  // "2abc" is not 2
      if (end != s && *end == 0 && n >= 1 && n <= kMaxDevices) count.store(static_cast<int>(n));
      else std::fprintf(stderr, "pypool-simdevice: PYPOOL_SIM_DEVICES=%s is not 1..%d; using 1\n", s, kMaxDevices);
    }
    std::uint64_t mem = 80ull << 30;
    if (const char* s = std::getenv("PYPOOL_SIM_MEMORY")) {
      std::uint64_t v = parse_bytes(s);
      if (v > 0) mem = v;
      else std::fprintf(stderr, "pypool-simdevice: PYPOOL_SIM_MEMORY=%s is not a size; using 80GiB\n", s);
    }
    if (const char* s = std::getenv("PYPOOL_SIM_GRANULARITY")) {
      std::uint64_t g = parse_bytes(s);
      if (g >= (64u << 10) && (g & (g - 1)) == 0) granularity = g;
      else std::fprintf(stderr, "pypool-simdevice: PYPOOL_SIM_GRANULARITY=%s is not a power of two >= 64KiB\n", s);
    }
    for (int i = 0; i < kMaxDevices; ++i) {
      devices[i].total = mem;
      devices[i].default_stream.dev = i;
      std::string key = "PYPOOL_SIM_MEMORY_" + std::to_string(i);
      if (const char* s = std::getenv(key.c_str())) {
        std::uint64_t v = parse_bytes(s);
        if (v > 0) devices[i].total = v;
        else std::fprintf(stderr, "pypool-simdevice: %s=%s is not a size; ignored\n", key.c_str(), s);
      }
    }
    if (const char* s = std::getenv("PYPOOL_SIM_EVENT_DELAY_US")) {
      char* end = nullptr;
      const long long us = std::strtoll(s, &end, 10);
      if (end != s && *end == 0 && us >= 0 && us <= INT64_MAX / 1000) delay_ns = us * 1000;
      else std::fprintf(stderr, "pypool-simdevice: PYPOOL_SIM_EVENT_DELAY_US=%s is not 0..%lld; using 0\n", s,
                        static_cast<long long>(INT64_MAX / 1000));
    }
    if (const char* s = std::getenv("PYPOOL_SIM_QUIET")) quiet = std::strcmp(s, "1") == 0;
    if (const char* s = std::getenv("PYPOOL_SIM_TRACE")) trace = std::strcmp(s, "1") == 0;
  }
};

Config& cfg() {
  static Config* c = new Config();  // never destroyed: atexit order vs. torch's teardown
  return *c;
}

thread_local int tl_device = 0;

// ---- capacity ----

bool take_capacity(int dev, std::uint64_t bytes) {
  Config& c = cfg();
  c.any_alloc.store(true, std::memory_order_relaxed);
  int f = c.fail_next.load();
  while (f > 0) {
    if (c.fail_next.compare_exchange_weak(f, f - 1)) return false;
  }
  Device& d = c.devices[dev];
  std::uint64_t cur = d.used.load();
  const std::uint64_t total = d.total.load();
  do {
    if (bytes > total || cur > total - bytes) return false;
  } while (!d.used.compare_exchange_weak(cur, cur + bytes));
  std::uint64_t now = cur + bytes, pk = d.peak.load();
  while (now > pk && !d.peak.compare_exchange_weak(pk, now)) {
  }
  return true;
}

void give_capacity(int dev, std::uint64_t bytes) { cfg().devices[dev].used.fetch_sub(bytes); }

// ---- memory bookkeeping ----

struct Alloc {
  std::size_t size;      // as requested
  std::size_t mapped;    // mmap length
  std::uint64_t charged; // bytes counted against the device (0 for host memory)
  int dev;               // -1: pinned host memory
};

struct PhysHandle {
  int dev;
  std::size_t size;
  std::size_t mapped_pages = 0;
  int refs = 1;  // cuMemCreate + cuMemRetainAllocationHandle - cuMemRelease
};

struct Reservation {
  std::size_t size;
  std::vector<std::uint64_t> pages;  // handle mapped at each granule, 0 = none
  std::vector<std::uint8_t> starts;  // 1 where a cuMemMap's range begins
};

std::mutex mem_mu;
std::map<std::uintptr_t, Alloc> allocs;              // base -> allocation
std::map<std::uintptr_t, Reservation> reservations;  // base -> reservation
std::unordered_map<std::uint64_t, PhysHandle> handles;
std::uint64_t next_handle = 1;

template <class M>
typename M::iterator containing(M& m, std::uintptr_t p, std::size_t (*len)(const typename M::mapped_type&)) {
  auto it = m.upper_bound(p);
  if (it == m.begin()) return m.end();
  --it;
  if (p >= it->first + len(it->second)) return m.end();
  return it;
}
std::size_t alloc_len(const Alloc& a) { return std::max<std::size_t>(a.size, 1); }
std::size_t res_len(const Reservation& r) { return r.size; }

void release_handle_locked(std::unordered_map<std::uint64_t, PhysHandle>::iterator it) {
  if (it->second.refs <= 0 && it->second.mapped_pages == 0) {
    give_capacity(it->second.dev, it->second.size);
    handles.erase(it);
  }
}

// ---- streams ----

std::mutex st_mu;
// Never freed, and never destroyed at exit: events may outlive their stream, and torch
// still queries streams from its own exit handlers.
std::vector<Stream*>& all_streams_list() {
  static auto* v = new std::vector<Stream*>();
  return *v;
}
bool hold_all_flag = false;

bool valid_dev(int dev) { return dev >= 0 && dev < cfg().count.load(std::memory_order_relaxed); }

Stream* resolve(Stream* s) {
  auto v = reinterpret_cast<std::uintptr_t>(s);
  if (v <= 2) return &cfg().devices[tl_device].default_stream;
  return s;
}

bool ok_stream(Stream* s) { return s != nullptr && s->magic == kStreamMagic && !s->destroyed; }

bool dep_done(const Item& it) { return it.dep == nullptr || it.dep->completed >= it.dep_seq; }

// Completes pending items that are ready, in order. st_mu held.
void advance(Stream* s) {
  if (s->pending.empty()) return;
  if (s->held || hold_all_flag) return;
  std::uint64_t t = 0;
  while (!s->pending.empty()) {
    Item& it = s->pending.front();
    if (it.deadline_ns != 0) {
      if (t == 0) t = now_ns();
      if (t < it.deadline_ns) break;
    }
    if (!dep_done(it)) {
      advance(it.dep);
      if (!dep_done(it)) break;
    }
    s->completed = it.seq;
    s->pending.pop_front();
  }
}

// Completes everything on `s` up to `seq` (all if seq == 0), dependencies first:
// what a synchronize does on real hardware by waiting. st_mu held.
void force(Stream* s, std::uint64_t seq, int depth = 0) {
  if (depth > 64) return;
  while (!s->pending.empty() && (seq == 0 || s->pending.front().seq <= seq)) {
    Item& it = s->pending.front();
    if (it.dep != nullptr && it.dep->completed < it.dep_seq) force(it.dep, it.dep_seq, depth + 1);
    s->completed = it.seq;
    s->pending.pop_front();
  }
}

// Enqueues one item on `s`. `dep`/`dep_seq`: the item completes only after dep has
// completed that far (a cudaStreamWaitEvent). `timed`: the item takes the configured
// event delay (work does; a wait takes no time of its own). st_mu held.
std::uint64_t enqueue_locked(Stream* s, Stream* dep = nullptr, std::uint64_t dep_seq = 0, bool timed = true) {
  Config& c = cfg();
  std::uint64_t seq = ++s->submitted;
  std::int64_t delay = timed ? c.delay_ns.load(std::memory_order_relaxed) : 0;
  Item it{seq, delay > 0 ? now_ns() + static_cast<std::uint64_t>(delay) : 0, dep, dep_seq};
  bool immediate = it.deadline_ns == 0 && !s->held && !hold_all_flag && s->pending.empty() && dep_done(it);
  if (immediate) {
    s->completed = seq;
  } else {
    s->pending.push_back(it);
  }
  return seq;
}

// ---- counters ----
// Note [Per-thread call counters]: torch calls cudaGetDevice and friends on every
// tensor allocation, and the simulation's host overhead is measured, so a call count is
// a relaxed store to a table owned by the calling thread (no shared cache line, no
// lock). Readers sum the tables of every thread that ever counted.
//
// A slot is claimed by its owner thread alone: syncs first, then name with a release
// store, so a reader that sees the name (acquire) sees the flag. Only the owner writes
// `n`; a reset does not touch it but moves `base` up to it, so a reset racing with a
// count loses neither (a store of 0 could be overwritten by the owner's n + 1).

struct Counter {
  std::atomic<const char*> name{nullptr};  // string literal from the caller
  std::atomic<bool> syncs{false};
  std::atomic<std::uint64_t> n{0};     // calls since the thread started (owner writes)
  std::atomic<std::uint64_t> base{0};  // n at the last reset (reset writes, under tables_mu)
  std::uint64_t value() const {
    return n.load(std::memory_order_relaxed) - base.load(std::memory_order_relaxed);
  }
};
constexpr int kTableSize = 1024;  // > the number of entry points, power of two
struct CounterTable {
  Counter slots[kTableSize];
  std::atomic<int> used{0};
};
std::mutex tables_mu;
std::vector<CounterTable*>& tables() {
  static auto* t = new std::vector<CounterTable*>();
  return *t;
}
thread_local CounterTable* tl_table = nullptr;

// A table outlives its thread (its counts still count) and is handed to the next new
// thread, which goes on counting into it: totals are sums by name, so nothing changes
// for readers, and a program that starts and ends threads all the time holds as many
// tables as it ever had threads at once (not one per thread it ever started, 32 KiB
// each). The hand-over goes through tables_mu, so each table has one writer at a time.
// A pthread key's destructor does it (it runs at thread exit, after C++ thread_local
// destructors, and again if one of those counted a call).
std::vector<CounterTable*>& idle_tables() {
  static auto* t = new std::vector<CounterTable*>();
  return *t;
}
pthread_key_t table_key;
void retire_table(void* t) {
  tl_table = nullptr;
  std::lock_guard<std::mutex> g(tables_mu);
  idle_tables().push_back(static_cast<CounterTable*>(t));
}
bool table_key_made = [] { return pthread_key_create(&table_key, retire_table) == 0; }();

CounterTable* my_table() {
  if (tl_table == nullptr) {
    {
      std::lock_guard<std::mutex> g(tables_mu);
      if (!idle_tables().empty()) {
        tl_table = idle_tables().back();
        idle_tables().pop_back();
      } else {
        tl_table = new CounterTable();
        tables().push_back(tl_table);
      }
    }
    if (table_key_made) pthread_setspecific(table_key, tl_table);
  }
  return tl_table;
}

template <class F>
void for_each_counter(F f) {
  std::lock_guard<std::mutex> g(tables_mu);
  for (CounterTable* t : tables()) {
    for (Counter& c : t->slots) {
      const char* name = c.name.load(std::memory_order_acquire);
      if (name != nullptr) f(c, name);
    }
  }
}

}  // namespace

// ---- configuration ----

int device_count() { return cfg().count.load(std::memory_order_relaxed); }
std::uint64_t device_total(int dev) { return valid_dev(dev) ? cfg().devices[dev].total.load() : 0; }
std::uint64_t device_used(int dev) { return valid_dev(dev) ? cfg().devices[dev].used.load() : 0; }
std::uint64_t granularity() { return cfg().granularity; }
bool quiet() { return cfg().quiet; }

int current_device() { return tl_device; }
Status set_current_device(int dev) {
  if (!valid_dev(dev)) return Status::invalid_device;
  tl_device = dev;
  return Status::ok;
}

// ---- plain memory ----

Status mem_alloc(int dev, std::size_t size, void** out) {
  if (out == nullptr) return Status::invalid_value;
  *out = nullptr;
  if (!valid_dev(dev)) return Status::invalid_device;
  if (size == 0) return Status::ok;
  // Device memory is handed out in pages of the VMM granularity (2 MiB), as the driver
  // does; that is what counts against the capacity.
  const std::uint64_t charged = round_up(size, granularity());
  if (charged < size) return Status::out_of_memory;
  if (!take_capacity(dev, charged)) return Status::out_of_memory;
  const std::size_t len = round_up(size, 4096);
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    give_capacity(dev, charged);
    return Status::out_of_memory;
  }
  std::lock_guard<std::mutex> g(mem_mu);
  allocs[reinterpret_cast<std::uintptr_t>(p)] = Alloc{size, len, charged, dev};
  *out = p;
  return Status::ok;
}

static Status free_kind(void* p, bool host) {
  if (p == nullptr) return Status::ok;
  Alloc a;
  {
    std::lock_guard<std::mutex> g(mem_mu);
    auto it = allocs.find(reinterpret_cast<std::uintptr_t>(p));
    if (it == allocs.end() || (it->second.dev < 0) != host) return Status::invalid_value;
    a = it->second;
    allocs.erase(it);
  }
  munmap(p, a.mapped);
  if (!host) give_capacity(a.dev, a.charged);
  return Status::ok;
}

Status mem_free(void* p) { return free_kind(p, false); }

Status host_alloc(std::size_t size, void** out) {
  if (out == nullptr) return Status::invalid_value;
  *out = nullptr;
  if (size == 0) return Status::ok;
  const std::size_t len = round_up(size, 4096);
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return Status::out_of_memory;
  std::lock_guard<std::mutex> g(mem_mu);
  allocs[reinterpret_cast<std::uintptr_t>(p)] = Alloc{size, len, 0, -1};
  *out = p;
  return Status::ok;
}

Status host_free(void* p) { return free_kind(p, true); }

bool find_device_pointer(const void* p, int* dev, void** base, std::size_t* size) {
  const auto v = reinterpret_cast<std::uintptr_t>(p);
  std::lock_guard<std::mutex> g(mem_mu);
  auto a = containing(allocs, v, alloc_len);
  if (a != allocs.end() && a->second.dev >= 0) {
    if (dev) *dev = a->second.dev;
    if (base) *base = reinterpret_cast<void*>(a->first);
    if (size) *size = a->second.size;
    return true;
  }
  auto r = containing(reservations, v, res_len);
  if (r == reservations.end()) return false;
  const std::uint64_t g_ = granularity();
  const std::size_t page = (v - r->first) / g_;
  const std::uint64_t h = r->second.pages[page];
  if (h == 0) return false;
  // The mapping (one cuMemMap's range) around p.
  const Reservation& res = r->second;
  std::size_t lo = page, hi = page + 1;
  while (lo > 0 && !res.starts[lo]) --lo;
  while (hi < res.pages.size() && res.pages[hi] != 0 && !res.starts[hi]) ++hi;
  if (dev) *dev = handles.count(h) ? handles[h].dev : 0;
  if (base) *base = reinterpret_cast<void*>(r->first + lo * g_);
  if (size) *size = (hi - lo) * g_;
  return true;
}

// ---- VMM ----

Status vmm_reserve(std::size_t size, std::size_t alignment, void* addr_hint, void** out) {
  if (out == nullptr) return Status::invalid_value;
  *out = nullptr;
  const std::uint64_t g_ = granularity();
  if (size == 0 || size % g_ != 0) return Status::invalid_value;
  if ((alignment & (alignment - 1)) != 0) return Status::invalid_value;
  // The driver's reservations are aligned to the granularity at least (anything less
  // could never be mapped): a smaller alignment, 0 included, means the granularity.
  if (alignment < g_) alignment = g_;
  const std::size_t len = size + alignment;
  if (len < size) return Status::out_of_memory;
  void* raw = mmap(addr_hint, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return Status::out_of_memory;
  const auto r = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t base = round_up(r, alignment);
  if (base > r) munmap(raw, base - r);
  const std::uintptr_t end = base + size, rend = r + len;
  if (rend > end) munmap(reinterpret_cast<void*>(end), rend - end);
  std::lock_guard<std::mutex> g(mem_mu);
  reservations[base] = Reservation{size, std::vector<std::uint64_t>(size / g_, 0), std::vector<std::uint8_t>(size / g_, 0)};
  *out = reinterpret_cast<void*>(base);
  return Status::ok;
}

Status vmm_free_reservation(void* p, std::size_t size) {
  std::lock_guard<std::mutex> g(mem_mu);
  auto it = reservations.find(reinterpret_cast<std::uintptr_t>(p));
  if (it == reservations.end() || it->second.size != size) return Status::invalid_value;
  for (std::uint64_t h : it->second.pages)
    if (h != 0) return Status::in_use;
  munmap(p, size);
  reservations.erase(it);
  return Status::ok;
}

Status vmm_create(int dev, std::size_t size, std::uint64_t* handle) {
  if (handle == nullptr) return Status::invalid_value;
  *handle = 0;
  if (!valid_dev(dev)) return Status::invalid_device;
  if (size == 0 || size % granularity() != 0) return Status::invalid_value;
  if (!take_capacity(dev, size)) return Status::out_of_memory;
  std::lock_guard<std::mutex> g(mem_mu);
  const std::uint64_t h = next_handle++;
  handles.emplace(h, PhysHandle{dev, size});
  *handle = h;
  return Status::ok;
}

Status vmm_release(std::uint64_t handle) {
  std::lock_guard<std::mutex> g(mem_mu);
  auto it = handles.find(handle);
  if (it == handles.end() || it->second.refs <= 0) return Status::invalid_handle;
  --it->second.refs;
  release_handle_locked(it);
  return Status::ok;
}

// Finds the reservation holding [p, p+size) and the first granule; mem_mu held.
static Status locate(void* p, std::size_t size, std::map<std::uintptr_t, Reservation>::iterator* out,
                     std::size_t* first) {
  const std::uint64_t g_ = granularity();
  const auto v = reinterpret_cast<std::uintptr_t>(p);
  if (size == 0 || size % g_ != 0 || v % g_ != 0) return Status::invalid_value;
  auto r = containing(reservations, v, res_len);
  if (r == reservations.end() || v + size > r->first + r->second.size || v + size < v) return Status::invalid_value;
  *out = r;
  *first = (v - r->first) / g_;
  return Status::ok;
}

Status vmm_map(void* p, std::size_t size, std::size_t offset, std::uint64_t handle) {
  std::lock_guard<std::mutex> g(mem_mu);
  auto h = handles.find(handle);
  if (h == handles.end() || h->second.refs <= 0) return Status::invalid_handle;
  // cuda.h: "offset ... currently must be zero".
  if (offset != 0 || size > h->second.size) return Status::invalid_value;
  std::map<std::uintptr_t, Reservation>::iterator r;
  std::size_t first = 0;
  if (Status s = locate(p, size, &r, &first); s != Status::ok) return s;
  const std::size_t n = size / granularity();
  for (std::size_t i = 0; i < n; ++i)
    if (r->second.pages[first + i] != 0) return Status::already_mapped;
  // Fresh pages with no access until cuMemSetAccess, as on a GPU.
  if (mmap(p, size, PROT_NONE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0) == MAP_FAILED)
    return Status::out_of_memory;
  for (std::size_t i = 0; i < n; ++i) r->second.pages[first + i] = handle;
  r->second.starts[first] = 1;
  h->second.mapped_pages += n;
  return Status::ok;
}

Status vmm_unmap(void* p, std::size_t size) {
  std::lock_guard<std::mutex> g(mem_mu);
  std::map<std::uintptr_t, Reservation>::iterator r;
  std::size_t first = 0;
  if (Status s = locate(p, size, &r, &first); s != Status::ok) return s;
  const std::size_t n = size / granularity();
  Reservation& res = r->second;
  for (std::size_t i = 0; i < n; ++i)
    if (res.pages[first + i] == 0) return Status::not_mapped;
  // cuda.h: "The range must be the entire contiguous address range that was mapped to":
  // whole mappings (one or several, as the driver accepts), never part of one.
  const std::size_t end = first + n;
  if (!res.starts[first] || (end < res.pages.size() && res.pages[end] != 0 && !res.starts[end]))
    return Status::invalid_value;
  std::fill(res.starts.begin() + first, res.starts.begin() + end, 0);
  // Back to reserved-only: the pages (and the host memory behind them) are dropped.
  mmap(p, size, PROT_NONE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  for (std::size_t i = 0; i < n; ++i) {
    std::uint64_t& slot = r->second.pages[first + i];
    auto h = handles.find(slot);
    slot = 0;
    if (h != handles.end()) {
      --h->second.mapped_pages;
      release_handle_locked(h);
    }
  }
  return Status::ok;
}

Status vmm_set_access(void* p, std::size_t size, int dev) {
  if (!valid_dev(dev)) return Status::invalid_device;
  std::lock_guard<std::mutex> g(mem_mu);
  std::map<std::uintptr_t, Reservation>::iterator r;
  std::size_t first = 0;
  if (Status s = locate(p, size, &r, &first); s != Status::ok) return s;
  for (std::size_t i = 0; i < size / granularity(); ++i)
    if (r->second.pages[first + i] == 0) return Status::not_mapped;
  if (mprotect(p, size, PROT_READ | PROT_WRITE) != 0) return Status::invalid_value;
  return Status::ok;
}

Status vmm_handle_info(std::uint64_t handle, int* dev, std::size_t* size) {
  std::lock_guard<std::mutex> g(mem_mu);
  auto h = handles.find(handle);
  if (h == handles.end()) return Status::invalid_handle;
  if (dev) *dev = h->second.dev;
  if (size) *size = h->second.size;
  return Status::ok;
}

Status vmm_retain_handle(void* p, std::uint64_t* handle) {
  if (handle == nullptr) return Status::invalid_value;
  std::lock_guard<std::mutex> g(mem_mu);
  const auto v = reinterpret_cast<std::uintptr_t>(p);
  auto r = containing(reservations, v, res_len);
  if (r == reservations.end()) return Status::invalid_value;
  const std::uint64_t h = r->second.pages[(v - r->first) / granularity()];
  auto it = handles.find(h);
  if (h == 0 || it == handles.end()) return Status::not_mapped;
  ++it->second.refs;
  *handle = h;
  return Status::ok;
}

// ---- streams and events ----

Status stream_create(int dev, unsigned flags, int priority, Stream** out) {
  if (out == nullptr) return Status::invalid_value;
  if (!valid_dev(dev)) return Status::invalid_device;
  auto* s = new Stream();
  s->dev = dev;
  s->flags = flags;
  s->priority = priority;
  std::lock_guard<std::mutex> g(st_mu);
  all_streams_list().push_back(s);
  *out = s;
  return Status::ok;
}

Status stream_destroy(Stream* s) {
  if (reinterpret_cast<std::uintptr_t>(s) <= 2) return Status::invalid_handle;
  std::lock_guard<std::mutex> g(st_mu);
  if (!ok_stream(s)) return Status::invalid_handle;
  // Pending work still completes on a GPU after destroy; here it completes at once.
  force(s, 0);
  s->destroyed = true;
  return Status::ok;
}

Status stream_info(Stream* s, int* dev, unsigned* flags, int* priority) {
  s = resolve(s);
  if (!ok_stream(s)) return Status::invalid_handle;
  if (dev) *dev = s->dev;
  if (flags) *flags = s->flags;
  if (priority) *priority = s->priority;
  return Status::ok;
}

Status stream_enqueue(Stream* s) {
  s = resolve(s);
  std::lock_guard<std::mutex> g(st_mu);
  if (!ok_stream(s)) return Status::invalid_handle;
  enqueue_locked(s);
  return Status::ok;
}

Status stream_query(Stream* s) {
  s = resolve(s);
  std::lock_guard<std::mutex> g(st_mu);
  if (!ok_stream(s)) return Status::invalid_handle;
  advance(s);
  return s->pending.empty() ? Status::ok : Status::not_ready;
}

Status stream_synchronize(Stream* s) {
  s = resolve(s);
  std::lock_guard<std::mutex> g(st_mu);
  if (!ok_stream(s)) return Status::invalid_handle;
  force(s, 0);
  return Status::ok;
}

Status stream_wait_event(Stream* s, Event* e) {
  s = resolve(s);
  std::lock_guard<std::mutex> g(st_mu);
  if (!ok_stream(s) || e == nullptr || e->magic != kEventMagic) return Status::invalid_handle;
  if (e->stream == nullptr || e->stream == s) return Status::ok;
  advance(e->stream);
  if (e->stream->completed >= e->seq) return Status::ok;
  // The wait is an item of its own, as on a GPU: every wait holds back what follows
  // (not only the last one), the stream reads as busy until the event completes, and
  // synchronizing the stream completes the event's work too.
  enqueue_locked(s, e->stream, e->seq, false);
  return Status::ok;
}

Status device_synchronize(int dev) {
  if (!valid_dev(dev)) return Status::invalid_device;
  std::lock_guard<std::mutex> g(st_mu);
  force(&cfg().devices[dev].default_stream, 0);
  for (Stream* s : all_streams_list())
    if (s->dev == dev) force(s, 0);
  return Status::ok;
}

Status event_create(unsigned flags, Event** out) {
  if (out == nullptr) return Status::invalid_value;
  auto* e = new Event();
  e->flags = flags;
  *out = e;
  return Status::ok;
}

Status event_destroy(Event* e) {
  if (e == nullptr || e->magic != kEventMagic) return Status::invalid_handle;
  e->magic = 0;
  delete e;
  return Status::ok;
}

Status event_record(Event* e, Stream* s) {
  s = resolve(s);
  std::lock_guard<std::mutex> g(st_mu);
  if (e == nullptr || e->magic != kEventMagic || !ok_stream(s)) return Status::invalid_handle;
  e->stream = s;
  e->seq = enqueue_locked(s);
  e->record_ns = now_ns();
  return Status::ok;
}

Status event_query(Event* e) {
  std::lock_guard<std::mutex> g(st_mu);
  if (e == nullptr || e->magic != kEventMagic) return Status::invalid_handle;
  if (e->stream == nullptr) return Status::ok;
  advance(e->stream);
  return e->stream->completed >= e->seq ? Status::ok : Status::not_ready;
}

Status event_synchronize(Event* e) {
  std::lock_guard<std::mutex> g(st_mu);
  if (e == nullptr || e->magic != kEventMagic) return Status::invalid_handle;
  if (e->stream != nullptr) force(e->stream, e->seq);
  return Status::ok;
}

Status event_elapsed_ms(Event* start, Event* end, float* ms) {
  if (ms == nullptr) return Status::invalid_value;
  std::lock_guard<std::mutex> g(st_mu);
  if (start == nullptr || end == nullptr || start->magic != kEventMagic || end->magic != kEventMagic)
    return Status::invalid_handle;
  if (start->stream == nullptr || end->stream == nullptr) return Status::invalid_handle;
  // cudaEventDisableTiming (2) / CU_EVENT_DISABLE_TIMING (2): no timestamps to compare.
  if ((start->flags & 2u) != 0 || (end->flags & 2u) != 0) return Status::invalid_handle;
  advance(start->stream);
  advance(end->stream);
  if (start->stream->completed < start->seq || end->stream->completed < end->seq) return Status::not_ready;
  *ms = static_cast<float>((static_cast<double>(end->record_ns) - static_cast<double>(start->record_ns)) / 1e6);
  return Status::ok;
}

// ---- counters ----

void count_call(const char* name, bool syncs) {
  CounterTable* t = my_table();
  std::size_t i = (reinterpret_cast<std::uintptr_t>(name) >> 3) & (kTableSize - 1);
  for (int probe = 0; probe < kTableSize; ++probe, i = (i + 1) & (kTableSize - 1)) {
    Counter& c = t->slots[i];
    const char* cn = c.name.load(std::memory_order_relaxed);  // only this thread writes it
    if (cn == name) {
      c.n.store(c.n.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      break;
    }
    if (cn == nullptr) {
      c.syncs.store(syncs, std::memory_order_relaxed);
      c.n.store(c.n.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      c.name.store(name, std::memory_order_release);
      break;
    }
  }
  if (cfg().trace) std::fprintf(stderr, "pypool-simdevice: %s\n", name);
}

}  // namespace sim

// ---- control API ----

using namespace sim;

extern "C" {

SIM_EXPORT int pypoolsim_configure(int devices, unsigned long long bytes_per_device) {
  Config& c = cfg();
  if (c.any_alloc.load() || devices < 1 || devices > kMaxDevices || bytes_per_device == 0) return -1;
  c.count.store(devices);
  for (auto& d : c.devices) d.total.store(bytes_per_device);
  return 0;
}

SIM_EXPORT int pypoolsim_set_memory(int dev, unsigned long long bytes) {
  // Shrinking below what is in use is refused: the device cannot take memory back. A
  // device of 0 bytes is refused as PYPOOL_SIM_MEMORY and pypoolsim_configure refuse it.
  if (!valid_dev(dev) || bytes == 0 || bytes < device_used(dev)) return -1;
  cfg().devices[dev].total.store(bytes);
  return 0;
}

SIM_EXPORT int pypoolsim_device_count(void) { return device_count(); }
SIM_EXPORT unsigned long long pypoolsim_device_total(int dev) { return device_total(dev); }
SIM_EXPORT unsigned long long pypoolsim_device_used(int dev) { return device_used(dev); }
SIM_EXPORT unsigned long long pypoolsim_device_peak(int dev) {
  return valid_dev(dev) ? cfg().devices[dev].peak.load() : 0;
}
SIM_EXPORT int pypoolsim_reset_peak(int dev) {
  if (!valid_dev(dev)) return -1;
  cfg().devices[dev].peak.store(cfg().devices[dev].used.load());
  return 0;
}

// A stream the control API was handed, or null. Unlike the CUDA entry points (where a
// bad handle is the caller's undefined behaviour, as on a GPU), the value comes from a
// test and is checked against the streams that exist before it is dereferenced: an
// unknown or destroyed stream is refused, not a crash. st_mu held.
static Stream* control_stream(unsigned long long stream) {
  Stream* s = resolve(reinterpret_cast<Stream*>(static_cast<std::uintptr_t>(stream)));
  bool known = false;
  for (int d = 0; d < kMaxDevices && !known; ++d) known = s == &cfg().devices[d].default_stream;
  if (!known) known = std::find(all_streams_list().begin(), all_streams_list().end(), s) != all_streams_list().end();
  return known && ok_stream(s) ? s : nullptr;
}

SIM_EXPORT int pypoolsim_hold_stream(unsigned long long stream, int hold) {
  std::lock_guard<std::mutex> g(st_mu);
  Stream* s = control_stream(stream);
  if (s == nullptr) return -1;
  s->held = hold != 0;
  advance(s);
  return 0;
}

SIM_EXPORT int pypoolsim_complete_stream(unsigned long long stream) {
  std::lock_guard<std::mutex> g(st_mu);
  Stream* s = control_stream(stream);
  if (s == nullptr) return -1;
  force(s, 0);
  return 0;
}

SIM_EXPORT int pypoolsim_hold_all(int hold) {
  std::lock_guard<std::mutex> g(st_mu);
  hold_all_flag = hold != 0;
  return 0;
}

SIM_EXPORT int pypoolsim_pending_work(unsigned long long stream) {
  std::lock_guard<std::mutex> g(st_mu);
  Stream* s = control_stream(stream);
  if (s == nullptr) return -1;
  advance(s);
  return static_cast<int>(s->pending.size());
}

SIM_EXPORT int pypoolsim_set_event_delay_us(long long us) {
  // Past this the delay in nanoseconds would overflow (and come out negative: none).
  if (us < 0 || us > INT64_MAX / 1000) return -1;
  cfg().delay_ns.store(us * 1000);
  return 0;
}

SIM_EXPORT unsigned long long pypoolsim_calls(const char* name) {
  std::uint64_t n = 0;
  for_each_counter([&](Counter& c, const char* cn) {
    if (name == nullptr || std::strcmp(name, cn) == 0) n += c.value();
  });
  return n;
}

SIM_EXPORT unsigned long long pypoolsim_sync_calls(void) {
  std::uint64_t n = 0;
  for_each_counter([&](Counter& c, const char*) {
    if (c.syncs.load(std::memory_order_relaxed)) n += c.value();
  });
  return n;
}

SIM_EXPORT void pypoolsim_reset_counters(void) {
  for_each_counter([](Counter& c, const char*) { c.base.store(c.n.load(std::memory_order_relaxed), std::memory_order_relaxed); });
}

SIM_EXPORT unsigned long long pypoolsim_counters_text(char* buf, unsigned long long len) {
  std::map<std::string, std::pair<std::uint64_t, bool>> merged;
  for_each_counter([&](Counter& c, const char* cn) {
    auto& m = merged[cn];
    m.first += c.value();
    m.second = m.second || c.syncs.load(std::memory_order_relaxed);
  });
  std::string out;
  for (auto& [name, v] : merged) {
    if (v.first == 0) continue;
    out += name + " " + std::to_string(v.first) + " " + (v.second ? "1" : "0") + "\n";
  }
  if (buf != nullptr && len > 0) {
    std::size_t n = std::min<std::size_t>(out.size(), len - 1);
    std::memcpy(buf, out.data(), n);
    buf[n] = 0;
  }
  return out.size() + 1;
}

SIM_EXPORT int pypoolsim_fail_next_allocs(int n) {
  cfg().fail_next.store(n < 0 ? 0 : n);
  return 0;
}

SIM_EXPORT const char* pypoolsim_version(void) { return "pypool-simdevice 1"; }

}  // extern "C"
