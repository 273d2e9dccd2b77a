#!/run/cs/busybox sh
# `cs` inside a workspace: the guest has no cs of its own, so this asks the
# host's cs, through the virtio-serial port named cs.host, to run a snapshot
# command for this workspace (see src/workspace/host-requests.ts). Lines
# out: REQ ID BASE64(args, each ended by NUL), CANCEL ID on Ctrl-C. Lines
# in: OUT/ERR ID BASE64, BEAT ID while the host works, then EXIT ID CODE.
BB=/run/cs/busybox
PORT=/run/cs/host-port
if [ ! -e "$PORT" ]; then
  echo "cs: this workspace has no channel to its host (it booted with an older cs; suspend and resume it)" >&2
  exit 5
fi
# The port opens for one process at a time.
if ! ( exec 3<>"$PORT" ) 2>/dev/null; then
  echo "cs: another cs command is running in this workspace; try again when it is done" >&2
  exit 1
fi
exec 3<>"$PORT"
id=$$
trap 'printf "CANCEL %s\n" "$id" >&3; exit 130' INT TERM
printf 'REQ %s %s\n' "$id" "$(for a in "$@"; do printf '%s\0' "$a"; done | $BB base64 -w 0)" >&3
# The host sends a BEAT line every 10 s while it works: a minute of silence means it went away.
while IFS=' ' read -t 60 -r kind rid data <&3; do
  [ "$rid" = "$id" ] || continue
  case "$kind" in
    OUT) printf '%s' "$data" | $BB base64 -d ;;
    ERR) printf '%s' "$data" | $BB base64 -d >&2 ;;
    EXIT) exit "$data" ;;
  esac
done
echo "cs: the host did not answer" >&2
exit 5
