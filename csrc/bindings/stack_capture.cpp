// pypool._core, Python stack capture: the context hooks that record the calling thread's
// stack at each allocation (pypool's own walker, or torch's CapturedTraceback for the
// torch-facing history), and the look-up of those stacks for reports.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "bindings.h"
#include "pypool/device_pool.h"
#include "pypool/registry.h"

namespace pypool::bindings {

namespace {

// Note [Native stack capture]: while capture is on, each allocation records the Python
// stack of the calling thread. The walk runs here in C++ (public frame API), keyed on
// (code object, instruction offset) pairs and interned in a table that holds strong
// references to the code objects; line numbers and strings are only made when a report
// asks (context_frames). A Python-level walk cost 4-17 us per allocation; this costs
// well under one. The table is guarded by the GIL. The hook runs before the pool lock is
// taken (see device_pool.h), so taking the GIL here cannot deadlock with the pool.
struct StackKeyHash {
  std::size_t operator()(const std::vector<std::uintptr_t>& v) const noexcept {
    std::size_t h = 1469598103934665603ull;
    for (std::uintptr_t x : v) h = (h ^ x) * 1099511628211ull;
    return h;
  }
};
struct StackTable {
  std::unordered_map<std::vector<std::uintptr_t>, std::uint64_t, StackKeyHash> ids;
  std::vector<std::vector<std::pair<PyObject*, int>>> stacks{1};  // id 0 = none
};
StackTable& stack_table() {
  static auto* t = new StackTable();  // leaked: code objects stay alive to exit
  return *t;
}
constexpr int kMaxFrames = 48;

}  // namespace

// At interpreter shutdown a thread without a Python state must not take the GIL
// (CPython would end it with pthread_exit, unwinding through torch's frames).
static bool python_gone() {
#if PY_VERSION_HEX >= 0x030D0000
  return !Py_IsInitialized() || Py_IsFinalizing();
#else
  return !Py_IsInitialized() || _Py_IsFinalizing();
#endif
}

std::uint64_t native_context_hook(void*) {
  if (python_gone()) return 0;
  py::gil_scoped_acquire gil;
  PyFrameObject* f = PyThreadState_GetFrame(PyThreadState_Get());  // new reference
  if (f == nullptr) return 0;  // a thread with no Python frames (autograd workers)
  thread_local std::vector<std::uintptr_t> key;
  key.clear();
  for (int n = 0; f != nullptr && n < kMaxFrames; ++n) {
    PyCodeObject* code = PyFrame_GetCode(f);  // new reference
#if PY_VERSION_HEX >= 0x030B0000
    const int where = PyFrame_GetLasti(f);
#else
    const int where = PyFrame_GetLineNumber(f);
#endif
    key.push_back(reinterpret_cast<std::uintptr_t>(code));
    key.push_back(static_cast<std::uintptr_t>(where));
    Py_DECREF(code);  // the table takes its own reference below when the stack is new
    PyFrameObject* back = PyFrame_GetBack(f);
    Py_DECREF(f);
    f = back;
  }
  Py_XDECREF(f);
  StackTable& t = stack_table();
  auto it = t.ids.find(key);
  if (it != t.ids.end()) return it->second;
  std::vector<std::pair<PyObject*, int>> stack;
  for (std::size_t i = 0; i < key.size(); i += 2) {
    auto* code = reinterpret_cast<PyObject*>(key[i]);
    Py_INCREF(code);
    stack.emplace_back(code, static_cast<int>(key[i + 1]));
  }
  const std::uint64_t id = t.stacks.size();
  t.stacks.push_back(std::move(stack));
  t.ids.emplace(key, id);
  return id;
}

namespace {

py::list context_frames(std::uint64_t id) {
  py::list out;
  StackTable& t = stack_table();
  if (id == 0 || id >= t.stacks.size()) return out;
  for (const auto& [obj, where] : t.stacks[id]) {
    auto* code = reinterpret_cast<PyCodeObject*>(obj);
#if PY_VERSION_HEX >= 0x030B0000
    const int line = PyCode_Addr2Line(code, where);
#else
    const int line = where;
#endif
    py::dict d;
    d["filename"] = py::reinterpret_borrow<py::object>(code->co_filename);
    d["line"] = line;
    d["name"] = py::reinterpret_borrow<py::object>(code->co_name);
    out.append(d);
  }
  return out;
}

}  // namespace

namespace {

// Note [Torch tracebacks]: torch.cuda.memory._record_memory_history (pypool's stand-in
// under install()) must record what torch records: torch's CapturedTraceback of Python
// and TorchScript frames, plus C++ frames with stacks="all". The "torch_python" /
// "torch_all" hooks call torch._C._profiler.gather_traceback(True, True, cpp) (2 us;
// 40 us with C++ frames) and keep the traceback object under an id with the top bit set
// (kTorchBit, so pypool._context tells the two kinds apart); symbolising is left to the
// snapshot, batched (torch's symbolize_tracebacks, whose first call takes seconds).
// pypool.record_history and leak tracking keep the native walker.
//
// A traceback cannot be interned by content without symbolising it, so the table is
// instead collected: once `threshold` ids were issued since the last collection, the
// hook keeps only the ids a block or a trace entry of a registry pool still names (the
// torch-facing names use registry pools only), read with the pools' own locks. The hook
// runs before its pool's lock is taken and no pool lock is held while waiting for the
// GIL, so this cannot deadlock. An id issued since the previous collection is never
// dropped: its allocation may not have stored it yet (hook returned, pool lock not yet
// taken); an allocation that outlasts two whole collections (a slow growth while
// other threads allocate thousands of times) can still lose its frames, never more.
// When history stops gathering tracebacks, pypool._torch collects `everything` not named,
// since no hook would collect again. The next collection comes after threshold = max(kMinCollect, 2 * ids still
// named) more ids, so the table holds at most the named ids plus two thresholds, and a
// collection's cost (one pass over the blocks and the ring) is spread over at least as
// many allocations as the ids it reads. Everything
// is guarded by the GIL; the objects are never released at exit (as the stack table).
constexpr std::uint64_t kTorchBit = std::uint64_t{1} << 63;
constexpr std::size_t kMinCollect = 4096;

struct TorchTracebacks {
  PyObject* gather = nullptr;                         // torch._C._profiler.gather_traceback
  PyObject* args[2] = {nullptr, nullptr};             // (True, True, False), (True, True, True)
  std::unordered_map<std::uint64_t, PyObject*> live;  // id -> CapturedTraceback
  std::uint64_t next = 1;                             // id of the next traceback, less kTorchBit
  std::uint64_t watermark = 0;                        // `next` at the last collection
  std::uint64_t issued_at_collect = 1 + kMinCollect;  // `next` when the next collection is due
  std::size_t collections = 0;
};
TorchTracebacks& torch_tracebacks() {
  static auto* t = new TorchTracebacks();  // leaked: no Py_DECREF after finalisation
  return *t;
}
// The hooks' user pointers: which entry of TorchTracebacks::args to call with.
int kTorchPythonArgs = 0;
int kTorchAllArgs = 1;

// `everything`: also drop unnamed ids issued since the last collection, for when no pool
// records torch tracebacks any more (history off): nothing would collect them again.
void collect_tracebacks(TorchTracebacks& t, bool everything = false) {
  std::unordered_set<std::uint64_t> named;
  Registry& r = Registry::instance();
  for (int d : r.devices()) {
    DevicePool* p = r.existing(d);
    if (p == nullptr) continue;
    for (const SegmentInfo& s : p->segments())
      for (const BlockInfo& b : s.blocks)
        if ((b.context & kTorchBit) != 0) named.insert(b.context);
    for (const TraceEntry& e : p->history())
      if ((e.context & kTorchBit) != 0) named.insert(e.context);
  }
  const std::uint64_t older_than = kTorchBit | (everything ? t.next : t.watermark);
  std::size_t kept_named = 0;
  std::vector<PyObject*> doomed;
  for (auto it = t.live.begin(); it != t.live.end();) {
    if (named.count(it->first) != 0) ++kept_named;
    if (it->first < older_than && named.count(it->first) == 0) {
      doomed.push_back(it->second);
      it = t.live.erase(it);
    } else {
      ++it;
    }
  }
  t.watermark = t.next;
  t.issued_at_collect = t.next + std::max(kMinCollect, 2 * kept_named);
  ++t.collections;
  // Released once the table is consistent: a release that ran Python code and let
  // another thread in would otherwise find the map mid-iteration.
  for (PyObject* o : doomed) Py_DECREF(o);
}

std::uint64_t torch_context_hook(void* user) {
  if (python_gone()) return 0;
  py::gil_scoped_acquire gil;
  TorchTracebacks& t = torch_tracebacks();
  PyObject* args = t.args[*static_cast<const int*>(user)];
  if (t.gather == nullptr || args == nullptr) return 0;
  // An allocation made while an exception is set (C code between raising and returning)
  // must find it unchanged.
  PyObject *type, *value, *tb_err;
  PyErr_Fetch(&type, &value, &tb_err);
  PyObject* tb = PyObject_Call(t.gather, args, nullptr);
  std::uint64_t id = 0;
  if (tb == nullptr) {
    PyErr_Clear();  // no frames rather than a failed allocation
  } else {
    id = kTorchBit | t.next;
    try {
      t.live.emplace(id, tb);
      ++t.next;
      if (t.next >= t.issued_at_collect) collect_tracebacks(t);
    } catch (...) {  // std::bad_alloc: this allocation goes without frames
      if (t.live.count(id) == 0) {
        Py_DECREF(tb);
        id = 0;
      }
    }
  }
  PyErr_Restore(type, value, tb_err);
  return id;
}

void set_torch_gather(py::object gather) {
  TorchTracebacks& t = torch_tracebacks();
  if (t.gather == gather.ptr()) return;
  py::tuple python_only = py::make_tuple(true, true, false);
  py::tuple with_cpp = py::make_tuple(true, true, true);
  // The old objects stay referenced (a hook may be running them on another thread
  // between its GIL releases); set once per process in practice.
  t.gather = gather.release().ptr();
  t.args[0] = python_only.release().ptr();
  t.args[1] = with_cpp.release().ptr();
}

py::list torch_traceback_objects(const py::iterable& ids) {
  const TorchTracebacks& t = torch_tracebacks();
  py::list out;
  for (py::handle h : ids) {
    const auto id = h.cast<std::uint64_t>();
    auto it = t.live.find(id);
    if (it == t.live.end())
      out.append(py::none());
    else
      out.append(py::reinterpret_borrow<py::object>(it->second));
  }
  return out;
}

}  // namespace

NamedHook context_hook_named(const std::string& name) {
  if (name == "native") return {&native_context_hook, nullptr};
  if (name == "torch_python") return {&torch_context_hook, &kTorchPythonArgs};
  if (name == "torch_all") return {&torch_context_hook, &kTorchAllArgs};
  throw std::invalid_argument("hook: expected 'native', 'torch_python' or 'torch_all', got '" + name + "'");
}

namespace {

// The labels of Note [Trace metadata], interned once each (id 0 is the empty label):
// `labels` by id for the snapshot, `ids` by label so setting one is a lookup. The table
// only grows, by one entry per distinct label, up to kMaxLabels; guarded by the GIL.
struct MetadataTable {
  std::vector<std::string> labels{std::string()};
  std::unordered_map<std::string, std::uint32_t> ids{{std::string(), 0}};
  bool warned = false;
};

constexpr std::uint32_t kMaxLabels = 1u << 20;
// The id of every label past kMaxLabels (never an index of `labels`).
constexpr std::uint32_t kOverflowLabel = kMaxLabels;
constexpr const char* kOverflowText = "(pypool: label not kept, more than 2**20 distinct labels)";

MetadataTable& metadata_table() {
  static auto* t = new MetadataTable;
  return *t;
}

// The calling thread's label as set, which trace_metadata returns even past the cap.
thread_local std::string t_label;

std::uint32_t intern_label(const std::string& label) {
  MetadataTable& t = metadata_table();
  if (auto it = t.ids.find(label); it != t.ids.end()) return it->second;
  if (t.labels.size() >= kMaxLabels) {
    // Full: the entries keep their ids (so their labels stay right) and new labels share
    // one marked id. A warning, never an error: labelling must not break the program
    // (a warnings filter that turns it into one is cleared).
    if (!t.warned) {
      t.warned = true;
      if (PyErr_WarnEx(PyExc_RuntimeWarning,
                       "pypool: more than 2**20 distinct memory metadata labels; history entries "
                       "made under new labels read \"(pypool: label not kept, more than 2**20 "
                       "distinct labels)\"",
                       1) != 0)
        PyErr_Clear();
    }
    return kOverflowLabel;
  }
  const auto id = static_cast<std::uint32_t>(t.labels.size());
  t.labels.push_back(label);
  try {
    t.ids.emplace(label, id);
  } catch (...) {
    t.labels.pop_back();
    throw;
  }
  return id;
}

std::string label_of(std::uint32_t id) {
  const MetadataTable& t = metadata_table();
  if (id == kOverflowLabel) return kOverflowText;
  return id < t.labels.size() ? t.labels[id] : std::string();
}

}  // namespace

void init_stack_capture(py::module_& m) {
  m.def(
      "set_trace_metadata",
      [](const std::string& label) {
        const std::uint32_t id = intern_label(label);
        t_label = label;
        t_trace_metadata = id;
      },
      py::arg("label"), "Label the trace entries this thread makes from now on (Note [Trace metadata]).");
  m.def("trace_metadata", [] { return t_label; }, "This thread's current label.");
  m.def("trace_metadata_label", &label_of, py::arg("id"), "The label of a trace entry's metadata id.");
  m.def("trace_metadata_cap", [] { return kMaxLabels; },
        "How many distinct labels keep their own id (Note [Trace metadata]).");
  m.def("context_frames", &context_frames, py::arg("context"),
        "The Python stack recorded for a context id, innermost frame first.");
  m.def("context_count", [] { return stack_table().stacks.size() - 1; });
  m.def("set_torch_traceback_gather", &set_torch_gather, py::arg("gather"),
        "The function the torch hooks call (torch._C._profiler.gather_traceback; Note [Torch tracebacks]).");
  m.def("torch_tracebacks", &torch_traceback_objects, py::arg("ids"),
        "The CapturedTraceback of each torch context id (None where collected or unknown).");
  m.def("torch_traceback_count", [] { return torch_tracebacks().live.size(); },
        "How many torch tracebacks are kept.");
  m.def("torch_traceback_collect", [](bool everything) { collect_tracebacks(torch_tracebacks(), everything); },
        py::arg("everything") = false,
        "Drop the torch tracebacks no registry pool names (except, unless `everything`, those "
        "issued since the last collection).");
  m.def("torch_traceback_collections", [] { return torch_tracebacks().collections; });
  m.attr("TORCH_CONTEXT_BIT") = py::int_(kTorchBit);
  m.def("registry_capture_new_pools", [](bool on) {
    Registry::instance().set_capture_new_pools(on ? &native_context_hook : nullptr, nullptr, on);
  });
}

}  // namespace pypool::bindings
