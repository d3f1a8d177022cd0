/* The simulated device's LD_AUDIT library (libpypool_simaudit.so).
 *
 * Why an audit library: torch's libraries carry an RPATH to nvidia/cu13/lib, and
 * torch/__init__.py preloads nvidia/cu13/lib/libcudart.so.13 by its full path, so neither
 * LD_LIBRARY_PATH nor LD_PRELOAD can put the stand-ins in front of the real CUDA
 * libraries. The dynamic loader asks an audit library about every file it is about to
 * look for (la_objsearch with LA_SER_ORIG, before any search), by name or by path; this
 * one answers with the stand-in for the five simulated libraries:
 *
 *   libcudart.so.13    -> libpypool_simcudart.so
 *   libcuda.so.1       -> libpypool_simcuda.so      (and libcuda.so)
 *   libnvidia-ml.so.1  -> libpypool_simnvml.so      (and libnvidia-ml.so)
 *   libcublas.so.13    -> libpypool_simcublas.so
 *   libcublasLt.so.13  -> libpypool_simcublasLt.so
 *
 * The stand-ins are found in $PYPOOL_SIM_LIBDIR, else beside this library. A name is
 * redirected only if its stand-in file exists there (and a warning names a missing one).
 * cuDNN is not simulated: run torch with torch.backends.cudnn.enabled = False (cuDNN
 * would need the driver's cuGetExportTable).
 *
 * Plain C with no allocation: it runs inside the dynamic loader, in a link-map
 * namespace of its own. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct redirect {
  const char* name;      /* basename the loader looks for */
  const char* standin;   /* file in the stand-in folder */
  int simulated;         /* a stand-in pypool ships: its absence is worth a warning */
  char path[4096];       /* resolved path, "" until resolved or if absent */
  int resolved;
};

static struct redirect redirects[] = {
    {"libcudart.so.13", "libpypool_simcudart.so", 1, "", 0},
    {"libcuda.so.1", "libpypool_simcuda.so", 1, "", 0},
    {"libcuda.so", "libpypool_simcuda.so", 1, "", 0},
    {"libnvidia-ml.so.1", "libpypool_simnvml.so", 1, "", 0},
    {"libnvidia-ml.so", "libpypool_simnvml.so", 1, "", 0},
    {"libcublas.so.13", "libpypool_simcublas.so", 1, "", 0},
    {"libcublasLt.so.13", "libpypool_simcublasLt.so", 1, "", 0},
};

static char libdir[4096];
static int libdir_known;

/* The stand-in folder: $PYPOOL_SIM_LIBDIR, or the folder of this library. */
static const char* stand_in_dir(void) {
  if (libdir_known) return libdir;
  libdir_known = 1;
  const char* env = getenv("PYPOOL_SIM_LIBDIR");
  if (env != NULL && env[0] != '\0') {
    snprintf(libdir, sizeof libdir, "%s", env);
    return libdir;
  }
  Dl_info info;
  if (dladdr((void*)&stand_in_dir, &info) != 0 && info.dli_fname != NULL) {
    snprintf(libdir, sizeof libdir, "%s", info.dli_fname);
    char* slash = strrchr(libdir, '/');
    if (slash != NULL) {
      *slash = '\0';
      return libdir;
    }
  }
  libdir[0] = '\0';
  return libdir;
}

unsigned int la_version(unsigned int version) {
  return version < LAV_CURRENT ? version : LAV_CURRENT;
}

char* la_objsearch(const char* name, uintptr_t* cookie, unsigned int flag) {
  (void)cookie;
  if (flag != LA_SER_ORIG || name == NULL) return (char*)name;
  const char* slash = strrchr(name, '/');
  const char* base = slash != NULL ? slash + 1 : name;
  for (size_t i = 0; i < sizeof redirects / sizeof redirects[0]; ++i) {
    struct redirect* r = &redirects[i];
    if (strcmp(base, r->name) != 0) continue;
    if (!r->resolved) {
      r->resolved = 1;
      const char* dir = stand_in_dir();
      if (dir[0] != '\0') {
        snprintf(r->path, sizeof r->path, "%s/%s", dir, r->standin);
        if (access(r->path, R_OK) != 0) r->path[0] = '\0';
      }
      if (r->path[0] == '\0' && r->simulated)
        fprintf(stderr, "pypool-simdevice: no %s in '%s' (PYPOOL_SIM_LIBDIR); %s is not redirected\n", r->standin,
                dir, r->name);
    }
    return r->path[0] != '\0' ? r->path : (char*)name;
  }
  return (char*)name;
}
