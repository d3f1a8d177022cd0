// The Config part of pypool._core: GrowthPolicy, Config (one attribute per field) and the
// field table CONFIG_FIELDS, all expanded from PYPOOL_CONFIG_FIELDS (Note [Config X-macro]
// in pypool/config.h).
#include <pybind11/operators.h>
#include <pybind11/pybind11.h>

#include "bindings.h"
#include "pypool/config.h"


namespace pypool::bindings {

void init_config(py::module_& m) {
  py::enum_<GrowthPolicy>(m, "GrowthPolicy")
      .value("segment", GrowthPolicy::kSegment)
      .value("exact", GrowthPolicy::kExact)
      .value("double", GrowthPolicy::kDouble)
      .value("fixed", GrowthPolicy::kFixed);

  py::class_<Config> cls(m, "Config");
  cls.def(py::init<>());
#define PYPOOL_BIND_FIELD(type, name, def, kind, doc) cls.def_readwrite(#name, &Config::name, doc);
  PYPOOL_CONFIG_FIELDS(PYPOOL_BIND_FIELD)
#undef PYPOOL_BIND_FIELD
  cls.def("validate", &Config::validate)
      .def("validate_new", &Config::validate_new)
      .def("__repr__", &Config::to_string)
      .def(py::self == py::self)
      .def(py::self != py::self);
  m.attr("UNLIMITED") = py::int_(Config::kUnlimited);

  // (name, kind, default, doc) per field, in declaration order; the default is the native
  // value (kUnlimited, 0.0, a GrowthPolicy), which pypool/config.py converts by kind.
  const Config defaults{};
  py::list rows;
#define PYPOOL_FIELD_ROW(type, name, def, kind, doc)                                      \
  rows.append(py::make_tuple(#name, config_kind_name(ConfigKind::kind), py::cast(defaults.name), \
                             doc));
  PYPOOL_CONFIG_FIELDS(PYPOOL_FIELD_ROW)
#undef PYPOOL_FIELD_ROW
  m.attr("CONFIG_FIELDS") = py::tuple(rows);
  // The fields a pool in use takes (Note [Live settings]).
  py::list live;
#define PYPOOL_LIVE_ROW(name) live.append(#name);
  PYPOOL_LIVE_CONFIG_FIELDS(PYPOOL_LIVE_ROW)
#undef PYPOOL_LIVE_ROW
  m.attr("LIVE_CONFIG_FIELDS") = py::tuple(live);
}

}  // namespace pypool::bindings
