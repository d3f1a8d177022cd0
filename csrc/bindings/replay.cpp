// pypool._core, the replay engine: an allocation trace run through a pool in C++.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings.h"
#include "pypool/device_pool.h"

namespace pypool::bindings {

namespace {

// Replays an allocation trace through a pool: actions[i] is 0 = alloc (ids[i], sizes[i],
// streams[i]) or 1 = free (ids[i]); ids are dense (0..max_id). Runs without Python in
// the loop. An alloc that fails with out-of-memory is counted and its free skipped.
py::dict replay_trace(DevicePool& pool, py::array_t<std::int8_t, py::array::c_style | py::array::forcecast> actions,
                      py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> ids,
                      py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> sizes,
                      py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> streams,
                      std::int64_t sample_every) {
  const auto n = static_cast<std::size_t>(actions.size());
  if (ids.size() != actions.size() || sizes.size() != actions.size() || streams.size() != actions.size())
    throw std::invalid_argument("replay: actions, ids, sizes and streams must have the same length");
  const std::int8_t* act = actions.data();
  const std::int64_t* id = ids.data();
  const std::int64_t* sz = sizes.data();
  const std::int64_t* st = streams.data();
  std::int64_t max_id = -1;
  for (std::size_t i = 0; i < n; ++i) {
    if (id[i] < 0) throw std::invalid_argument("replay: negative id at event " + std::to_string(i));
    max_id = std::max(max_id, id[i]);
  }
  std::vector<void*> ptr(static_cast<std::size_t>(max_id + 1), nullptr);
  std::vector<std::size_t> req(static_cast<std::size_t>(max_id + 1), 0);
  std::size_t live = 0, peak_live = 0;
  std::int64_t ooms = 0, bad = 0;
  std::int64_t first_oom = -1;  // event index of the first allocation that failed
  std::vector<std::int64_t> s_event, s_live, s_alloc, s_reserved;
  const auto t0 = std::chrono::steady_clock::now();
  {
    py::gil_scoped_release nogil;
    for (std::size_t i = 0; i < n; ++i) {
      const auto k = static_cast<std::size_t>(id[i]);
      if (act[i] == 0) {
        if (ptr[k] != nullptr) { ++bad; continue; }
        try {
          ptr[k] = pool.malloc(static_cast<std::size_t>(sz[i]), static_cast<Stream>(st[i]));
          req[k] = static_cast<std::size_t>(sz[i]);
          live += req[k];
          if (live > peak_live) peak_live = live;
        } catch (const OutOfMemoryError&) {
          if (ooms++ == 0) first_oom = static_cast<std::int64_t>(i);
        }
      } else {
        if (ptr[k] == nullptr) { ++bad; continue; }
        pool.free(ptr[k]);
        ptr[k] = nullptr;
        live -= req[k];
      }
      if (sample_every > 0 && i % static_cast<std::size_t>(sample_every) == 0) {
        const Stats s = pool.stats();
        s_event.push_back(static_cast<std::int64_t>(i));
        s_live.push_back(static_cast<std::int64_t>(live));
        s_alloc.push_back(s.allocated_bytes[kStatAll].current);
        s_reserved.push_back(s.reserved_bytes[kStatAll].current);
      }
    }
  }
  const auto t1 = std::chrono::steady_clock::now();
  const double secs = std::chrono::duration<double>(t1 - t0).count();
  py::dict d;
  d["events"] = n;
  d["seconds"] = secs;
  d["events_per_second"] = secs > 0 ? double(n) / secs : 0.0;
  d["peak_live_requested"] = peak_live;
  d["final_live_requested"] = live;
  d["ooms"] = ooms;
  d["first_oom_event"] = first_oom;
  d["skipped_events"] = bad;
  d["timeline"] = py::dict(py::arg("event") = s_event, py::arg("live") = s_live,
                           py::arg("allocated") = s_alloc, py::arg("reserved") = s_reserved);
  return d;
}

}  // namespace

void init_replay(py::module_& m) {
  m.def("replay_trace", &replay_trace, py::arg("pool"), py::arg("actions"), py::arg("ids"),
        py::arg("sizes"), py::arg("streams"), py::arg("sample_every") = 0);
}

}  // namespace pypool::bindings
