#!/usr/bin/env bash
# An `ssh` stand-in for mpirun's rsh launcher, for "hosts" that are Linux network namespaces on
# this machine (used by scripts/multihost-test.sh):
#
#   mpirun --mca plm_rsh_agent scripts/netns-rsh.sh --hostfile H ...
#
# mpirun calls it exactly as it would call ssh: `netns-rsh.sh [options] HOST COMMAND...`, where
# COMMAND is the orted start-up line, already quoted for a remote shell. We find the namespace
# that owns HOST (an IPv4 address configured inside one namespace, or a namespace's own name)
# and run COMMAND there with `sh -c`, as sshd would. No network, no ssh, no /etc/hosts entry.
#
# Like a login through ssh, the remote side starts with a clean environment (only PATH, HOME and
# LANG): mpirun's own OMPI_*/PMIX_* variables must not leak into the remote orted. It also gets
# its own UTS namespace with hostname "<namespace>", so each "host" has a distinct host name as
# real machines do (Open MPI uses host names for locality).
set -euo pipefail

# ssh-style options mpirun may pass before the host (e.g. -x, or "-o Opt"); none apply here.
while [ $# -gt 0 ]; do
  case "$1" in
    -o|-p|-l|-i|-F) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || { echo "error: netns-rsh.sh: usage: netns-rsh.sh HOST COMMAND..." >&2; exit 255; }
host="$1"; shift

ns=""
if ip netns list | awk '{print $1}' | grep -qxF "$host"; then
  ns="$host"
else
  for candidate in $(ip netns list | awk '{print $1}'); do
    # `ip -o -4 addr` prints "IDX: IFACE inet A.B.C.D/LEN ..." per address.
    if ip -n "$candidate" -o -4 addr show 2>/dev/null | awk '{split($4, a, "/"); print a[1]}' | grep -qxF "$host"; then
      ns="$candidate"
      break
    fi
  done
fi
[ -n "$ns" ] || { echo "error: netns-rsh.sh: no network namespace owns host '$host'" >&2; exit 255; }

# ssh joins its arguments with spaces and hands them to the remote shell; do the same.
exec ip netns exec "$ns" unshare --uts \
  env -i PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" HOME="${HOME:-/root}" LANG=C.UTF-8 \
  /bin/sh -c 'hostname "$1"; shift; eval "$*"' netns-rsh "$ns" "$@"
