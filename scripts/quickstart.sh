#!/usr/bin/env bash
# The README's first quick-start step after setup: make this host ready to
# boot workspaces (kernel, initramfs, a Debian base image built locally),
# boot the example sandbox, and run a command inside it.
set -euo pipefail
cd "$(dirname "$0")/.."
cs() { node bin/run.cjs "$@"; }

cs setup --base
case "$(cs sandbox show demo --json 2>/dev/null | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{console.log(JSON.parse(s).workspaces[0].status)}catch{console.log("absent")}})')" in
  absent) cs sandbox create demo -f examples/debian.yaml --wait ;;
  suspended|crashed) cs sandbox resume demo --wait ;;
  *) ;;
esac
echo "\$ cs exec -W demo/dev -- sh -c 'head -1 /etc/os-release; uname -sr; id; echo \$GREETING'"
cs exec -W demo/dev -- sh -c 'head -1 /etc/os-release; uname -sr; id; echo $GREETING'
