#!/usr/bin/env bash
# OpenMPI and libclang from Debian, for `--features mpi` (rsmpi's build runs bindgen on mpi.h)
# and its tests (`mpirun`). Does nothing where they are installed already.
set -euo pipefail
if dpkg -s openmpi-bin libopenmpi-dev libclang-dev >/dev/null 2>&1; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openmpi-bin libopenmpi-dev libclang-dev >/dev/null
