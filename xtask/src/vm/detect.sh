#!/bin/busybox sh
# Detection in the guest: the agent watches one lab connection and must judge it as expected,
# on the server side and on the client side.
#   detect.sh NAME LISTEN SERVER-ARGS... -- FETCH-ARGS... -- EXPECTED-VERDICT
# The agent's byte count must equal what the client received.
name=$1 listen=$2; shift 2
server=""; while [ "$1" != "--" ]; do server="$server $1"; shift; done; shift
fetch=""; while [ "$1" != "--" ]; do fetch="$fetch $1"; shift; done; shift
want=$1
out=/tmp/$name
# A run before this one (another backend's) left its logs: the waits below must see this run's.
rm -f $out.*
/bin/truncwatch run --all --format json --metrics-addr off --canary-interval 0s >$out.verdicts 2>$out.agent &
agent=$!
for i in $(seq 150); do grep -q "truncwatch: ready" $out.agent && break; sleep 0.1; done
/bin/truncwatch lab serve --listen $listen --connections 1 $server >/dev/null 2>$out.server &
for i in $(seq 50); do grep -q "listening" $out.server && break; sleep 0.1; done
/bin/truncwatch lab fetch --connect $listen $fetch >$out.client
sleep 1
kill -INT $agent; wait $agent
local=${listen#tcp:}; local=${local#unix:}
. /bin/judged.sh
judged $out.verdicts $out.client "$local" "$want"
# The client read it cut short, or whole.
case $want in short_write) client_want=truncated ;; *) client_want=$want ;; esac
judged_client $out.verdicts $out.client "$local" "$client_want"
